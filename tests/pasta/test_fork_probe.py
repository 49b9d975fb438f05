"""scripts/fork_probe.py: its labelled places, and a probe whose held-out AUC means what it says (no prompt leaks
between folds)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from pasta.lang import OUTLINE_PREFIX

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("fork_probe", ROOT / "scripts" / "fork_probe.py")
fork_probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fork_probe)


def test_a_separable_feature_is_found_and_noise_is_not():
    gen = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 1] * 60)
    noise = torch.randn(120, 8, generator=gen)
    groups = [str(i) for i in range(120)]
    signal = noise.clone()
    signal[:, 3] += 3 * y  # one informative dimension among noise
    assert fork_probe.probe_auc(signal, y, groups, folds=5, repeats=2, l2=0.1) > 0.9
    assert 0.3 < fork_probe.probe_auc(noise, y, groups, folds=5, repeats=2, l2=0.1) < 0.7


def test_folds_keep_a_prompts_places_together():
    """Labels set per prompt, features that identify the prompt: a probe that saw the prompt in training would score
    ~1; held out by prompt it cannot do better than chance."""
    gen = torch.Generator().manual_seed(1)
    prompts = 40
    identity = torch.randn(prompts, 64, generator=gen)  # enough dimensions to tell 40 prompts apart linearly
    label_of = torch.randint(0, 2, (prompts,), generator=gen)
    rows = [p for p in range(prompts) for _ in range(4)]
    x = identity[rows] + 0.01 * torch.randn(len(rows), 64, generator=gen)
    y = label_of[rows]
    leaky = fork_probe.probe_auc(x, y, [str(i) for i in range(len(rows))], folds=5, repeats=2, l2=0.01)
    grouped = fork_probe.probe_auc(x, y, [str(p) for p in rows], folds=5, repeats=2, l2=0.01)
    assert leaky > 0.9 and grouped < 0.75


def test_flagged_good_at():
    scores, labels = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [1, 0, 1, 0, 1, 0]
    assert fork_probe.flagged_good_at(scores, labels, 1 / 3) == 0.0  # threshold 0.9
    assert fork_probe.flagged_good_at(scores, labels, 2 / 3) == pytest.approx(1 / 3)  # threshold 0.7: 0.8 flagged
    assert fork_probe.flagged_good_at(scores, labels, 1.0) == pytest.approx(2 / 3)


def test_labelled_places(monkeypatch):
    monkeypatch.chdir(ROOT)
    forks = fork_probe.labelled_forks()
    assert sum(y for *_, y in forks) == 87 and sum(1 - y for *_, y in forks) == 93
    assert all(answer.endswith(OUTLINE_PREFIX) for _, answer, _ in forks)
    bad = {p for p, _, y in forks if y}
    assert not bad & {p for p, _, y in forks if not y}  # a prompt in both is left out
    places = fork_probe.labelled_separators()
    assert sum(y for *_, y in places) == 130 and all(fork_probe.items_so_far(a) >= 2 for _, a, _ in places)
