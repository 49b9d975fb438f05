"""Sources of instruction/response pairs: ShareGPT recovery, JSONL, datasets folders, eval exclusion."""

from __future__ import annotations

import json
import logging

import pytest

from pasta.data.sources import (
    Example,
    SourceStats,
    alpaca_eval_prompts,
    exclude_eval_prompts,
    iter_hf_dataset,
    iter_jsonl,
    iter_sharegpt,
    iter_sharegpt_records,
    load_examples,
    normalize_prompt,
    sharegpt_path,
)


@pytest.fixture(scope="module")
def sharegpt_records():
    return list(iter_sharegpt_records())


def test_sharegpt_recovers_every_complete_record(sharegpt_records):
    assert len(sharegpt_records) == 17_671
    with pytest.raises(json.JSONDecodeError):
        json.loads(sharegpt_path().read_text(encoding="utf-8"))  # the file really is truncated
    line, last = sharegpt_records[-1]
    assert last["id"] == "hlWUIwT_0"
    assert [t["from"] for t in last["conversations"]] == ["human", "gpt", "human", "gpt"]
    assert all(t["value"].strip() for t in last["conversations"])  # complete, not cut mid-string
    assert sharegpt_records[0][0] == 2  # line numbers point at the record's first line
    assert line > sharegpt_records[-2][0]


def test_sharegpt_examples_take_first_human_turn_and_reply(tmp_path, caplog):
    records = [
        {"id": "a", "conversations": [{"from": "human", "value": "Q1"}, {"from": "gpt", "value": "A1"},
                                      {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}]},
        {"id": "b", "conversations": [{"from": "gpt", "value": "hello"}, {"from": "human", "value": "Q"},
                                      {"from": "gpt", "value": "A"}]},
        {"id": "c", "conversations": [{"from": "human", "value": "Q"}, {"from": "human", "value": "Q again"}]},
        {"id": "d", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "  "}]},
        {"id": "a", "conversations": [{"from": "human", "value": "dup"}, {"from": "gpt", "value": "dup"}]},
    ]
    text = json.dumps(records, indent=2)
    path = tmp_path / "sg.json"
    path.write_text(text[: len(text) - 40])  # truncated inside the last record
    stats = SourceStats()
    with caplog.at_level(logging.WARNING):
        examples = list(iter_sharegpt(path, stats))
    assert [(e.id, e.prompt, e.response) for e in examples] == [("sharegpt:a", "Q1", "A1"), ("sharegpt:b", "Q", "A")]
    assert stats.rows == 4 and stats.kept == 2 and stats.skipped == 2
    assert "not an assistant" in stats.bad[0].problem and "empty" in stats.bad[1].problem
    assert stats.bad[0].line == text.count("\n", 0, text.index('"id": "c"'))  # the line of the record's '{'
    assert "sg.json" in caplog.text


def test_sharegpt_full_file_examples_are_unique_and_clean(sharegpt_records):
    stats = SourceStats()
    examples = list(iter_sharegpt(stats=stats))
    assert stats.rows == 17_671 and stats.kept == len(examples) and stats.kept + stats.skipped == stats.rows
    assert 10_000 < len(examples) < 17_671
    assert len({e.id for e in examples}) == len(examples)
    assert all(e.prompt.strip() and e.response.strip() and e.source == "sharegpt" for e in examples[:2000])


def test_jsonl_fields_messages_and_bad_rows(tmp_path, caplog):
    rows = [
        json.dumps({"id": 7, "prompt": "P1", "response": "R1"}),
        json.dumps({"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "P2"},
                                 {"role": "assistant", "content": [{"type": "text", "text": "R2"}]}]}),
        "{not json",
        json.dumps({"prompt": "P3"}),
        "",
        json.dumps({"messages": [{"role": "user", "content": "P4"}]}),
        json.dumps({"instruction": "Do X", "input": "with Y", "output": "R5"}),
        json.dumps({"prompt": "P6", "response": ""}),
        json.dumps(["a list"]),
        json.dumps({"prompt": 3, "response": "R"}),
    ]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(rows) + "\n")
    stats = SourceStats()
    with caplog.at_level(logging.WARNING):
        examples = list(iter_jsonl(path, stats))
    assert [(e.prompt, e.response) for e in examples] == [("P1", "R1"), ("P2", "R2"), ("Do X\n\nwith Y", "R5")]
    assert examples[0].id == "mine:7" and examples[0].source == "mine"
    assert examples[1].id.startswith("mine:") and len(examples[1].id) > 10  # content hash when no id
    assert [(b.line, b.problem.split()[0]) for b in stats.bad] == [
        (3, "invalid"), (4, "no"), (6, "first"), (8, "empty"), (9, "row"), (10, "'prompt'")]
    assert "mine.jsonl:3: invalid JSON" in caplog.text
    assert stats.rows == 9 and stats.kept == 3


def test_ids_without_id_field_are_stable_across_reordering(tmp_path):
    a = tmp_path / "a.jsonl"
    b = tmp_path / "a_copy" / "a.jsonl"
    b.parent.mkdir()
    r1, r2 = {"prompt": "x", "response": "1"}, {"prompt": "y", "response": "2"}
    a.write_text(json.dumps(r1) + "\n" + json.dumps(r2) + "\n")
    b.write_text(json.dumps(r2) + "\n" + json.dumps(r1) + "\n")
    assert {e.id for e in iter_jsonl(a)} == {e.id for e in iter_jsonl(b)}


def test_datasets_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list([
        {"prompt": "P1", "response": "R1", "messages": None},
        {"prompt": "P2", "response": "", "messages": None},
        {"prompt": None, "response": None,
         "messages": [{"role": "user", "content": "P3"}, {"role": "assistant", "content": "R3"}]},
    ])
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "dd"))
    stats = SourceStats()
    examples = list(iter_hf_dataset(tmp_path / "dd", stats))
    assert [(e.prompt, e.response, e.source) for e in examples] == [("P1", "R1", "dd"), ("P3", "R3", "dd")]
    assert [(b.file, b.line) for b in stats.bad] == [("dd", 1)]
    assert list(load_examples(str(tmp_path / "dd"), exclude_eval=False)) == examples


def test_alpaca_eval_prompts_and_exclusion():
    prompts = alpaca_eval_prompts()
    assert len(prompts) == 805 and len(set(prompts)) > 800
    eval_prompt = prompts[0]
    examples = [
        Example("1", "  " + eval_prompt.upper().replace(" ", "\n  ") + " ", "r", "s"),  # same after normalizing
        Example("2", eval_prompt + " Please answer in French.", "r", "s"),  # a different prompt
        Example("3", "Something else entirely", "r", "s"),
    ]
    stats = SourceStats()
    kept = list(exclude_eval_prompts(examples, stats=stats))
    assert [e.id for e in kept] == ["2", "3"] and stats.excluded_eval == 1
    assert normalize_prompt(" A\tb\n C ") == "a b c"


def test_load_examples_excludes_eval_prompts_by_default_then_limits(tmp_path):
    eval_prompt = alpaca_eval_prompts()[3]
    path = tmp_path / "d.jsonl"
    rows = [{"prompt": eval_prompt, "response": "r0"}] + [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    stats = SourceStats()
    got = list(load_examples(str(path), limit=3, stats=stats))
    assert [e.prompt for e in got] == ["p0", "p1", "p2"] and stats.excluded_eval == 1
    assert [e.prompt for e in load_examples(str(path), limit=1, exclude_eval=False)] == [eval_prompt]


def test_unknown_source_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        list(load_examples(str(tmp_path / "missing.jsonl")))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="jsonl"):
        list(load_examples(str(tmp_path / "x.csv")))
