"""`pasta annotate`: turn a source of instruction/response pairs into Pasta-Lang training data.

    pasta annotate --annotator structural --source sharegpt --out data/sft.jsonl
    pasta annotate --annotator openai --base-url http://localhost:8000/v1 --model Qwen/Qwen2.5-72B-Instruct \\
        --source sharegpt --out data/sft.jsonl --concurrency 32

The main CLI (pasta.cli) calls `add_annotate_parser(subparsers)`; the parsed args go to `run_annotate`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

__all__ = ["add_annotate_parser", "run_annotate", "add_distill_parser", "run_distill"]

log = logging.getLogger(__name__)


def add_annotate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "annotate",
        help="annotate instruction/response pairs with Pasta-Lang (LLM or rules)",
        description="Annotate responses with Pasta-Lang tags. Output rows: {id, prompt, response, annotated, "
        "source, annotator}; rejects go to a separate file with a reason. Reruns resume where they stopped.",
    )
    p.add_argument("--annotator", choices=("openai", "structural"), default="structural",
                   help="openai: an LLM behind an OpenAI-compatible server; structural: offline list/section rules")
    p.add_argument("--source", default="sharegpt",
                   help="'sharegpt' (bundled), a .jsonl file, or a folder saved with datasets.save_to_disk")
    p.add_argument("--out", required=True, type=Path, help="output JSONL (appended to; resumable)")
    p.add_argument("--rejects", type=Path, default=None, help="rejects JSONL (default: <out stem>.rejects.jsonl)")
    p.add_argument("--limit", type=int, default=None, help="annotate at most this many examples of the source")
    p.add_argument("--include-eval-prompts", action="store_true",
                   help="keep examples whose prompt is an AlpacaEval prompt (dropped by default)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer for the `tokens` attribute: a HF folder, a .gguf file, or 'default' (the embedded "
                   "model); default: a tokenizer-free approximation")
    p.add_argument("--structural-version", type=int, choices=(1, 2, 3, 4, 5), default=2,
                   help="structural annotator rules: 2 (default: at most 6 chunks, markers in the main thread, "
                   "distinct topics), 3 (2, with items grouped into ~60-token chunks and short topics), 4 (2, with "
                   "counted topics: '2/3 Exercise'), 5 (4, with an outline line before each list: 'Overview: A; B.') "
                   "or 1 (the first version: a chunk per list item)")
    p.add_argument("--counted-topics", action="store_true",
                   help="structural: every topic opens with its place in its list ('2/3 ...'), with any version")
    p.add_argument("--max-chunks", type=int, default=None, help="structural: at most this many chunks per answer")
    p.add_argument("--target-chunk-tokens", type=int, default=None,
                   help="structural: group list items into chunks of about this many tokens")
    g = p.add_argument_group("openai annotator")
    g.add_argument("--base-url", default=None, help="e.g. http://localhost:8000/v1 (vLLM, SGLang, llama.cpp, hosted)")
    g.add_argument("--model", default=None, help="model name as the server knows it")
    g.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    g.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--max-tokens", type=int, default=None, help="cap on the annotator's reply length")
    g.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    g.add_argument("--max-retries", type=int, default=4, help="retries on 429/5xx/connection errors")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_annotate)
    return p


def _rejects_path(out: Path, rejects: Path | None) -> Path:
    if rejects is not None:
        return rejects
    name = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(f"{name}.rejects.jsonl")


def run_annotate(args: argparse.Namespace) -> int:
    """Runs one annotate command; returns the exit status (0 on success, 2 on bad arguments)."""
    from pasta.data.finalize import load_token_counter
    from pasta.data.sources import SourceStats, load_examples

    if args.annotator == "openai" and (not args.base_url or not args.model):
        print("error: --annotator openai needs --base-url and --model", file=sys.stderr)
        return 2
    if args.limit is not None and args.limit < 0:
        print("error: --limit must be >= 0", file=sys.stderr)
        return 2
    rejects = _rejects_path(args.out, args.rejects)
    count_tokens = load_token_counter(args.tokenizer)
    stats_src = SourceStats()
    examples = list(load_examples(args.source, limit=args.limit, exclude_eval=not args.include_eval_prompts,
                                  stats=stats_src))
    progress = not getattr(args, "no_progress", False)
    if not examples and stats_src.skipped:  # nothing usable: say so, and fail (a script must not carry on)
        first = stats_src.bad[0]
        print(f"error: every one of the {stats_src.rows} rows of {args.source} is bad ({stats_src.skipped} skipped); "
              f"first: {first}", file=sys.stderr)
        return 2

    if args.annotator == "structural":
        from pasta.data.annotate_structural import StructuralConfig, annotate_structural_examples

        version = getattr(args, "structural_version", 2)
        overrides = {k: v for k in ("max_chunks", "target_chunk_tokens")
                     if (v := getattr(args, k, None)) is not None}
        if getattr(args, "counted_topics", False):
            overrides["counted_topics"] = True
        config = {1: StructuralConfig.v1, 2: StructuralConfig, 3: StructuralConfig.v3,
                  4: StructuralConfig.v4, 5: StructuralConfig.v5}[version](**overrides)
        stats = annotate_structural_examples(examples, args.out, rejects, count_tokens=count_tokens,
                                             config=config, progress=progress)
    else:
        from pasta.data.annotate_llm import annotate_llm
        from pasta.openai_client import OpenAIClient

        client = OpenAIClient(args.base_url, api_key_env=args.api_key_env, timeout=args.timeout,
                              max_retries=args.max_retries)
        stats = annotate_llm(examples, client, args.model, args.out, rejects, args.concurrency,
                             count_tokens=count_tokens, temperature=args.temperature, max_tokens=args.max_tokens,
                             progress=progress)
    print(f"source {args.source}: {stats_src.rows} rows, {stats_src.skipped} bad rows skipped, "
          f"{stats_src.excluded_eval} eval prompts excluded")
    print(f"annotate: {stats.summary()}")
    print(f"output: {args.out}\nrejects: {rejects}")
    if stats.total and not stats.accepted and not stats.skipped_done:
        print(f"error: no example was accepted ({stats.rejected} rejected; reasons in {rejects})", file=sys.stderr)
        return 2
    return 0


def add_distill_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "distill",
        help="answer training prompts with the base model (self-distillation targets for Stage 1)",
        description="Greedy answers of the base model (no adapter) to a source's prompts, decoded with continuous "
        "batching. Output rows: {id, prompt, response, source, finish, tokens, repetition}; a rerun skips prompts "
        "already answered. --kept writes the answers worth training on (ended by EOS, little repetition) as a "
        "prompt/response JSONL for `pasta annotate --source`.",
    )
    p.add_argument("--source", default="sharegpt", help="'sharegpt' (bundled), a .jsonl file, or a datasets folder")
    p.add_argument("--out", required=True, type=Path, help="output JSONL of every answer (appended to; resumable)")
    p.add_argument("--kept", type=Path, default=None, help="also write the kept answers to this JSONL")
    p.add_argument("--limit", type=int, default=None, help="answer at most this many distinct prompts")
    p.add_argument("--shuffle-seed", type=int, default=None, help="shuffle the source's prompts before --limit")
    p.add_argument("--instructions-only", action="store_true",
                   help="only short, self-contained one-line questions and instructions (no code, no earlier turn)")
    p.add_argument("--list-share", type=float, default=None,
                   help="with --limit: this share of the prompts is list-like (tips, examples, reasons, ...)")
    p.add_argument("--model", default=None, help="base model (default: the embedded SmolLM2)")
    p.add_argument("--max-new-tokens", type=int, default=400)
    p.add_argument("--max-prompt-tokens", type=int, default=200)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-repetition", type=float, default=0.1, help="kept answers repeat at most this share of word 4-grams")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_distill)
    return p


def run_distill(args: argparse.Namespace) -> int:
    from pasta.data.distill import DistillConfig, choose_prompts, distill, write_kept
    from pasta.data.sources import SourceStats, load_examples

    if args.limit is not None and args.limit < 0:
        print("error: --limit must be >= 0", file=sys.stderr)
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    config = DistillConfig(max_new_tokens=args.max_new_tokens, max_prompt_tokens=args.max_prompt_tokens,
                           max_batch=args.max_batch, dtype=args.dtype, max_repetition=args.max_repetition)
    stats_src = SourceStats()
    examples = choose_prompts(load_examples(args.source, stats=stats_src), instructions_only=args.instructions_only,
                              shuffle_seed=args.shuffle_seed, limit=args.limit, list_share=args.list_share)
    stats = distill(examples, args.out, config, model=args.model, progress=not args.no_progress)
    print(f"source {args.source}: {stats_src.rows} rows, {stats_src.excluded_eval} eval prompts excluded")
    print(f"distill: {stats.summary()}")
    if args.kept:
        print(f"kept: {write_kept(args.out, args.kept, config)} answers -> {args.kept}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (`python -m pasta.data.cli annotate ...`) until the main CLI wires it in."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="pasta")
    sub = parser.add_subparsers(dest="command", required=True)
    add_annotate_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
