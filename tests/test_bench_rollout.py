"""The rollout benchmark's forced-length workload: spread that survives repetitive models, one processor
for both engines; how differing samples are counted."""

import importlib.util
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_rollout.py"


def load_script():
    spec = importlib.util.spec_from_file_location("bench_rollout", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_schedule_class():
    return load_script().LengthSchedule


def test_differing_samples_are_counted_with_their_first_differing_token():
    reference = [[[1, 2, 3], [4, 5]], [[6]]]
    other = [[[1, 9, 3], [4, 5, 7]], [[6]]]
    assert load_script().differing(other, reference) == {"count": 2, "of": 3, "first_differing_token": [1, 2]}


def test_lengths_spread_even_when_the_model_repeats_one_token():
    schedule = load_schedule_class()(eos=2, vocab=40, min_tokens=16, max_tokens=1024)
    scales = torch.full((40,), 200.0, dtype=torch.float64)
    repeated = torch.arange(40)[:, None].repeat(1, 48)  # row t: token t, 48 times
    log_targets = schedule.targets(scales, repeated).log()
    assert 0.4 < float(log_targets.std()) < 1.2  # about N(0, 0.5^2 + 0.5^2) in log-space, not 4x that
    assert float((log_targets >= torch.log(torch.tensor(1024.0))).double().mean()) < 0.1


def test_engine_and_transformers_forms_force_the_same_tokens():
    schedule = load_schedule_class()(eos=2, vocab=40, min_tokens=4, max_tokens=64)
    prompt = [5, 6, 7]
    generated = [torch.randint(3, 40, (n,)).tolist() for n in (3, 20, 50, 63)]
    logits = torch.randn(4, 40)
    ours = schedule.apply([prompt] * 4, generated, logits)
    hf = schedule.hf_processor(prompt)
    for row, g in enumerate(generated):
        theirs = hf(torch.tensor([prompt + g]), logits[row : row + 1].clone())
        assert torch.equal(ours[row : row + 1], theirs)
