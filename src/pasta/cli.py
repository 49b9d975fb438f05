"""`pasta` command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .backends.openai import add_backend_args, generate_from_args
from .cli_options import (
    adapter_from_args, add_limit_options, add_model_options, add_sampling_options, add_threads_option, apply_threads,
    limits_from_args, sampling_from_args,
)
from .data.cli import add_annotate_parser, add_distill_parser
from .eval.cli import add_eval_parser
from .serve.cli import add_serve_parser
from .train.cli import add_train_parser


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="answer a prompt with asynchronous decoding")
    p.add_argument("prompt", help="the user message (chat template applied when the model has one)")
    add_model_options(p)
    p.add_argument("--sequential", action="store_true", help="decode chunks one after another (same answer, no parallelism)")
    p.add_argument("--teacher", default=None, help="file with an annotated response to force (measures speed only)")
    add_limit_options(p)
    add_sampling_options(p)
    add_threads_option(p)
    p.add_argument("--raw", action="store_true", help="no chat template: the prompt is the text itself")
    p.add_argument("--json", action="store_true", help="print one JSON object (text, annotated, stats)")
    p.add_argument("--compare", action="store_true",
                   help="also decode sequentially (same answer) and report the measured wall-clock speedup")
    p.add_argument("--show-tags", action="store_true", help="print the annotated answer (with Pasta-Lang tags)")
    p.add_argument("--backend", choices=["local", "openai"], default="local",
                   help="local: this process's interpreter; openai: drive an OpenAI-compatible completions server")
    add_backend_args(p)
    p.set_defaults(func=_run_generate)


def _read_teacher(path: str) -> str:
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--teacher {path}: {'is a folder' if p.is_dir() else 'no such file'}; expected a text file "
                         "holding an annotated answer")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"--teacher {path}: not UTF-8 text (byte {exc.start})") from None


def _run_generate(args) -> int:
    from .interpreter import Interpreter

    if args.backend == "openai":
        return _print_remote(generate_from_args(args), args)
    limits = limits_from_args(args)
    seed = args.seed
    if seed is None and args.compare and args.temperature > 0:  # one seed for both runs: the same answer, sampled
        import random

        seed = random.getrandbits(63)
    sampling = sampling_from_args(args, seed=seed)
    teacher = _read_teacher(args.teacher) if args.teacher else None  # before the model loads: fail fast
    apply_threads(args)
    interp = Interpreter.from_pretrained(args.model, dtype=args.dtype, adapter=adapter_from_args(args), limits=limits,
                                         compile=args.compile, cuda_graphs=args.cuda_graphs, quantize=args.quantize)
    result = interp.generate(
        args.prompt, sampling=sampling, mode="sequential" if args.sequential else "async", teacher=teacher,
        chat=not args.raw,
    )
    sequential = None
    if args.compare and not args.sequential:
        sequential = interp.generate(args.prompt, sampling=sampling, mode="sequential", teacher=teacher,
                                     chat=not args.raw)
    if args.json:
        out = result.to_dict()
        out["model"] = interp.name
        if sequential is not None:
            out["sequential_wall_s"] = sequential.stats.wall_s
            out["wall_speedup"] = sequential.stats.wall_s / max(result.stats.wall_s, 1e-9)
            out["same_answer"] = sequential.annotated == result.annotated
            out["seed"] = seed
        print(json.dumps(out, ensure_ascii=False))
        return 0
    s = result.stats
    plain = len(interp.tokenizer.encode(result.text, add_special_tokens=False)) if result.text else 0
    print(result.annotated if args.show_tags else result.text)
    print(
        f"\n[{interp.name} | {s.mode}: {s.tokens} tokens ({plain} of plain text"
        f"{f', {s.drafted} confirmed from promise drafts' if s.drafted else ''}) in {s.steps} steps, {s.threads} "
        f"parallel chunks, theoretical speedup {(plain + 1) / max(1, s.steps):.2f}x on plain text, {s.wall_s:.1f}s, "
        f"finish: {s.finish_reason}{', guards: ' + str(len(s.guards)) if s.guards else ''}]",
        file=sys.stderr,
    )
    if sequential is not None:
        same = sequential.annotated == result.annotated
        print(f"[sequential decoding{' (seed ' + str(seed) + ')' if seed is not None else ''}: "
              f"{'the same answer' if same else 'a different answer (rounding differs between the modes)'}, "
              f"{sequential.stats.wall_s:.1f}s -> measured speedup {sequential.stats.wall_s / max(s.wall_s, 1e-9):.2f}x]",
              file=sys.stderr)
    if s.warnings:
        print("warnings: " + "; ".join(s.warnings), file=sys.stderr)
    return 0


def _print_remote(result, args) -> int:
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
        return 0
    s = result.stats
    print(result.text)
    print(f"\n[remote: {s.tokens} tokens, {s.remote.requests} requests, {s.threads} parallel chunks, "
          f"peak concurrency {s.remote.peak_concurrency}, critical path {s.critical_path} steps, {s.wall_s:.1f}s]",
          file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pasta", description="PASTA: learned asynchronous decoding")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    add_annotate_parser(sub)
    add_distill_parser(sub)
    add_train_parser(sub)
    add_serve_parser(sub)
    add_eval_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request would bury the progress lines
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"pasta {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # unreadable path (a folder, no permission): name it, no traceback
        print(f"pasta {args.command}: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
