"""`pasta eval` end to end on tiny models: prompt sets, systems, Skeleton-of-Thought against one-by-one decoding,
resume after an interruption, output files, and the summary the CLI prints."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import ByteTokenizer, tiny_model

from pasta.decoding import DecodeLimits
from pasta.eval import runner as runner_mod
from pasta.eval.judge import OrderResult
from pasta.eval.prompts import PromptItem, load_prompts
from pasta.eval.runner import EvalConfig, Systems, run_eval
from pasta.eval.sot import expand_points, parse_points, skeleton_of_thought
from pasta.interpreter import Interpreter

torch.set_num_threads(1)
TOK = ByteTokenizer()


@pytest.fixture(scope="module")
def systems() -> Systems:
    return Systems(pasta=Interpreter(tiny_model(seed=0), TOK, name="tiny-pasta"),
                   original=Interpreter(tiny_model(seed=1), TOK, name="tiny-orig"))


class LongerWins:
    """A deterministic judge: the longer output wins (so the length control has something to remove)."""

    name = "longer-wins"

    def __init__(self) -> None:
        self.calls = 0

    def compare(self, instruction, output_a, output_b):
        self.calls += 1
        return OrderResult(1.0 if len(output_b) > len(output_a) else 0.0 if len(output_b) < len(output_a) else 0.5,
                           "text")


ITEMS = [PromptItem(f"p{i}", f"Question number {i}?", "test") for i in range(3)]


def _config(tmp_path, **kw) -> EvalConfig:
    base = dict(out=str(tmp_path / "run"), max_new_tokens=16, max_thread_tokens=6, max_threads=4,
                sot_skeleton_tokens=8, bootstrap=100, plots=False)
    base.update(kw)
    return EvalConfig(**base)


# ---- prompt sets -------------------------------------------------------------------------------------------------


def test_alpaca_eval_prompts_load():
    items = load_prompts("alpaca_eval", limit=3)
    assert [i.id for i in items] == ["alpaca_eval:0", "alpaca_eval:1", "alpaca_eval:2"]
    assert items[0].instruction.startswith("What are the names of some famous actors")
    assert items[0].dataset == "helpful_base"


def test_jsonl_and_json_prompt_files(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"instruction": "a", "id": 7}\n\n{"prompt": "b", "input": "ctx"}\n{"instruction": "a"}\n'
                 '{"instruction": "a"}\n')
    items = load_prompts(str(f))
    assert items[0] == PromptItem("7", "a", "p")
    assert items[1].instruction == "b\n\nctx"
    assert items[3].id == items[2].id + "~1"  # same text, no id: hashed, de-duplicated
    g = tmp_path / "q.json"
    g.write_text(json.dumps(["x", {"instruction": "y", "dataset": "d"}]))
    assert [(i.instruction, i.dataset) for i in load_prompts(str(g), limit=5)] == [("x", "q"), ("y", "d")]


@pytest.mark.parametrize("content,where", [
    ('{"instruction": "a"}\n{"instruction": \n', "p.jsonl:2"),
    ('{"instruction": "a"}\n{"output": "no prompt"}\n', "p.jsonl:2"),
    ('{"instruction": "a"}\n\n[1]\n', "p.jsonl:3"),
])
def test_bad_prompt_rows_name_file_and_line(tmp_path, content, where):
    f = tmp_path / "p.jsonl"
    f.write_text(content)
    with pytest.raises(ValueError, match=where.replace(".", r"\.")):
        load_prompts(str(f))


def test_missing_prompt_file():
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_prompts("/nonexistent/prompts.jsonl")


# ---- Skeleton-of-Thought -----------------------------------------------------------------------------------------


def test_parse_points():
    sk = "1. Sleep well\n2) Eat food\n   3.  Move \nsome text\n3. again\n5. skipped"
    assert parse_points(sk) == [(1, "Sleep well"), (2, "Eat food"), (3, "Move")]
    assert parse_points("no list here") == []
    assert parse_points("1. a\n2. b\n3. c", max_points=2) == [(1, "a"), (2, "b")]
    # A small model's skeleton loops: a repeated point ends it.
    looping = "1. John C. Reilly\n2. John C. Reilly, Jr.\n3. John C. Reilly, Jr.\n4. Meryl Streep"
    assert parse_points(looping) == [(1, "John C. Reilly")]
    assert len(parse_points(looping, dedupe=False)) == 4


def test_an_expansion_is_cut_where_it_starts_the_next_point():
    from pasta.eval.sot import _one_point

    assert _one_point(" sleep well.\n2. Eat well.\n3. x") == " sleep well."
    assert _one_point(" sleep 8 hours. Then 2 more.") == " sleep 8 hours. Then 2 more."


def test_batched_expansion_equals_one_by_one_decoding(systems):
    """The parallel point expansion over one shared KV cache decodes each request exactly as alone."""
    interp = systems.original
    shared = interp.prompt_ids("A shared question about three things, and the skeleton: 1. x 2. y 3. z. Point ")
    requests = [shared + TOK.encode(s, add_special_tokens=False) for s in ("1 please", "2 ok", "3")]
    exp = expand_points(interp, requests, max_tokens_each=7)
    assert exp.shared == len(shared) + 0  # the common prefix
    assert exp.steps == max(exp.sampled)
    for request, out, n in zip(requests, exp.outputs, exp.sampled):
        alone = interp.generate(request, limits=DecodeLimits(max_new_tokens=7), mode="sequential")
        assert TOK.decode(out) == alone.text
        assert n == alone.stats.tokens


def test_expansion_respects_the_total_budget(systems):
    interp = systems.original
    shared = interp.prompt_ids("shared prefix ")
    requests = [shared + [ord(c)] for c in "abc"]
    exp = expand_points(interp, requests, max_tokens_each=50, max_total=7)
    assert sum(exp.sampled) == 7
    assert exp.sampled == [3, 2, 2]  # rows are taken in order within the step that hits the budget


def _forced_skeleton(interp, monkeypatch, body: str):
    """Make the skeleton call (SoT's first generate) write `body` after "1.", whatever the random model prefers."""
    real = interp.generate
    calls = []

    def generate(prompt, **kw):
        calls.append(prompt)
        if len(calls) == 1:
            kw["teacher"] = body
        return real(prompt, **kw)

    monkeypatch.setattr(interp, "generate", generate)
    return calls


def test_skeleton_of_thought_expands_each_point(systems, monkeypatch):
    interp = systems.original
    calls = _forced_skeleton(interp, monkeypatch, " Sleep\n2. Food\n3. Walk\n")
    res = skeleton_of_thought(interp, "q?", limits=DecodeLimits(max_new_tokens=60, max_thread_tokens=5),
                              skeleton_tokens=40)
    assert not res.fallback and len(calls) == 1  # no plain decoding
    assert [p for _, p in res.points] == ["Sleep", "Food", "Walk"]
    assert res.text.startswith("1. Sleep") and "\n2. Food" in res.text and "\n3. Walk" in res.text
    assert res.critical_path < res.tokens <= 60  # three points decoded side by side
    assert res.steps < res.tokens


def test_skeleton_of_thought_falls_back_without_points(systems, monkeypatch):
    interp = systems.original
    calls = _forced_skeleton(interp, monkeypatch, " ")
    res = skeleton_of_thought(interp, "q?", limits=DecodeLimits(max_new_tokens=30, max_thread_tokens=5),
                              skeleton_tokens=8)
    assert res.fallback and res.points == [] and len(calls) == 2  # the skeleton, then the plain answer
    assert "no numbered point" in res.warnings[0]
    assert res.critical_path == res.tokens <= 30


# ---- the pipeline ------------------------------------------------------------------------------------------------


def _summary_row(system, pid, wall, theo, complete):
    return {"id": pid, "system": system, "instruction": "q", "output": "x" * 10, "wall_s": 1.0, "tokens": 10,
            "steps": 5, "critical_path": 5, "threads": 1, "wall_speedup": wall, "theoretical_speedup": theo,
            "preference": 0.5, "length_chars": 10, "complete": complete, "stats": None}


def test_summary_speedups_count_complete_answers_only(tmp_path):
    from pasta.eval.runner import summarize

    rows = [_summary_row("pasta", "a", 2.0, 2.5, True), _summary_row("pasta", "b", 8.0, 9.0, True),
            _summary_row("pasta", "c", 30.0, 40.0, False),  # a runaway answer
            _summary_row("sequential", "a", 1.0, 1.0, True), _summary_row("sequential", "b", 1.0, 1.0, True),
            _summary_row("sequential", "c", 1.0, 1.0, False)]
    s = summarize(_config(tmp_path), rows, None)["systems"]["pasta"]
    assert s["complete"] == pytest.approx(2 / 3) and s["n_speedup"] == 2
    assert s["wall_speedup_geomean"] == pytest.approx(4.0)
    assert s["theoretical_speedup_geomean"] == pytest.approx((2.5 * 9.0) ** 0.5)



def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_run_eval_outputs_and_summary(tmp_path, systems):
    judge = LongerWins()
    config = _config(tmp_path, plots=True)
    summary = run_eval(config, systems=systems, judge=judge, items=ITEMS)
    out = tmp_path / "run"
    for name in ("summary.json", "report.md", "per_prompt.jsonl", "pareto.png", "speedup_distribution.png",
                 "judgments.jsonl", "run_config.json"):
        assert (out / name).is_file(), name
    for system in ("pasta", "sequential", "original", "sot"):
        rows = json.loads((out / "model_outputs" / f"{system}.json").read_text())
        assert [r["instruction"] for r in rows] == [i.instruction for i in ITEMS]
        assert set(rows[0]) == {"instruction", "output", "generator", "dataset"}
        assert rows[0]["generator"].startswith(system + ":")
        s = summary["systems"][system]
        for key in ("win_rate", "win_rate_se", "lc_win_rate"):
            assert s[key] is not None, (system, key)
        # A random tiny model never says EOS within 16 tokens: every answer is truncated, so no speedup is
        # reported (a truncated answer is a failure, never a speedup).
        assert s["complete"] == 0.0 and s["n_speedup"] == 0, system
        assert s["wall_speedup_geomean"] is None and s["theoretical_speedup_geomean"] is None
    per = _lines(out / "per_prompt.jsonl")
    seq = {r["id"]: r for r in per if r["system"] == "sequential"}
    for r in per:  # hand-check the per-prompt speedups against the raw records
        assert r["complete"] is False
        assert r["wall_speedup"] == pytest.approx(seq[r["id"]]["wall_s"] / r["wall_s"])
        assert r["theoretical_speedup"] == pytest.approx((r["stats"]["plain_tokens"] + 1) / r["critical_path"])
    assert summary["answers"]["truncated"]["n"] == len(ITEMS)
    assert summary["systems"]["sequential"]["win_rate"] == 50.0
    assert summary["judge_sanity"]["pairs"] > 0  # the judge's own accuracy is part of every judged report
    # The judge's preferences reproduce the summary's win rate.
    judged = [r for r in per if r["system"] == "original"]
    expected = 100 * sum(r["preference"] for r in judged) / len(judged)
    assert summary["systems"]["original"]["win_rate"] == pytest.approx(expected)
    # pasta and sequential give the same text under greedy decoding: a tie without a judge call.
    pasta_j = [j for j in _lines(out / "judgments.jsonl") if j["system"] == "pasta"]
    assert all(j["identical"] and j["preference"] == 0.5 for j in pasta_j)
    sanity_calls = 2 * sum(not r["identical"] for r in summary["judge_sanity"]["rows"])
    assert judge.calls == 2 * 2 * len(ITEMS) - 2 * sum(
        1 for j in _lines(out / "judgments.jsonl") if j["identical"] and j["system"] != "pasta") + sanity_calls


def test_resume_after_interruption_loses_no_finished_prompt(tmp_path, systems, monkeypatch):
    config = _config(tmp_path, systems=("pasta", "sequential"))
    calls: list[tuple[str, str]] = []
    real = runner_mod.generate_record

    def crashing(sys_, system, item, cfg):
        if item.id == "p1" and system == "sequential":
            raise KeyboardInterrupt  # killed in the middle of the second prompt
        calls.append((system, item.id))
        return real(sys_, system, item, cfg)

    monkeypatch.setattr(runner_mod, "generate_record", crashing)
    with pytest.raises(KeyboardInterrupt):
        run_eval(config, systems=systems, items=ITEMS)
    gen = tmp_path / "run" / "generations"
    assert [r["id"] for r in _lines(gen / "pasta.jsonl")] == ["p0", "p1"]
    assert [r["id"] for r in _lines(gen / "sequential.jsonl")] == ["p0"]
    finished = {(r["system"], r["id"]): r for f in gen.iterdir() for r in _lines(f)}
    # A crash mid-write leaves a partial line: it must be ignored, not break the rerun.
    with (gen / "sequential.jsonl").open("a") as f:
        f.write('{"id": "p1", "system": "sequ')
    calls.clear()

    def counting(sys_, system, item, cfg):
        calls.append((system, item.id))
        return real(sys_, system, item, cfg)

    monkeypatch.setattr(runner_mod, "generate_record", counting)
    summary = run_eval(config, systems=systems, items=ITEMS)
    assert sorted(calls) == sorted([("sequential", "p1"), ("pasta", "p2"), ("sequential", "p2")])
    again = {(r["system"], r["id"]): r for f in gen.iterdir()
             for r in runner_mod.read_jsonl(f, key=lambda r: r["id"]).values()}
    for key, record in finished.items():  # finished prompts are kept exactly as they were
        assert again[key] == record
    assert summary["systems"]["pasta"]["n_prompts"] == 3
    calls.clear()
    run_eval(config, systems=systems, items=ITEMS)  # nothing left to do
    assert calls == []


def test_rerun_with_other_settings_is_refused(tmp_path, systems):
    run_eval(_config(tmp_path, systems=("sequential",)), systems=systems, items=ITEMS[:1])
    with pytest.raises(ValueError, match="max_new_tokens: 16 -> 17"):
        run_eval(_config(tmp_path, systems=("sequential",), max_new_tokens=17), systems=systems, items=ITEMS[:1])


def test_config_validation():
    with pytest.raises(ValueError, match="unknown system"):
        EvalConfig(out="x", systems=("pasta", "apar"))
    with pytest.raises(ValueError, match="baseline"):
        EvalConfig(out="x", systems=("pasta",), baseline="original")
    assert "sequential" in EvalConfig(out="x", systems=("pasta",)).systems


def test_cli_prints_summary_json(tmp_path, systems, monkeypatch, capsys):
    from pasta.eval import cli

    monkeypatch.setattr(runner_mod, "load_systems", lambda config: systems)
    monkeypatch.setattr(cli, "build_judge", lambda args, s=None: LongerWins())
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"instruction": i.instruction, "id": i.id}) + "\n" for i in ITEMS))
    rc = cli.main(["--prompts", str(prompts), "--limit", "2", "--judge", "local", "--json", "--out",
                   str(tmp_path / "cli"), "--max-new-tokens", "12", "--max-thread-tokens", "5",
                   "--sot-skeleton-tokens", "6", "--no-plots", "--quiet", "--bootstrap", "50"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_prompts"] == 2
    for system in ("pasta", "sequential", "original", "sot"):
        for key in ("wall_speedup_geomean", "theoretical_speedup_geomean", "win_rate", "win_rate_se", "lc_win_rate"):
            assert key in summary["systems"][system]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "ok"}\nnot json\n')
    assert cli.main(["--prompts", str(bad), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "bad.jsonl:2" in capsys.readouterr().err
