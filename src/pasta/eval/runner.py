"""`pasta eval`: decode a prompt set with several systems, judge them against a baseline, aggregate, report.

Systems (all on the same interpreter, one request at a time, batch size 1 as in the paper):
- `pasta`: the Pasta model (base + Pasta adapter), asynchronous decoding;
- `sequential`: the same model decoded sequentially (the same answer under greedy decoding, no parallelism):
  the speed reference of every measured speedup;
- `original`: the model without Pasta training (no adapter), sequential;
- `sot`: Skeleton-of-Thought prompted on the original model (see `pasta.eval.sot`).
With `backend="openai"` the same four systems are models an OpenAI-compatible server serves (`pasta.eval.remote`).

Per-prompt speedups of a system, against the `sequential` record of the same prompt:
- wall speedup = wall_s(sequential) / wall_s(system) (decode loop only; tokenization and loading excluded);
- theoretical speedup = tokens(sequential answer) / critical_path(system) (the paper's definition; a system
  decoded sequentially has critical path = its tokens).

Files under the output folder (everything is resumable: rerun the same command to continue):
- `generations/<system>.jsonl`: one record per prompt, appended and flushed as each finishes (a line cut short
  by a crash is ignored and that prompt redone);
- `judgments.jsonl`: one pairwise judgment per (system, prompt), appended likewise;
- `run_config.json`: the settings that shape the generations; a rerun with different ones is refused;
- derived on every run: `per_prompt.jsonl`, `model_outputs/<system>.json` (AlpacaEval format),
  `summary.json`, `report.md`, `speedup_distribution.png`, `pareto.png`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..jsonl import open_append, read_keyed
from typing import Any

from ..decoding import DecodeLimits
from ..settings import DecodeSettings
from .answer_stats import aggregate, answer_stats, repetition_rate
from .prompts import PromptItem, load_prompts

log = logging.getLogger(__name__)

SYSTEMS = ("pasta", "sequential", "original", "sot")
SPEED_REFERENCE = "sequential"


@dataclass
class EvalConfig(DecodeSettings):
    out: str
    prompts: str = "alpaca_eval"
    limit: int | None = None
    systems: tuple[str, ...] = SYSTEMS
    baseline: str = "sequential"  # quality reference of the judge
    model: str | None = None
    adapter: str | bool = True
    dtype: str = "float32"
    max_new_tokens: int = 512
    max_thread_tokens: int = 256
    max_threads: int = 8
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    sot_skeleton_tokens: int = 128
    sot_max_points: int = 10
    bootstrap: int = 2000
    plots: bool = True
    outline_topics: bool | None = None  # DecodeLimits.outline_topics (None: as the model records)
    outline_terminated: bool | None = None  # DecodeLimits.outline_terminated (None: as the model records)
    outline_no_repeat: bool | None = None  # DecodeLimits.outline_no_repeat (None: as the model records)
    presence_penalty: float | None = None  # DecodeLimits (None: as the model records)
    frequency_penalty: float | None = None
    draft_promises: bool = True  # DecodeLimits.draft_promises
    draft_tokens: int | None = None  # DecodeLimits.draft_tokens (None: as the model records)
    # backend "openai": the systems are served by an OpenAI-compatible server (pasta.eval.remote)
    backend: str = "local"
    base_url: str | None = None
    remote_model: str | None = None  # the Pasta model's id there (default: the first it lists)
    remote_original_model: str | None = None  # the original model's id (systems original and sot)
    original_base_url: str | None = None  # where the original model is served (default: base_url)
    tokenizer: str | None = None  # the served model's tokenizer: a folder, a .gguf or 'default'
    # answers in flight at once (served systems only): throughput for large prompt sets, but wall times under load
    concurrency: int = 1

    def __post_init__(self) -> None:
        self.systems = tuple(dict.fromkeys(self.systems))
        unknown = [s for s in self.systems if s not in SYSTEMS]
        if unknown:
            raise ValueError(f"unknown system(s) {unknown}; choose from {list(SYSTEMS)}")
        if SPEED_REFERENCE not in self.systems:  # every speedup is measured against it
            self.systems = (*self.systems, SPEED_REFERENCE)
        if self.baseline not in self.systems:
            raise ValueError(f"baseline {self.baseline!r} is not among the systems {list(self.systems)}")
        self.validate_decode_settings()
        if self.backend not in ("local", "openai"):
            raise ValueError(f"backend must be 'local' or 'openai', got {self.backend!r}")
        if self.backend == "openai":
            self._check_remote()
        if not isinstance(self.concurrency, int) or isinstance(self.concurrency, bool) or self.concurrency < 1:
            raise ValueError(f"concurrency must be a positive integer, got {self.concurrency!r}")
        if self.concurrency > 1 and self.backend == "local":
            raise ValueError("concurrency > 1 needs backend openai: local decoding answers one request at a time "
                             "(batch size 1, as the paper measures)")

    def _check_remote(self) -> None:
        from ..backends.openai import LOCAL_ONLY

        if not self.base_url:
            raise ValueError("backend openai needs base_url (--base-url http://HOST:PORT/v1)")
        if not self.tokenizer:
            raise ValueError("backend openai needs the served model's tokenizer (--tokenizer: a folder, a .gguf, or "
                             "'default' for the embedded model): it gives the chat template and the token counts")
        needs_original = [s for s in self.systems if s in ("original", "sot")]
        if needs_original and not self.remote_original_model:
            raise ValueError(f"systems {needs_original} need the original model's id on the server "
                             "(--remote-original-model, e.g. vLLM's base model beside the Pasta LoRA), or leave them "
                             "out (--systems pasta,sequential)")
        asked = [name for name in LOCAL_ONLY if getattr(self, name)]
        if asked:
            raise ValueError(f"{', '.join(asked)}: only local decoding applies them (per thread, tags exempt); "
                             "backend openai cannot honour them")

    def generation_key(self) -> dict[str, Any]:
        """What must not change between an interrupted run and its continuation."""
        keys = ("prompts", "model", "adapter", "dtype", "max_new_tokens", "max_thread_tokens", "max_threads",
                "temperature", "top_p", "seed", "sot_skeleton_tokens", "sot_max_points")
        if self.backend != "local":  # (local runs keep the key they always had)
            keys += ("backend", "remote_model", "remote_original_model", "tokenizer")
        return {k: getattr(self, k) for k in keys}


# ---- systems -----------------------------------------------------------------------------------------------------


@dataclass
class Systems:
    """The interpreters behind the systems: `pasta` (Pasta model) and `original` (no adapter); may be the same."""

    pasta: Any
    original: Any
    notes: list[str] = field(default_factory=list)

    def interp_for(self, system: str):
        return self.pasta if system in ("pasta", "sequential") else self.original

    def generator(self, system: str) -> str:
        return f"{system}:{self.interp_for(system).name}"


def load_systems(config: EvalConfig) -> Systems:
    from ..interpreter import Interpreter
    from ..models import DEFAULT_MODEL, default_adapter_path

    if config.backend == "openai":
        from .remote import load_remote_systems

        return load_remote_systems(config)
    notes: list[str] = []
    need_original = any(s in config.systems for s in ("original", "sot"))
    pasta = Interpreter.from_pretrained(config.model, dtype=config.dtype, adapter=config.adapter,
                                        limits=config.limits)
    original = pasta
    if need_original:
        base = Interpreter.from_pretrained(config.model, dtype=config.dtype, adapter=False, limits=config.limits)
        if base.name == pasta.name:
            notes.append(f"no Pasta adapter was applied: the 'pasta' and 'original' systems are the same model "
                         f"({pasta.name}); only the decoding differs")
        else:
            original = base
    elif config.adapter is True and config.model in (None, "default", DEFAULT_MODEL) and default_adapter_path() is None:
        notes.append("no Pasta adapter is built for the embedded model: 'pasta' is the untrained model")
    return Systems(pasta=pasta, original=original, notes=notes)


def _prompt_seed(base: int, prompt_id: str) -> int:
    return (base * 1_000_003 + int(hashlib.sha1(prompt_id.encode()).hexdigest()[:8], 16)) % (2**63)


def generate_record(systems: Systems, system: str, item: PromptItem, config: EvalConfig) -> dict[str, Any]:
    """Decode one prompt with one system; the JSON-ready record."""
    from .sot import skeleton_of_thought

    interp = systems.interp_for(system)
    sampling = dataclasses.replace(config.sampling, seed=_prompt_seed(config.seed, item.id))
    record: dict[str, Any] = {"id": item.id, "system": system, "generator": systems.generator(system)}
    if system == "sot":
        # a served model runs its own SoT (concurrent requests); a local interpreter batches the points itself
        sot = getattr(interp, "skeleton_of_thought", None) or (lambda *a, **k: skeleton_of_thought(interp, *a, **k))
        res = sot(item.instruction, sampling=sampling, limits=config.limits,
                  skeleton_tokens=config.sot_skeleton_tokens, max_points=config.sot_max_points)
        plain = len(interp.tokenizer.encode(res.text, add_special_tokens=False)) if res.text else 0
        stats = {"complete": not res.truncated, "finish_reason": "length" if res.truncated else "eos",
                 "plain_tokens": plain, "repetition": round(repetition_rate(res.text), 4)}
        record.update(output=res.text, annotated=None, wall_s=res.wall_s, tokens=res.tokens, steps=res.steps,
                      critical_path=res.critical_path, threads=len(res.expansions), mode="sot",
                      warnings=res.warnings, skeleton=res.skeleton, fallback=res.fallback, stats=stats)
        return record
    mode = "async" if system == "pasta" else "sequential"
    result = interp.generate(item.instruction, sampling=sampling, limits=config.limits, mode=mode)
    s = result.stats
    critical = s.critical_path if mode == "async" else s.tokens
    record.update(output=result.text, annotated=result.annotated, wall_s=s.wall_s, tokens=s.tokens, steps=s.steps,
                  critical_path=critical, threads=s.threads, mode=mode, warnings=s.warnings,
                  stats=answer_stats(result, interp.tokenizer).to_dict())
    return record


# ---- resumable JSONL ---------------------------------------------------------------------------------------------


def read_jsonl(path: Path, key: Callable[[dict], Any]) -> dict[Any, dict]:
    """Complete records by key (a later line wins); an unreadable line (a crash mid-write) is skipped."""
    return read_keyed(path, key)


class JsonlAppender:
    def __init__(self, path: Path) -> None:
        self.f = open_append(path)  # a line cut short by a crash is followed by a fresh one
        self._lock = threading.Lock()  # whole lines only, when answers finish on several threads

    def write(self, row: dict) -> None:
        line = json.dumps(row, ensure_ascii=False) + "\n"
        with self._lock:
            self.f.write(line)
            self.f.flush()

    def close(self) -> None:
        self.f.close()


def check_run_config(out: Path, config: EvalConfig) -> None:
    path = out / "run_config.json"
    key = config.generation_key()
    if path.is_file():
        old = json.loads(path.read_text())
        diff = {k: (old.get(k), v) for k, v in key.items() if old.get(k) != v}
        if diff:
            detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"{out} holds results made with other settings ({detail}); use another --out")
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(key, indent=2))


def run_generations(config: EvalConfig, systems: Systems, items: list[PromptItem],
                    progress: Callable[[str], None] | None = None) -> dict[str, dict[str, dict]]:
    """Decode every (system, prompt) not already on disk; returns {system: {prompt id: record}}."""
    out = Path(config.out)
    records: dict[str, dict[str, dict]] = {}
    appenders: dict[str, JsonlAppender] = {}
    try:
        for system in config.systems:
            records[system] = read_jsonl(out / "generations" / f"{system}.jsonl", key=lambda r: r["id"])
        todo = [(k, item, system) for k, item in enumerate(items) for system in config.systems
                if item.id not in records[system]]
        for system in dict.fromkeys(system for _, _, system in todo):
            appenders[system] = JsonlAppender(out / "generations" / f"{system}.jsonl")
        warmed: set[int] = set()
        for _, _, system in todo:  # the first forward passes are slow: keep them out of the timings
            interp = systems.interp_for(system)
            if id(interp) not in warmed:
                interp.generate("Hi", limits=DecodeLimits(max_new_tokens=2))
                warmed.add(id(interp))

        def one(task) -> tuple[int, str, dict]:
            k, item, system = task
            record = generate_record(systems, system, item, config)
            appenders[system].write(record)  # on disk as soon as it is done: an interruption loses no answer
            return k, system, record

        def done(k: int, system: str, record: dict) -> None:
            records[system][items[k].id] = record
            if progress:
                progress(f"[{k + 1}/{len(items)}] {system}: {record['tokens']} tokens, {record['wall_s']:.1f}s")

        if config.concurrency > 1:  # served systems: the server batches the answers in flight
            from concurrent.futures import ThreadPoolExecutor, as_completed

            pool = ThreadPoolExecutor(config.concurrency)
            try:
                for future in as_completed([pool.submit(one, task) for task in todo]):
                    done(*future.result())
            finally:  # an error or Ctrl-C: the answers in flight finish and are kept, the queued ones never start
                pool.shutdown(wait=True, cancel_futures=True)
        else:
            for task in todo:
                done(*one(task))
    finally:
        for a in appenders.values():
            a.close()
    return records


# ---- judging ---------------------------------------------------------------------------------------------------


def run_judgments(config: EvalConfig, judge, items: list[PromptItem], records: dict[str, dict[str, dict]],
                  concurrency: int = 1, progress: Callable[[str], None] | None = None) -> dict[tuple, dict]:
    """Judge every system against the baseline on every prompt (resumable). Key: (system, baseline, id, judge)."""
    from .judge import judge_pair

    path = Path(config.out) / "judgments.jsonl"
    done = read_jsonl(path, key=lambda r: (r["system"], r["baseline"], r["id"], r["judge"]))
    if judge is None:
        return done
    todo = []
    for item in items:
        base = records[config.baseline].get(item.id)
        for system in config.systems:
            if system == config.baseline or item.id not in records.get(system, {}) or base is None:
                continue
            if (system, config.baseline, item.id, judge.name) in done:
                continue
            todo.append((system, item, base["output"], records[system][item.id]["output"]))

    def one(task):
        system, item, base_out, cand_out = task
        j = judge_pair(judge, item.instruction, base_out, cand_out)
        return {"system": system, "baseline": config.baseline, "id": item.id, "judge": judge.name, **j.to_dict()}

    appender = JsonlAppender(path)
    try:
        if concurrency > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(concurrency) as pool:
                for row in pool.map(one, todo):
                    appender.write(row)
                    done[(row["system"], row["baseline"], row["id"], row["judge"])] = row
        else:
            for n, task in enumerate(todo, 1):
                row = one(task)
                appender.write(row)
                done[(row["system"], row["baseline"], row["id"], row["judge"])] = row
                if progress:
                    progress(f"judged {n}/{len(todo)}: {row['system']} {row['id']} -> {row['preference']}")
    finally:
        appender.close()
    return done


# ---- aggregation -------------------------------------------------------------------------------------------------


def per_prompt_rows(config: EvalConfig, items: list[PromptItem], records: dict[str, dict[str, dict]],
                    judgments: dict[tuple, dict], judge_name: str | None) -> list[dict]:
    rows = []
    ref = records.get(SPEED_REFERENCE, {})
    for item in items:
        for system in config.systems:
            rec = records.get(system, {}).get(item.id)
            if rec is None:
                continue
            r = ref.get(item.id)
            wall = (r["wall_s"] / rec["wall_s"]) if r and rec["wall_s"] > 0 and r["wall_s"] > 0 else None
            stats = rec.get("stats") or {}
            # Plain-text tokens (tags excluded, + EOS) a plain sequential decoder needs, over this system's critical
            # path; records written before answer statistics existed fall back to the reference's sampled tokens.
            plain = stats.get("plain_tokens")
            work = plain + 1 if plain is not None else (r["tokens"] if r else None)
            theo = (work / rec["critical_path"]) if work and rec["critical_path"] > 0 else None
            ref_stats = (r or {}).get("stats") or {}
            complete = None if "complete" not in stats else bool(stats["complete"]) and ref_stats.get("complete", True)
            pref = None
            if system == config.baseline:
                pref = 0.5
            elif judge_name is not None:
                j = judgments.get((system, config.baseline, item.id, judge_name))
                pref = j.get("preference") if j else None
            rows.append({
                "id": item.id, "system": system, "instruction": item.instruction, "output": rec["output"],
                "wall_s": rec["wall_s"], "tokens": rec["tokens"], "steps": rec["steps"],
                "critical_path": rec["critical_path"], "threads": rec["threads"],
                "wall_speedup": wall, "theoretical_speedup": theo, "preference": pref,
                "length_chars": len(rec["output"]), "complete": complete, "stats": stats or None,
            })
    return rows


def _answer_aggregate(rows: list[dict]) -> dict | None:
    """The `pasta` system's answer statistics (pasta.eval.answer_stats.aggregate), with the sequential and
    original records of the same prompts."""
    by_system: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_system.setdefault(r["system"], {})[r["id"]] = r
    pasta = {k: r for k, r in by_system.get("pasta", {}).items() if r.get("stats") and "promises" in r["stats"]}
    if not pasta:
        return None
    joined = []
    for key, r in pasta.items():
        seq, orig = by_system.get("sequential", {}).get(key), by_system.get("original", {}).get(key)
        row = {"id": key, "pasta": r["stats"], "wall_speedup": r["wall_speedup"], "wall_async_s": r["wall_s"],
               "sequential_complete": (seq.get("stats") or {}).get("complete") if seq else None}
        if orig and orig.get("stats"):
            row["original"] = {**orig["stats"], "wall_s": orig["wall_s"]}
        joined.append(row)
    return aggregate(joined)


def summarize(config: EvalConfig, rows: list[dict], judge_name: str | None, notes: Iterable[str] = (),
              sanity: dict | None = None) -> dict:
    from .stats import bootstrap_geomean_ci, geomean, length_controlled_win_rate, win_rate

    baseline_len = {r["id"]: r["length_chars"] for r in rows if r["system"] == config.baseline}
    systems: dict[str, dict] = {}
    for system in config.systems:
        mine = [r for r in rows if r["system"] == system]
        s: dict[str, Any] = {"n_prompts": len(mine)}
        known = [r for r in mine if r.get("complete") is not None]
        s["complete"] = sum(r["complete"] for r in known) / len(known) if known else None
        # Speedups only over complete answers (here and in the sequential reference): a truncated or looping
        # answer is a failure, never a speedup.
        timed = [r for r in mine if r.get("complete") is not False]
        s["n_speedup"] = len(timed)
        for name in ("wall_speedup", "theoretical_speedup"):
            vals = [r[name] for r in timed if r[name] is not None and r[name] > 0 and math.isfinite(r[name])]
            s[f"{name}_geomean"] = geomean(vals) if vals else None
            s[f"{name}_ci95"] = list(bootstrap_geomean_ci(vals, resamples=config.bootstrap)) if vals else None
        if mine:
            s["mean_tokens"] = sum(r["tokens"] for r in mine) / len(mine)
            s["mean_threads"] = sum(r["threads"] for r in mine) / len(mine)
            s["mean_wall_s"] = sum(r["wall_s"] for r in mine) / len(mine)
            s["mean_length_chars"] = sum(r["length_chars"] for r in mine) / len(mine)
        judged = [r for r in mine if r["preference"] is not None and r["id"] in baseline_len]
        s["n_judged"] = len(judged)
        if system == config.baseline:
            s.update(win_rate=50.0, win_rate_se=0.0, lc_win_rate=50.0, lc_win_rate_se=0.0)
        elif judged:
            wr, se = win_rate([r["preference"] for r in judged])
            lc = length_controlled_win_rate([r["preference"] for r in judged],
                                            [r["length_chars"] - baseline_len[r["id"]] for r in judged])
            s.update(win_rate=wr, win_rate_se=se, lc_win_rate=lc.lc_win_rate, lc_win_rate_se=lc.lc_win_rate_se,
                     lc_length_coef=lc.length_coef)
        else:
            s.update(win_rate=None, win_rate_se=None, lc_win_rate=None, lc_win_rate_se=None)
        systems[system] = s
    return {
        "systems": systems,
        "answers": _answer_aggregate(rows),
        "judge_sanity": sanity,
        "baseline": config.baseline,
        "speed_reference": SPEED_REFERENCE,
        "judge": judge_name,
        "n_prompts": len({r["id"] for r in rows}),
        "config": {**config.generation_key(), "limit": config.limit, "systems": list(config.systems)},
        "notes": list(notes),
    }


def write_model_outputs(out: Path, systems: Systems | None, items: list[PromptItem],
                        records: dict[str, dict[str, dict]]) -> None:
    folder = out / "model_outputs"
    folder.mkdir(parents=True, exist_ok=True)
    for system, by_id in records.items():
        rows = [{"instruction": it.instruction, "output": by_id[it.id]["output"],
                 "generator": by_id[it.id]["generator"], "dataset": it.dataset}
                for it in items if it.id in by_id]
        (folder / f"{system}.json").write_text(json.dumps(rows, indent=2, ensure_ascii=False))


def run_eval(config: EvalConfig, *, systems: Systems | None = None, judge=None, judge_concurrency: int = 1,
             items: list[PromptItem] | None = None, progress: Callable[[str], None] | None = None,
             compare: list[tuple[str, dict]] | None = None) -> dict:
    """The whole pipeline; returns the summary (also written to summary.json). `systems`/`judge` may be given
    (tests, the preference trainer); otherwise the models are loaded from `config`."""
    out = Path(config.out)
    items = items if items is not None else load_prompts(config.prompts, config.limit)
    check_run_config(out, config)
    systems = systems or load_systems(config)
    records = run_generations(config, systems, items, progress)
    judgments = run_judgments(config, judge, items, records, judge_concurrency, progress)
    judge_name = judge.name if judge is not None else None
    if judge is None:  # report from the judgments already on disk, when they come from a single judge
        names = {key[3] for key in judgments if key[1] == config.baseline}
        judge_name = names.pop() if len(names) == 1 else None
    rows = per_prompt_rows(config, items, records, judgments, judge_name)
    with (out / "per_prompt.jsonl").open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    write_model_outputs(out, systems, items, records)
    sanity = run_judge_sanity(config, judge, items, records)
    notes = list(systems.notes)
    if config.concurrency > 1:
        notes.append(f"{config.concurrency} answers in flight at once (--concurrency): wall times were measured under "
                     "that load, not at batch size 1")
    summary = summarize(config, rows, judge_name, notes, sanity)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    from .report import write_report

    write_report(out, summary, rows, plots=config.plots, compare=compare)
    return summary


def run_judge_sanity(config: EvalConfig, judge, items: list[PromptItem], records: dict[str, dict[str, dict]],
                     n_prompts: int = 4) -> dict | None:
    """Judge sanity pairs (pasta.eval.judge_sanity) on the baseline's answers to the first prompts; cached in
    judge_sanity.json per judge, reused when no judge is given."""
    from .judge_sanity import judge_sanity

    path = Path(config.out) / "judge_sanity.json"
    cached = json.loads(path.read_text()) if path.is_file() else None
    if judge is None or (cached and cached.get("judge") == judge.name):
        return cached
    base = records.get(config.baseline, {})
    cases = [(it.instruction, base[it.id]["output"]) for it in items if it.id in base][:n_prompts]
    result = judge_sanity(judge, cases)
    out = {**result.to_dict(), "verdict": result.verdict}
    path.write_text(json.dumps(out, indent=2))
    return out


def config_dict(config: EvalConfig) -> dict:
    return asdict(config)
