"""`python -m rlft.train`: fine-tune a causal LM with verifiable rewards.

    python -m rlft.train --algo grpo-ba                        # embedded tiny model and task, CPU
    python -m rlft.train --algo grpo --config configs/qwen2.5-math-1.5b_gsm8k.yaml
    python -m rlft.train --algo grpo-ba rollout.group_size=16 optim.lr=3e-4
    python -m rlft.train --reward my_rewards.py:score          # a reward function of your own
    python -m rlft.train --resume runs/grpo-ba-20261122-101500 # continue from the last checkpoint
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from rlft.errors import ConfigError, UserError


def _help_epilog() -> str:
    import typing

    from rlft.algorithms import ADVANTAGES, AGGREGATIONS, ALGO_PRESETS, POLICY_LOSSES
    from rlft.config import RolloutConfig, describe_options
    from rlft.lora import LORA_KINDS
    from rlft.optim import OPTIMIZERS
    from rlft.reward.registry import REWARDS

    def listing(registry) -> str:
        """`name [needs: ...]`, comma-separated: each entry with what it declared it needs."""
        return ", ".join(n + (f" [needs {', '.join(sorted(registry.needs(n)))}]" if registry.needs(n) else "")
                         for n in registry.names())

    algos = "\n".join(f"  {name:14s} {ALGO_PRESETS.get(name)['algo']}" for name in ALGO_PRESETS.names())
    engines = ", ".join(typing.get_args(RolloutConfig.model_fields["engine"].annotation))
    registries = [
        ("advantage estimators (algo.advantage)", listing(ADVANTAGES)),
        ("aggregations (algo.aggregation)", listing(AGGREGATIONS)),
        ("policy losses (algo.policy_loss)", listing(POLICY_LOSSES)),
        ("optimizers (optim.name)", listing(OPTIMIZERS)),
        ("adapter kinds (lora.kind)", listing(LORA_KINDS)),
        ("rewards (--reward, or 'file.py:fn' / 'package.module:fn')", listing(REWARDS)),
        ("rollout engines (rollout.engine)", engines),
    ]
    return (
        f"algorithms (--algo):\n{algos}\n\n"
        + "".join(f"{title}:\n  {names}\n\n" for title, names in registries)
        + "options (key=value, dotted):\n"
        + describe_options()
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m rlft.train",
        description=__doc__,
        epilog=_help_epilog() if ("-h" in argv or "--help" in argv) else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--algo", help="algorithm preset (listed below); default grpo-ba")
    parser.add_argument("--config", help="YAML file with config sections (see configs/)")
    parser.add_argument(
        "--reward", action="append", metavar="SPEC[@WEIGHT]",
        help="reward function: a registered name, file.py:fn or package.module:fn; repeat for several",
    )
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. rollout.group_size=16")
    # intermixed: overrides may come before, between or after the options, as users write them
    return parser.parse_intermixed_args(argv)


def _reward_overrides(specs: list[str]) -> list[dict]:
    functions = []
    for spec in specs:
        name, _, weight = spec.partition("@")
        try:
            functions.append({"name": name, "weight": float(weight) if weight else 1.0})
        except ValueError:
            raise ConfigError(f"--reward {spec!r}: the weight after '@' must be a number") from None
    return functions


def build_run_config(args: argparse.Namespace):
    """The config for this invocation (a resumed run starts from its saved config.yaml)."""
    from rlft.config import build_config, deep_merge, load_yaml, parse_override, resolve_config

    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise UserError(f"--resume {args.resume}: no config.yaml there; give a run folder made by rlft.train")
        if args.algo or args.config:
            raise ConfigError("--resume takes the run's saved config; --algo and --config cannot change it (use key=value)")
        tree = load_yaml(run_dir / "config.yaml")
        for text in args.overrides:
            path, value = parse_override(text)
            patch: dict = value
            for part in reversed(path):
                patch = {part: patch}
            tree = deep_merge(tree, patch)
        return build_config(tree)
    overrides = list(args.overrides)
    cfg = resolve_config(args.algo, args.config, overrides)
    if args.reward:
        tree = cfg.model_dump()
        tree["reward"]["functions"] = _reward_overrides(args.reward)
        cfg = build_config(tree)
    return cfg


def _interrupted_message(e: KeyboardInterrupt) -> str:
    """What Ctrl-C left behind: the checkpoint saved now or the newest one kept, and how to resume."""
    run_dir = getattr(e, "run_dir", None)
    if run_dir is None:
        return "interrupted before training started; nothing to resume"
    from rlft.pipeline.checkpoint import latest_checkpoint

    if e.saved is not None:
        return f"interrupted after step {e.step}; saved {e.saved} (resume with --resume {run_dir})"
    latest = latest_checkpoint(run_dir)
    if latest is None:
        return f"interrupted during step {e.step + 1}; no checkpoint in {run_dir} yet (--resume {run_dir} starts from step 0)"
    return f"interrupted during step {e.step + 1}; the last checkpoint is {latest} (resume with --resume {run_dir})"


def _stoppable_by_ctrl_c() -> None:
    """Ctrl-C (SIGINT) stops a run cleanly even when the launching process blocked or ignored SIGINT: both are
    inherited by a child, and non-interactive shells ignore it for background jobs, which left `kill -INT`
    without effect (the run went on to its last step)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, None):
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _stoppable_by_ctrl_c()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args = parse_args(argv)
        cfg = build_run_config(args)
        if args.print_config:
            from rlft.config import config_to_yaml

            print(config_to_yaml(cfg), end="")
            return 0
        from rlft.reward.registry import load_reward_fn

        for spec in cfg.reward.functions:  # fail at start, not after the first rollout
            load_reward_fn(spec.name)
        from rlft.pipeline.driver import train

        summary = train(cfg, Path(args.resume) if args.resume else None)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        print("\n" + _interrupted_message(e), file=sys.stderr)
        return 130
    from rlft.pipeline.report import format_summary

    print("\n" + format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
