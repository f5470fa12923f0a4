"""Benchmark evaluation: loaders for local benchmark files, pass@k / maj@k, and what scripts/eval_*.py share."""
