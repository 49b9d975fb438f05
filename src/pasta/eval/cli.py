"""`pasta eval`: wire with `add_eval_parser(subparsers)` in pasta.cli (or run `python -m pasta.eval.cli ...`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..cli_options import (
    adapter_from_args, add_limit_options, add_model_options, add_sampling_options, add_threads_option, apply_threads,
)
from ..backends.openai import add_backend_args
from .runner import SYSTEMS, EvalConfig


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", default="alpaca_eval", help="'alpaca_eval' (805 instructions) or a .jsonl/.json file")
    p.add_argument("--limit", type=int, default=None, help="the first N prompts")
    p.add_argument("--out", default="results/eval/run", help="output folder; rerun the same command to resume")
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated subset of {','.join(SYSTEMS)} "
                   "(sequential is always added: it is the speed reference)")
    p.add_argument("--baseline", default="sequential", help="system the judge compares every other system against")
    add_model_options(p, dtype="float32", compile=False)
    p.add_argument("--backend", choices=["local", "openai"], default="local",
                   help="local: decode in this process; openai: the systems are served by an OpenAI-compatible server "
                        "(vLLM, SGLang, pasta serve), driven through the remote backend")
    add_backend_args(p, evaluation=True)
    p.add_argument("--remote-original-model", default=None,
                   help="--backend openai: the original model's id on the server, for the original and sot systems")
    p.add_argument("--concurrency", type=int, default=1,
                   help="--backend openai: answers in flight at once (the server batches them): throughput for large "
                        "prompt sets; wall times are then measured under load (default 1: batch size 1)")
    p.add_argument("--original-base-url", default=None,
                   help="--backend openai: the server of --remote-original-model, when not --base-url (e.g. a second "
                        "pasta serve --no-adapter)")
    add_limit_options(p)
    add_sampling_options(p, seed=0)
    p.add_argument("--sot-skeleton-tokens", type=int, default=128)
    p.add_argument("--sot-max-points", type=int, default=10)
    p.add_argument("--judge", choices=["openai", "local", "none"], default="none",
                   help="openai: any OpenAI-compatible endpoint; local: a local HF model (weak); none: speed only")
    p.add_argument("--judge-base-url", default=None, help="endpoint of --judge openai, e.g. http://localhost:8000/v1")
    p.add_argument("--judge-model", default=None,
                   help="openai: the served model name; local: a model folder/.gguf (default: the embedded model)")
    p.add_argument("--judge-api-key-env", default="OPENAI_API_KEY")
    p.add_argument("--judge-concurrency", type=int, default=8, help="parallel judge requests (openai)")
    p.add_argument("--no-logprobs", action="store_true", help="do not ask the endpoint for logprobs")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the speedup intervals")
    p.add_argument("--compare", action="append", default=[], metavar="LABEL=SUMMARY.json",
                   help="draw another run's points on the Pareto plot (repeatable)")
    p.add_argument("--no-plots", action="store_true")
    add_threads_option(p)
    p.add_argument("--json", action="store_true", help="print the summary JSON")
    p.add_argument("--quiet", action="store_true")


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help="evaluate speed and quality (AlpacaEval-style) against baselines")
    add_eval_arguments(p)
    p.set_defaults(func=run_eval_command)
    return p


def build_judge(args, systems=None):
    if args.judge == "none":
        return None
    if args.judge == "openai":
        from ..openai_client import OpenAIClient
        from .judge import OpenAIJudge

        if not args.judge_base_url or not args.judge_model:
            raise ValueError("--judge openai needs --judge-base-url and --judge-model")
        client = OpenAIClient(args.judge_base_url, api_key_env=args.judge_api_key_env)
        return OpenAIJudge(client, args.judge_model, logprobs=not args.no_logprobs)
    from .judge import LocalJudge

    if args.judge_model is None and systems is not None and args.backend == "local":  # reuse the loaded base model
        interp = systems.original
        return LocalJudge(interp.model, interp.tokenizer, name=interp.name)
    from ..models import load_model

    loaded = load_model(args.judge_model, dtype=args.dtype, adapter=False)
    return LocalJudge(loaded.model, loaded.tokenizer, name=loaded.name)


def config_from_args(args) -> EvalConfig:
    adapter = adapter_from_args(args)
    return EvalConfig(
        out=args.out, prompts=args.prompts, limit=args.limit,
        systems=tuple(s.strip() for s in args.systems.split(",") if s.strip()), baseline=args.baseline,
        model=args.model, adapter=adapter, dtype=args.dtype, max_new_tokens=args.max_new_tokens,
        max_thread_tokens=args.max_thread_tokens, max_threads=args.max_threads, temperature=args.temperature,
        top_p=args.top_p, seed=args.seed, sot_skeleton_tokens=args.sot_skeleton_tokens,
        sot_max_points=args.sot_max_points, bootstrap=args.bootstrap, plots=not args.no_plots,
        outline_topics=args.outline_topics, outline_terminated=args.outline_terminated,
        outline_no_repeat=args.outline_no_repeat,
        presence_penalty=args.presence_penalty,
        frequency_penalty=args.frequency_penalty, draft_promises=args.draft_promises, draft_tokens=args.draft_tokens,
        backend=args.backend, base_url=args.base_url, remote_model=args.remote_model,
        remote_original_model=args.remote_original_model, original_base_url=args.original_base_url,
        tokenizer=args.tokenizer, concurrency=args.concurrency,
    )


def run_eval_command(args) -> int:
    from ..jsonl import read_json
    from .prompts import load_prompts
    from .runner import check_run_config, load_systems, run_eval

    governor = apply_threads(args)
    config = config_from_args(args)
    compare = []
    for spec in args.compare:
        label, _, path = spec.partition("=")
        if not path:
            label, path = Path(spec).parent.name, spec
        summary = read_json(path, "summary.json of an earlier `pasta eval` run")
        if not isinstance(summary, dict):
            raise ValueError(f"{path}: expected the summary.json object of an earlier `pasta eval` run")
        compare.append((label, summary))
    items = load_prompts(config.prompts, config.limit)  # bad prompt files fail before any model loads
    check_run_config(Path(config.out), config)
    systems = load_systems(config)
    judge = build_judge(args, systems)
    def progress(msg: str) -> None:  # called after every generation: also re-checks the free cores
        governor.tick()
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    summary = run_eval(config, systems=systems, judge=judge, judge_concurrency=args.judge_concurrency if args.judge == "openai" else 1,
                       items=items, progress=progress, compare=compare)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"wrote {config.out}/summary.json, report.md, per_prompt.jsonl, model_outputs/", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pasta eval")
    add_eval_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_eval_command(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"pasta eval: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
