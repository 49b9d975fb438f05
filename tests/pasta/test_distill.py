"""Self-distillation: the base model's own answers, written resumably, filtered when read back."""

from __future__ import annotations

import json

import pytest
from tiny import tiny_hf_folder

from pasta.data.distill import DistillConfig, distill, kept_rows, list_like, mix_prompts, select_prompts, write_kept
from pasta.data.sources import Example, iter_jsonl
from pasta.jsonl import append_jsonl

LIST_ANSWER = "Tips:\n- Sleep: " + "word " * 10 + "\n- Food: " + "other " * 10


def _examples(n: int) -> list[Example]:
    return [Example(f"s:{i}", f"question number {i} please answer", "", "test") for i in range(n)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(tiny_hf_folder(tmp_path_factory.mktemp("tiny")))


def test_distill_writes_every_answer_and_resumes(tmp_path, model_dir):
    out = tmp_path / "d.jsonl"
    config = DistillConfig(max_new_tokens=12, max_batch=3, dtype="float32")
    stats = distill(_examples(4), out, config, model=model_dir, progress=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert stats.generated == 4 and len(rows) == 4
    assert {r["prompt"] for r in rows} == {e.prompt for e in _examples(4)}
    for r in rows:
        assert r["finish"] in ("eos", "length") and 0 <= r["repetition"] <= 1
        assert (r["finish"] == "length") == (r["tokens"] == 12)
    again = distill(_examples(6), out, config, model=model_dir, progress=False)
    assert again.skipped_done == 4 and again.generated == 2
    assert len(out.read_text().splitlines()) == 6


def test_answers_equal_one_by_one_greedy_decoding(tmp_path, model_dir):
    """Batched, left-padded generation gives each prompt the answer it gets alone (fp32, greedy)."""
    from pasta.decoding import DecodeLimits
    from pasta.interpreter import Interpreter

    out = tmp_path / "d.jsonl"
    distill(_examples(3), out, DistillConfig(max_new_tokens=10, max_batch=3, dtype="float32"), model=model_dir,
            progress=False)
    interp = Interpreter.from_pretrained(model_dir, dtype="float32", adapter=False)
    for row in map(json.loads, out.read_text().splitlines()):
        alone = interp.generate(row["prompt"], limits=DecodeLimits(max_new_tokens=10))
        assert alone.text.strip() == row["response"]


def test_kept_rows_filter_when_read_back(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [
        {"id": "a", "prompt": "p1", "response": LIST_ANSWER, "finish": "eos", "repetition": 0.0},
        {"id": "b", "prompt": "p2", "response": "cut", "finish": "length", "repetition": 0.0},
        {"id": "c", "prompt": "p3", "response": "loop loop", "finish": "eos", "repetition": 0.6},
        {"id": "d", "prompt": "p4", "response": "  ", "finish": "eos", "repetition": 0.0},
    ]
    for row in rows:
        append_jsonl(path, row)
    with open(path, "a") as f:
        f.write('{"id": "cut in ha')  # an interrupted write
    assert [r["id"] for r in kept_rows(path)] == ["a"]
    assert [r["id"] for r in kept_rows(path, DistillConfig(max_repetition=0.7))] == ["a", "c"]
    kept = tmp_path / "kept.jsonl"
    assert write_kept(path, kept) == 1
    [example] = list(iter_jsonl(kept))  # a source `pasta annotate --source` reads
    assert example.prompt == "p1" and example.response == LIST_ANSWER


def test_prompt_selection_and_mix():
    examples = [Example("1", "hi", "", "s"), Example("2", "What is the capital of France today?", "", "s"),
                Example("3", "what is the capital of  france today?", "", "s"),
                Example("4", "Quelle est la capitale de la région Île-de-France ? Dites-le, s'il vous plaît, en détail à "
                        "l'élève étranger déçu, très ému.", "", "s")]
    assert [e.id for e in select_prompts(examples)] == ["2"]  # too short, a duplicate, not English: dropped
    # List-like: by the reference answer's structure when there is one, else by the prompt's wording.
    assert list_like(Example("x", "anything", LIST_ANSWER, "s"))
    assert not list_like(Example("x", "give me tips", "A single paragraph.", "s"))
    assert list_like(Example("x", "give me five tips for sleeping", "", "s"))
    assert not list_like(Example("x", "fix this python code for me", "", "s"))
    pool = [Example(str(i), "give me tips" if i % 4 == 0 else "tell me a story", "", "s") for i in range(40)]
    mixed = mix_prompts(pool, 12, 0.5)
    flags = [list_like(e) for e in mixed]
    assert len(mixed) == 12 and sum(flags) == 6
    assert flags[:4].count(True) == 2  # interleaved: any prefix has the mix
    assert len({e.id for e in mixed}) == 12
    with pytest.raises(ValueError, match="list_share"):
        mix_prompts(pool, 3, 1.5)
