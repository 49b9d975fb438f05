"""The default Pasta model on AlpacaEval instructions: does it keep its promises, and is it faster for a user?

Per prompt, in the same run and on the same CPU (greedy, one request at a time):
- the Pasta model decodes asynchronously, and sequentially (the same answer, no parallelism: the wall-clock
  reference of the speedup);
- the original model (no adapter) answers the same prompt normally: the user's real alternative;
- the original model scores both plain answers (per-token NLL), a judge-free quality proxy.

Per answer (committed per-prompt JSONL; see pasta.eval.answer_stats): complete (EOS before the cap), promises,
distinct and repeated topics, reaches_sync, near-duplicate chunks, repetition rate, guards fired, well_formed,
plain tokens and theoretical speedup = (plain tokens + 1) / forward steps (tags are not counted).
Aggregates over all prompts and over promise-using prompts; speedup geomeans over complete answers only;
truncated answers are listed apart. `targets` says which of issue 9's targets are met.

    python bench/default_model.py --json --limit 100 --max-new-tokens 512 --threads 1
    python bench/default_model.py --offset 100 --limit 50 --no-original --no-sequential   # quick dev-set check
    python bench/default_model.py --json --limit 100 --threads 1 --workers 2 --out rows.jsonl  # one process a core

`--workers N` splits the prompts into N contiguous shards decoded by N processes (each with `--threads`), each
appending to `<out>.w<k>.jsonl`, then merges them into `--out` in prompt order; a rerun resumes every shard. The
shards share the machine, so wall-clock ratios (measured side by side within each process) stay fair, but absolute
times are those of a loaded machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from pasta.cli_options import add_draft_option, add_outline_topics_option, add_penalty_options, add_quantize_option
from pasta.data.sources import alpaca_eval_prompts
from pasta.decoding import DecodeLimits
from pasta.eval.answer_stats import aggregate, answer_stats
from pasta.eval.nll import answer_nll
from pasta.interpreter import Interpreter
from pasta.jsonl import append_jsonl, jsonl_lines


def _timed(interp: Interpreter, ids: list[int], limits: DecodeLimits, mode: str = "async"):
    started = time.perf_counter()
    result = interp.generate(ids, limits=limits, mode=mode)
    return result, time.perf_counter() - started


def measure(index: int, prompt: str, pasta: Interpreter, original: Interpreter | None, limits: DecodeLimits,
            sequential: bool) -> dict:
    ids = pasta.prompt_ids(prompt)
    result, wall_async = _timed(pasta, ids, limits)
    stats = answer_stats(result, pasta.tokenizer)
    used = limits.resolved(pasta.decoding_defaults)  # what the answer was decoded with
    row = {
        "index": index, "id": f"alpaca_eval:{index}", "instruction": prompt, "output": result.text,
        "annotated": result.annotated, "pasta": stats.to_dict(), "wall_async_s": wall_async,
        "warnings": result.stats.warnings, "outline_topics_fed": result.stats.outline_topics_fed,
        "outline_topics": used.outline_topics, "outline_terminated": used.outline_terminated,
        "outline_no_repeat": used.outline_no_repeat, "outline_blocked": result.stats.outline_blocked,
        "presence_penalty": used.presence_penalty, "frequency_penalty": used.frequency_penalty,
        "draft_promises": used.draft_promises,
        "draft_tokens": used.draft_tokens,
        "drafted": result.stats.drafted, "drafts_rejected": result.stats.drafts_rejected,
        "drafted_plain": result.stats.drafted_plain,
        "quantize": pasta.runner.quantize,
        "chunks": [{"topic": t.topic, "tokens": t.sampled, "close": t.close_reason} for t in result.stats.timeline[1:]],
    }
    if sequential:
        seq, wall_seq = _timed(pasta, ids, limits, mode="sequential")
        row.update(sequential_complete=seq.stats.finish_reason == "eos", same_as_sequential=seq.text == result.text,
                   wall_sequential_s=wall_seq, wall_speedup=wall_seq / wall_async)
    if original is not None:
        # The user's alternative: the original model as it decodes by itself (no penalties of ours).
        plain, wall_orig = _timed(original, ids, replace(limits, presence_penalty=0.0, frequency_penalty=0.0))
        orig_stats = answer_stats(plain, original.tokenizer)
        row["original"] = {"output": plain.text, "complete": orig_stats.complete, "wall_s": wall_orig,
                           "plain_tokens": orig_stats.plain_tokens, "repetition": orig_stats.repetition}
        row["nll_pasta"] = answer_nll(original.model, original.tokenizer, ids, result.text)
        row["nll_original"] = answer_nll(original.model, original.tokenizer, ids, plain.text)
    return row


def targets(summary: dict) -> dict:
    """Issue 9's targets: value and whether it is met (None where the run did not measure it)."""
    s, p = summary["speedup"], summary["promise_answers"]
    floor = min(0.9, summary.get("complete_original") or 0.9)  # no fewer than the original model finishes

    def check(value, ok):
        return {"value": value, "met": None if value is None else bool(ok(value))}

    rep_orig = summary["repetition"].get("original_mean")
    return {
        "complete_async": check(summary["complete"], lambda v: v >= floor),
        "complete_sequential": check(summary["complete_sequential"], lambda v: v >= floor),
        "uses_promise": check(summary["uses_promise"], lambda v: v >= 0.3),
        "reaches_sync": check(p["reaches_sync"], lambda v: v >= 0.95),
        "repeated_topics_share": check(p["repeated_topics_share"], lambda v: v <= 0.05),
        "guards_fired_promise_answers": check(p["guards_fired"], lambda v: v <= 0.10),
        # The same bound counting a ban of outline_no_repeat as a guard: where it acts, the model would have repeated.
        "guards_or_outline_blocked_promise_answers": check(p.get("guards_or_outline_blocked"), lambda v: v <= 0.10),
        "theoretical_geomean_complete_promise": check(s["theoretical_geomean_complete_promise"], lambda v: v >= 1.5),
        "theoretical_geomean_complete": check(s["theoretical_geomean_complete"], lambda v: v >= 1.15),
        "wall_geomean_complete": check(s["wall_geomean_complete"], lambda v: v >= 1.1),
        # Not measured without the original model's answers (--no-original): met is None, not False.
        "repetition_vs_original": ({"value": summary["repetition"]["pasta_mean"], "met": None} if rep_orig is None
                                   else check(summary["repetition"]["pasta_mean"], lambda v: v <= rep_orig + 0.05)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: the embedded model")
    parser.add_argument("--adapter", default=None, help="default: the embedded Pasta adapter")
    parser.add_argument("--no-adapter", action="store_true", help="measure the base model itself (a reference row)")
    parser.add_argument("--limit", type=int, default=None, help="N instructions from --offset")
    parser.add_argument("--offset", type=int, default=0, help="first instruction (0-99: report set; 100-199: dev set)")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is robust on a shared CPU)")
    parser.add_argument("--no-sequential", action="store_true", help="skip sequential decoding (no wall speedup)")
    parser.add_argument("--no-original", action="store_true", help="skip the original model (no NLL, no baseline)")
    parser.add_argument("--out", default=None, help="per-prompt JSONL (appended; a rerun skips done prompts)")
    parser.add_argument("--summary", default=None, help="also write the summary JSON here")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    add_outline_topics_option(parser)
    add_penalty_options(parser)
    add_draft_option(parser)
    add_quantize_option(parser)
    parser.add_argument("--workers", type=int, default=1,
                        help="decode in this many processes (contiguous shards; needs --out), then merge")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    if args.workers > 1:
        if not args.out:
            parser.error("--workers needs --out (each worker writes its rows beside it)")
        return _run_workers(args, argv if argv is not None else sys.argv[1:])
    torch.set_num_threads(args.threads)
    adapter = False if args.no_adapter else (args.adapter or True)
    pasta = Interpreter.from_pretrained(args.model, dtype=args.dtype, adapter=adapter, quantize=args.quantize)
    original = None if args.no_original else Interpreter.from_pretrained(args.model, dtype=args.dtype, adapter=False,
                                                                         quantize=args.quantize)
    limits = DecodeLimits.from_options(args, max_new_tokens=args.max_new_tokens, max_thread_tokens=args.max_new_tokens)
    prompts = alpaca_eval_prompts()
    end = len(prompts) if args.limit is None else args.offset + args.limit
    chosen = list(range(args.offset, min(end, len(prompts))))
    done = _done_rows(args.out) if args.out else {}
    for interp in filter(None, (pasta, original)):  # the first forward passes are slow: keep them out of timings
        interp.generate("Hi", limits=DecodeLimits(max_new_tokens=2))
    rows = []
    for k, index in enumerate(chosen):
        if index in done:
            rows.append(done[index])
            continue
        row = measure(index, prompts[index], pasta, original, limits, sequential=not args.no_sequential)
        rows.append(row)
        if args.out:
            append_jsonl(args.out, row)
        a = row["pasta"]
        print(f"[{k + 1}/{len(chosen)}] #{index} {a['finish_reason']} promises={a['promises']} "
              f"topics={a['distinct_topics']} sync={a['reaches_sync']} guards={len(a['guards'])} "
              f"theo={a['theoretical_speedup']:.2f} wall={row.get('wall_speedup') or float('nan'):.2f}",
              file=sys.stderr)
    return _report(args, pasta.name, rows)


def _report(args, model_name: str, rows: list[dict]) -> int:
    summary = {"model": model_name, "dtype": args.dtype, "quantize": args.quantize, "max_new_tokens": args.max_new_tokens,
               "offset": args.offset, "threads": args.threads, "workers": args.workers,
               "outline_topics": _outline_topics(rows), **_decoded_with(rows), **aggregate(rows)}
    summary["targets"] = targets(summary)
    if args.summary:
        Path(args.summary).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary) if args.json else json.dumps(summary, indent=2))
    return 0


def _decoded_with(rows: list[dict]) -> dict:
    """The presence/frequency penalties and promise drafts the answers were decoded with: one value each, or 'mixed'
    (rows written before these existed had none: 0, off), the drafted tokens the model confirmed, and the outline
    copies banned."""
    found = {}
    for key, before in (("outline_terminated", False), ("outline_no_repeat", False), ("presence_penalty", 0.0), ("frequency_penalty", 0.0),
                        ("draft_promises", False), ("draft_tokens", 0)):
        values = {row.get(key, before) for row in rows}
        found[key] = values.pop() if len(values) == 1 else "mixed"
    # Outline copies the ban took away (DecodeLimits.outline_no_repeat), in all; the forks they touched are in
    # promise_answers (outline_blocked, guards_or_outline_blocked).
    found["outline_blocked"] = sum(len(row.get("outline_blocked", [])) for row in rows)
    found["drafted_tokens"] = sum(row.get("drafted", 0) for row in rows)
    found["drafted_plain_tokens"] = sum(row.get("drafted_plain", 0) for row in rows)
    return found


def _outline_topics(rows: list[dict]) -> bool | str | None:
    """Whether topics were fed from outlines (as asked, or as the model records): one value, or 'mixed'."""
    values = {row.get("outline_topics") for row in rows}
    return values.pop() if len(values) == 1 else "mixed"


def _done_rows(path: str | Path) -> dict[int, dict]:
    done: dict[int, dict] = {}
    if Path(path).is_file():
        for _, row in jsonl_lines(path):
            if isinstance(row, dict) and "index" in row:
                done[row["index"]] = row
    return done


def _without(argv: list[str], options: tuple[str, ...], flags: tuple[str, ...] = ()) -> list[str]:
    """argv minus the given options with their values (`--x v` and `--x=v`) and the given flags (no value)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in flags:
            continue
        if name in options:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def _shards(chosen: list[int], done: set[int], workers: int) -> list[list[int]]:
    """Contiguous ranges of prompt indexes, one per worker, that split the prompts still to decode evenly (a resumed
    run's done rows would otherwise leave a worker idle); the done rows inside a range are handed to its worker,
    which resumes past them. Nothing left to decode: the ranges split them all (the workers only re-report)."""
    todo = [index for index in chosen if index not in done] or chosen
    size = -(-len(todo) // workers)
    return [list(range(part[0], part[-1] + 1)) for part in (todo[k : k + size] for k in range(0, len(todo), size))]


def _run_workers(args, argv: list[str]) -> int:
    """Decode contiguous shards in parallel processes, then merge their rows into --out in prompt order."""
    out = Path(args.out)
    total = len(alpaca_eval_prompts())
    end = total if args.limit is None else min(total, args.offset + args.limit)
    chosen = list(range(args.offset, end))
    done = _done_rows(out)
    shards = _shards(chosen, set(done), args.workers)
    base = _without(argv, ("--workers", "--offset", "--limit", "--out", "--summary"), flags=("--json",))
    procs = []
    for k, shard in enumerate(shards):
        part = out.with_name(f"{out.stem}.w{k}.jsonl")
        have = _done_rows(part)
        for index in shard:  # rows already in --out: the worker resumes past them
            if index in done and index not in have:
                append_jsonl(part, done[index])
        cmd = [sys.executable, __file__, *base, "--offset", str(shard[0]), "--limit", str(len(shard)),
               "--out", str(part), "--json"]
        procs.append((part, subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)))
    # Each worker prints one summary line at its end (its progress goes to stderr).
    outputs = [proc.communicate()[0] for _, proc in procs]
    failed = [part for part, proc in procs if proc.returncode != 0]
    if failed:
        print(f"error: workers for {', '.join(map(str, failed))} failed; rerun to resume them", file=sys.stderr)
        return 1
    rows = dict(done)
    for part, _ in procs:
        rows.update(_done_rows(part))
    tmp = out.with_name(out.name + ".tmp")
    tmp.unlink(missing_ok=True)
    for index in sorted(rows):  # every row --out had, and the new ones, in prompt order
        append_jsonl(tmp, rows[index])
    tmp.replace(out)
    for part, _ in procs:
        part.unlink()
    model = json.loads(outputs[0].strip().splitlines()[-1])["model"]
    return _report(args, model, [rows[i] for i in chosen])


if __name__ == "__main__":
    sys.exit(main())
