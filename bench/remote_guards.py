"""The default model through the remote backend, with and without its runtime guards, on the same prompts.

    python bench/remote_guards.py --json --limit 20          # AlpacaEval 0-19, ~25 min on this CPU

A `pasta serve --sequential` subprocess (the embedded default model, adapter included) plays the engine. It is made
a plain engine - no outline topics, no presence penalty, no outline ban of its own (each request stops at a tag, so
its per-request guards never meet two promises) - and it reports the matched stop string as vLLM does. Each prompt
is answered twice through `--backend openai`: with the guards and outline conventions the model records
(`RemoteConfig(outline_topics=True)`), and with `guards=False`, the backend before 2026-12-06, which passed the
model's text through as written. Per answer: how it ended (EOS, a guard, the token cap), the guards that fired,
chunks, requests, completion tokens, the repetition rate of the plain text. Rows are appended to `--out` as they are
measured (a rerun resumes), and the summary compares the two columns side by side.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

from pasta.backends.openai import RemoteConfig, RemoteInterpreter
from pasta.data.sources import alpaca_eval_prompts
from pasta.eval.answer_stats import duplicate_chunks, repeated_outline_items, repetition_rate
from pasta.lang import to_structure, topic_key
from pasta.jsonl import append_jsonl, read_keyed
from pasta.models import resolve_model_path

RESULTS = Path(__file__).resolve().parents[1] / "results" / "bench"
MODES = {"guarded": {"outline_topics": True}, "unguarded": {"guards": False}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(port: int, threads: int, log: Path) -> subprocess.Popen:
    server = subprocess.Popen(
        ["pasta", "serve", "--sequential", "--port", str(port), "--threads", str(threads), "--no-outline-topics",
         "--no-outline-no-repeat", "--presence-penalty", "0"],
        stdout=subprocess.DEVNULL, stderr=log.open("w"))
    for _ in range(300):
        if server.poll() is not None:
            raise RuntimeError(f"pasta serve exited with {server.returncode}; see {log}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2)
            return server
        except httpx.TransportError:
            time.sleep(1)
    server.terminate()
    raise RuntimeError(f"pasta serve did not answer within 300 s; see {log}")


def measure(index: int, instruction: str, mode: str, url: str, tokenizer: str, max_new_tokens: int) -> dict:
    config = RemoteConfig(base_url=url, max_new_tokens=max_new_tokens, max_thread_tokens=max_new_tokens,
                          tokenizer=tokenizer, **MODES[mode])
    started = time.perf_counter()
    result = RemoteInterpreter(config).generate(instruction)
    stats = result.stats
    return {
        "key": f"{index}:{mode}", "index": index, "mode": mode, "instruction": instruction,
        "finish_reason": stats.finish_reason, "complete": stats.finish_reason in ("eos", "guard"),
        "guards": stats.guards, "chunks": stats.threads, "requests": stats.remote.requests,
        "completion_tokens": stats.tokens, "outline_topics_fed": stats.outline_topics_fed,
        "repetition": round(repetition_rate(result.text), 4), "wall_s": round(time.perf_counter() - started, 2),
        "warnings": stats.warnings, "text": result.text, "annotated": result.annotated,
    }


def shape(annotated: str) -> dict:
    """What the answer the user gets carries, read as `pasta.eval.answer_stats` reads it: promises whose topic repeats
    an earlier one (delivered ones only: a refused promise left no trace), outline items that repeat an earlier item
    of their line, chunks near-equal to an earlier chunk."""
    structure = to_structure(annotated)
    keys = [topic_key(c.topic) for c in structure.chunks if c.promise_raw]
    return {"repeated_topics": len(keys) - len(set(keys)),
            "repeated_outline_items": repeated_outline_items(structure.main_thread_text()),
            "duplicate_chunks": duplicate_chunks([c.body for c in structure.chunks])}


def summarize(rows: list[dict]) -> dict:
    out = {}
    for mode in MODES:
        mine = [r for r in rows if r["mode"] == mode]
        forks = [r for r in mine if r["chunks"]]
        shapes = [shape(r["annotated"]) for r in forks]
        n = len(mine) or 1
        out[mode] = {
            "answers": len(mine),
            "ended_by_eos": sum(r["finish_reason"] == "eos" for r in mine) / n,
            "ended_by_guard": sum(r["finish_reason"] == "guard" for r in mine) / n,
            "hit_token_cap": sum(r["finish_reason"] == "length" for r in mine) / n,
            "forking_answers": len(forks),
            "guards_fired_in_forks": sum(bool(r["guards"]) for r in forks),
            "guard_kinds": dict(Counter(g.split(":")[0] for r in forks for g in r["guards"]).most_common()),
            # in the answers as delivered: what a guard left there, or what went unguarded
            "forks_with_a_repeat_or_duplicate": sum(any(v for v in sh.values()) for sh in shapes),
            "repeated_topics": sum(sh["repeated_topics"] for sh in shapes),
            "repeated_outline_items": sum(sh["repeated_outline_items"] for sh in shapes),
            "duplicate_chunks": sum(sh["duplicate_chunks"] for sh in shapes),
            "chunks": sum(r["chunks"] for r in forks),
            "mean_completion_tokens": sum(r["completion_tokens"] for r in mine) / n,
            "mean_repetition": sum(r["repetition"] for r in mine) / n,
            "mean_requests": sum(r["requests"] for r in mine) / n,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--limit", type=int, default=20, help="AlpacaEval prompts 0..limit-1")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--threads", type=int, default=2, help="the server's CPU threads")
    p.add_argument("--out", type=Path, default=RESULTS / "remote_guards.jsonl")
    p.add_argument("--summary", type=Path, default=RESULTS / "remote_guards.json")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)

    prompts = alpaca_eval_prompts()[: a.limit]
    done = read_keyed(a.out, lambda row: row["key"]) if a.out.exists() else {}
    pending = [(k, mode) for k in range(len(prompts)) for mode in MODES if f"{k}:{mode}" not in done]
    if pending:  # a finished run re-reports without starting the server
        tokenizer = str(resolve_model_path(None)[1])  # the model's chat template, as the local interpreter uses
        port = _free_port()
        server = _serve(port, a.threads, a.out.with_suffix(".serve.log"))
        try:
            for k, mode in pending:
                row = measure(k, prompts[k], mode, f"http://127.0.0.1:{port}/v1", tokenizer, a.max_new_tokens)
                append_jsonl(a.out, row)
                done[row["key"]] = row
                print(f"[{k + 1}/{len(prompts)}] {mode:9s} {row['finish_reason']:6s} chunks {row['chunks']} "
                      f"guards {len(row['guards'])} tokens {row['completion_tokens']}", file=sys.stderr, flush=True)
        finally:
            server.terminate()
            server.wait(30)
    rows = [done[f"{k}:{mode}"] for k in range(len(prompts)) for mode in MODES]
    summary = {"command": "python bench/remote_guards.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "prompts": f"alpaca_eval 0-{len(prompts) - 1}", "max_new_tokens": a.max_new_tokens,
               **summarize(rows)}
    a.summary.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1) if a.json else summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
