"""Correction pairs: the rejected side is what the model really wrote up to where the guard stepped in. The oracle is
a scripted model decoded by the real state machine with its guards on: the rejected text must be a prefix of the
script's own text (its chunks in place) and must part from the chosen, corrected answer exactly at the guard."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

from tiny import ByteTokenizer, drive_script

from pasta.data.correction_pairs import correction_pairs, done_rejected, repeat_rejected
from pasta.decoding import DecodeLimits

TOK = ByteTokenizer()
ROOT = Path(__file__).resolve().parents[2]
CHUNKS = ["Sleep: go to bed at the same time every night.</async>",
          "Food: eat vegetables and drink water with every meal.</async>"]


def _promise(j: int, m: int, item: str | None = None) -> str:
    return f'<promise topic="{j}/{m} {item}" tokens="5"/>' if item else f'<promise topic="{j}/{m}" tokens="1"/>'


def _decode(main: str):
    decoding = drive_script(main, CHUNKS, DecodeLimits(outline_topics=True), tokenizer=TOK)
    return decoding.stitch()[0], decoding.guards


def _row(annotated: str, guards: list[str]) -> dict:
    stats = dict(finish_reason="eos", guards=guards, repetition=0.0, reaches_sync=True, duplicate_chunks=0)
    return {"id": "r1", "prompt": "Tips?", "annotated": annotated, "warnings": [], "stats": stats}


def _common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


# The model repeats an item in its outline, then opens a third promise past the (cut) outline.
LOOPING = ("Tips:\n\nOverview: Sleep; Food; sleep;" + "1. " + _promise(1, 2, "Sleep") + "\n2. " + _promise(2, 2, "Food")
           + "\n3. " + _promise(3, 2) + "These habits help.")
# What it wrote, chunks in place (the storage form with no guard): the rejected sides are prefixes of this.
WRITTEN = ("Tips:\n\nOverview: Sleep; Food; sleep;1. " + _promise(1, 2, "Sleep") + "<async>" + CHUNKS[0] + "\n2. "
           + _promise(2, 2, "Food") + "<async>" + CHUNKS[1] + "\n3. " + _promise(3, 2))


def test_pairs_part_from_the_corrected_answer_where_the_guards_stepped_in():
    annotated, guards = _decode(LOOPING)
    assert [g.split(":")[0] for g in guards] == ["outline_repeat", "outline_done"]
    pairs, why = correction_pairs(_row(annotated, guards))
    assert why is None and [p.kind for p in pairs] == ["outline_repeat", "outline_done"]
    repeat, done = pairs
    assert repeat.chosen == done.chosen == annotated
    # outline_repeat: the model's own "; sleep;" where the guard ended the line with "."
    assert repeat.rejected == "Tips:\n\nOverview: Sleep; Food; sleep;"
    assert WRITTEN.startswith(repeat.rejected)
    assert annotated[_common_prefix(annotated, repeat.rejected):].startswith(".\n\n")
    # outline_done: the list marker of the promise past the outline, where the guard wrote <sync/>
    cut = annotated.index("<sync/>")
    assert done.rejected == annotated[:cut] + "3."
    assert annotated[_common_prefix(annotated, done.rejected):].startswith("<sync/>")
    # the written text (without the outline cut) goes on the same way after the second chunk
    assert WRITTEN[WRITTEN.index(CHUNKS[1]):].startswith(done.rejected[done.rejected.index(CHUNKS[1]):])
    row = pairs[0].to_row()
    assert row["rejected_truncated"] is True and {"prompt", "chosen", "rejected"} <= set(row)


def test_a_promise_past_the_outline_with_no_list_marker_is_cut_at_the_tag():
    main = ("Overview: Sleep; Food.\n" + _promise(1, 2, "Sleep") + "\n" + _promise(2, 2, "Food") + "\n"
            + _promise(3, 2) + "Done.")
    annotated, guards = _decode(main)
    assert [g.split(":")[0] for g in guards] == ["outline_done"]
    rejected = done_rejected(annotated, 3, 2)
    assert rejected == annotated[: annotated.index("<sync/>")] + "<prom"
    assert rejected.endswith("</async>\n<prom")


def test_a_guard_that_cannot_be_located_gives_no_pair():
    text = "Overview: Sleep; Food.\n\nNo promises here."
    assert repeat_rejected(text, "Walks") is None  # not an item of any outline
    assert repeat_rejected("Intro. Overview: Sleep; Food.\n", "Food") is None  # not at the start of a line
    assert done_rejected(text, 3, 2) is None
    # text between the last chunk and the sync: not a bare forced sync, so not where the model opened a promise
    annotated, guards = _decode(LOOPING.replace("\n3. ", "\nAnd more. 3. "))
    assert done_rejected(annotated, 3, 2) is None


def test_rows_not_worth_training_on_give_no_pair_and_say_why():
    annotated, guards = _decode(LOOPING)
    assert correction_pairs(_row(annotated, []))[1] == "no guard"
    truncated = _row(annotated, guards)
    truncated["stats"]["finish_reason"] = "length"
    assert correction_pairs(truncated) == ([], "truncated")
    other = _row(annotated, guards + ["repeated_topic: x"])
    assert correction_pairs(other) == ([], "other guard")


def test_the_script_writes_pairs_and_skips_bad_rows(tmp_path):
    annotated, guards = _decode(LOOPING)
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps(_row(annotated, guards)) + "\n" + "{not json\n" + json.dumps({"id": 3}) + "\n"
                       + json.dumps(_row("Plain answer.", [])) + "\n")
    out = tmp_path / "pairs.jsonl"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "correction_pairs.py"), str(answers), "--out",
                           str(out)], capture_output=True, text=True, check=True)
    report = json.loads(done.stdout)
    assert report["pairs"] == 2 and report["kinds"] == {"outline_repeat": 1, "outline_done": 1}
    assert report["answers"]["unreadable row"] == 2 and report["answers"]["no guard"] == 1
    assert "answers.jsonl:2" in done.stderr and "answers.jsonl:3" in done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["r1-repeat", "r1-done"]
    script = [sys.executable, str(ROOT / "scripts" / "correction_pairs.py"), str(answers), "--out", str(out)]
    subprocess.run([*script, "--kinds", "outline_done"], capture_output=True, check=True)
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["r1-done"]
    bad = subprocess.run([*script, "--kinds", "outline_done,loops"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown kind(s) loops" in bad.stderr


def test_a_fork_of_one_chunk_pairs_its_plain_text_against_the_outline():
    """An outline of one idea ('Sleep; sleep;' cut to 'Sleep.') forks one chunk: chosen is the same answer in plain
    text without the outline line, rejected the answer cut right after 'Overview:'."""
    main = ("Tips:\n\nOverview: Sleep; sleep;" + "1. " + _promise(1, 1, "Sleep") + "\n2. " + _promise(2, 1)
            + "That is all.")
    annotated, guards = _decode(main)
    assert [g.split(":")[0] for g in guards] == ["outline_repeat", "outline_done"]
    pairs, why = correction_pairs(_row(annotated, guards))
    assert why is None and [p.kind for p in pairs] == ["one_item"]
    pair = pairs[0]
    assert pair.rejected == "Tips:\n\nOverview:" and WRITTEN.startswith(pair.rejected)
    assert pair.chosen == "Tips:\n\n1. " + CHUNKS[0].removesuffix("</async>") + "\nThat is all."
    # a one-chunk fork no guard touched saves nothing either: the same pair
    clean = _decode("Tips:\n\nOverview: Sleep.\n\n1. " + _promise(1, 1, "Sleep") + "\n<sync/>That is all.")
    assert clean[1] == []
    assert correction_pairs(_row(*clean))[0][0].chosen == pair.chosen


def test_one_chunk_forks_not_worth_a_plain_target_give_no_pair():
    no_outline = _decode("Tips:\n" + _promise(1, 1, "Sleep") + "\n<sync/>Done.")[0]
    assert correction_pairs(_row(no_outline, [])) == ([], "one chunk without an outline")
    copies = _decode("Tips:\n\nOverview: Sleep.\n\n1. " + _promise(1, 1, "Sleep") + "\n<sync/>"
                     + CHUNKS[0].removesuffix("</async>"))[0]
    assert correction_pairs(_row(copies, [])) == ([], "conclusion copies a chunk")
    one = _decode("Tips:\n\nOverview: Sleep.\n\n1. " + _promise(1, 1, "Sleep") + "\n<sync/>That is all.")[0]
    assert correction_pairs(_row(one, ["repeated_topic: x"])) == ([], "other guard")
    repetitive = _row(one, [])
    repetitive["stats"]["repetition"] = 0.5
    assert correction_pairs(repetitive) == ([], "repetitive")


def test_cut_chosen_keeps_only_the_line_where_the_sides_part():
    annotated, guards = _decode(LOOPING)
    repeat, done = (p.cut() for p in correction_pairs(_row(annotated, guards))[0])
    assert repeat.chosen == "Tips:\n\nOverview: Sleep; Food." and repeat.chosen_truncated
    assert done.chosen == annotated and not done.chosen_truncated  # "<sync/>These habits help." ends the answer
    annotated, guards = _decode(LOOPING.replace("These habits", "\nThese habits"))
    done = correction_pairs(_row(annotated, guards))[0][1].cut()
    assert done.chosen == annotated[: annotated.index("<sync/>") + len("<sync/>")] and done.chosen_truncated
    for pair in (repeat, done):  # the sides still part where they did, and nothing of the chosen's line is lost
        assert annotated.startswith(pair.chosen)
        assert pair.to_row()["chosen_truncated"] is True
    # a chosen side whose parting line runs to the end of the answer stays whole
    one = _decode("Tips:\n\nOverview: Sleep.\n\n1. " + _promise(1, 1, "Sleep") + "\n<sync/>That is all.")[0]
    plain = correction_pairs(_row(one, []))[0][0]
    assert plain.chosen.count("\n") > 2
    kept = plain.cut()
    assert kept.chosen == "Tips:\n\n1. " + CHUNKS[0].removesuffix("</async>") and kept.chosen_truncated
    whole = dataclasses.replace(plain, chosen="Tips:\n\nno newline after this")
    assert whole.cut() is whole


def test_cut_chosen_never_splits_a_tag():
    from pasta.data.correction_pairs import CorrectionPair

    pair = CorrectionPair("x", "p", "outline_done", 'Intro\n<promise topic="a\nb" tokens="3"/>c\nmore', "Intro\n3.")
    assert pair.cut().chosen == 'Intro\n<promise topic="a\nb" tokens="3"/>'
