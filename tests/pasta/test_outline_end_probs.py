"""scripts/outline_end_probs.py: the decision places it reads from the committed answers, and its AUC."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from pasta.lang import OUTLINE_PREFIX, topic_key

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("outline_end_probs", ROOT / "scripts" / "outline_end_probs.py")
outline_end_probs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(outline_end_probs)


def test_auc_is_the_chance_a_high_draw_beats_a_low_one():
    auc = outline_end_probs.auc
    assert auc([0.9, 0.8], [0.1, 0.2]) == 1.0 and auc([0.1], [0.9]) == 0.0
    assert auc([0.5], [0.5]) == 0.5 and auc([0.3, 0.7], [0.5]) == 0.5


@pytest.mark.parametrize("form", ["dot", "terminated"])
def test_places_stop_just_before_the_decision(monkeypatch, form):
    monkeypatch.chdir(ROOT)
    places = outline_end_probs.decision_places(form)
    assert len(places["repeat"]) == 130 and len(places["continue"]) > 200 and len(places["end"]) > 100
    for kind, found in places.items():
        for _, prefix in found:
            line = prefix[prefix.rfind(OUTLINE_PREFIX):]
            assert "\n" not in line and line[-1] != " "
            # dot: the item is written, its separator is the decision; terminated: the ';' is written too
            assert line.endswith(";") == (form == "terminated") or kind == "end" and form == "dot"
            items = [i for i in line[len(OUTLINE_PREFIX):].split(";") if i.strip()]
            if kind == "repeat":  # the model's next item repeated one of these; none repeats yet
                assert len({topic_key(i) for i in items}) == len(items)
