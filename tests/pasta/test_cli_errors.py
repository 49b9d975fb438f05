"""Bad files and paths on the `pasta` command line: one line naming the file and the problem, exit code 2, and
no model loaded first."""

from __future__ import annotations

import json

import pytest

from pasta.cli import main
from pasta.eval.prompts import load_prompts
from pasta.eval.stats import length_controlled_win_rate, win_rate
from pasta.jsonl import jsonl_lines, read_json


def _fails(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    return err[-1]


def test_jsonl_line_that_is_not_utf8_is_a_bad_row_with_its_number(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": "\xff"}\n\n{"c": 3}\n')
    rows = list(jsonl_lines(path))
    assert [n for n, _ in rows] == [1, 2, 4]
    assert rows[0][1] == {"a": 1} and rows[2][1] == {"c": 3}
    assert isinstance(rows[1][1], json.JSONDecodeError) and "not UTF-8" in rows[1][1].msg


def test_read_json_names_the_file_for_every_failure(tmp_path):
    with pytest.raises(ValueError, match="is a folder"):
        read_json(tmp_path)
    with pytest.raises(FileNotFoundError, match="absent.json"):
        read_json(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\xff\xfe{}")
    with pytest.raises(ValueError, match=r"bad\.json: not UTF-8"):
        read_json(bad)
    bad.write_text('{\n "a": }')
    with pytest.raises(ValueError, match=r"bad\.json:2: invalid JSON"):
        read_json(bad)


def test_prompt_sets_folder_and_non_utf8(tmp_path):
    with pytest.raises(ValueError, match="is a folder"):
        load_prompts(str(tmp_path))
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"instruction": "ok"}\n{"instruction": "\xe9t\xe9"}\n')
    with pytest.raises(ValueError, match=r"p\.jsonl:2: invalid JSON \(not UTF-8"):
        load_prompts(str(path))


def test_eval_compare_with_a_bad_file_names_it(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not a summary\n")
    err = _fails(capsys, ["eval", "--compare", f"x={bad}", "--out", str(tmp_path / "out")])
    assert str(bad) in err and "invalid JSON" in err
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    assert "summary.json object" in _fails(capsys, ["eval", "--compare", f"x={listed}", "--out", str(tmp_path / "o")])
    assert "is a folder" in _fails(capsys, ["eval", "--prompts", str(tmp_path), "--out", str(tmp_path / "o")])


def test_annotate_fails_when_every_row_is_bad(tmp_path, capsys):
    source = tmp_path / "rows.jsonl"
    source.write_text('{"prompt": "only a prompt"}\n{not json\n')
    err = _fails(capsys, ["annotate", "--source", str(source), "--out", str(tmp_path / "out.jsonl"), "--no-progress"])
    assert "every one of the 2 rows" in err and "rows.jsonl:1" in err
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "Name two colours.", "response": "Red and blue."}\n')
    assert main(["annotate", "--source", str(good), "--out", str(tmp_path / "ok.jsonl"), "--no-progress"]) == 0


def test_generate_checks_the_teacher_file_before_loading_a_model(tmp_path, capsys, monkeypatch):
    from pasta import interpreter

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the teacher file was checked")

    monkeypatch.setattr(interpreter.Interpreter, "from_pretrained", no_load)
    err = _fails(capsys, ["generate", "hi", "--teacher", str(tmp_path / "missing.txt")])
    assert "missing.txt" in err and "no such file" in err
    bad = tmp_path / "t.txt"
    bad.write_bytes(b"\xff")
    assert "not UTF-8" in _fails(capsys, ["generate", "hi", "--teacher", str(bad)])


def test_stats_refuse_nan_instead_of_returning_it():
    nan = float("nan")
    with pytest.raises(ValueError, match="preferences"):
        length_controlled_win_rate([0.5, nan], [1.0, 2.0])
    with pytest.raises(ValueError, match="length differences"):
        length_controlled_win_rate([0.5, 0.5], [1.0, nan])
    with pytest.raises(ValueError):
        win_rate([nan])
