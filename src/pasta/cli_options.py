"""Command-line options shared by `pasta generate`, `pasta serve`, `pasta eval` and the bench scripts: one
definition (name, default, help) each, and one place that turns them into configs."""

from __future__ import annotations

import argparse

from .decoding import DecodeLimits
from .sampling import SamplingParams
from .threads import ThreadGovernor, parse_threads


def add_model_options(p: argparse.ArgumentParser, *, dtype: str = "auto", compile: bool = True) -> None:
    p.add_argument("--model", default=None, help="Hugging Face folder, .gguf file, or adapter folder (default: embedded)")
    p.add_argument("--adapter", default=None, help="a PEFT adapter to apply (default: the embedded Pasta adapter)")
    p.add_argument("--no-adapter", action="store_true", help="the base model only, no Pasta adapter")
    p.add_argument("--dtype", default=dtype, help="float32 | bfloat16 | auto (bf16 where the hardware has fast bf16)")
    if compile:
        p.add_argument("--compile", action="store_true",
                       help="torch.compile the forward pass (faster steps after a compilation of minutes on CPU)")
        p.add_argument("--cuda-graphs", action="store_true",
                       help="replay decode steps from CUDA graphs (GPU; query buckets 1-16, prefill stays eager)")
        add_quantize_option(p)


def add_quantize_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quantize", choices=["int4"], default=None,
                   help="int4: 4-bit weights on the CPU (groups of 32, as GGUF Q4_1; the output head 8-bit; a LoRA "
                        "adapter kept beside them): about a third of the bf16 step on a small model")


def adapter_from_args(args) -> str | bool:
    """False (no adapter), a path, or True (the embedded default adapter)."""
    return False if args.no_adapter else (args.adapter or True)


def add_limit_options(p: argparse.ArgumentParser, *, max_new_tokens: bool = True) -> None:
    """`DecodeLimits` budgets (`max_new_tokens` is left out where the request carries it, e.g. the server)."""
    if max_new_tokens:
        p.add_argument("--max-new-tokens", type=int, default=512, help="sampled tokens of the answer, all threads")
    p.add_argument("--max-thread-tokens", type=int, default=256, help="sampled tokens of one async chunk")
    p.add_argument("--max-threads", type=int, default=8, help="async chunks decoding at the same time")
    add_outline_topics_option(p)
    add_penalty_options(p)
    add_draft_option(p)


def add_draft_option(p: argparse.ArgumentParser) -> None:
    """`--draft-promises` / `--no-draft-promises` (DecodeLimits.draft_promises, on by default)."""
    p.add_argument("--draft-promises", action=argparse.BooleanOptionalAction, default=True,
                   help="draft each next promise line of a counted list from the previous one and let the model check "
                        "it in one forward pass (exact: the same answer in fp32; default: on)")
    p.add_argument("--draft-tokens", type=int, default=None,
                   help="the token count drafted for a list's first promise (default: as the model records in "
                        "pasta_decoding.json, else none)")


def add_penalty_options(p: argparse.ArgumentParser) -> None:
    """`--presence-penalty` / `--frequency-penalty` (DecodeLimits; unset: as the model records, else 0)."""
    for name in ("presence", "frequency"):
        p.add_argument(f"--{name}-penalty", type=float, default=None,
                       help=f"OpenAI's {name}_penalty in [-2, 2], on the words each thread wrote itself (tags, numbers "
                            "and punctuation exempt; default: as the model records in pasta_decoding.json, else 0)")


def add_outline_topics_option(p: argparse.ArgumentParser) -> None:
    """`--outline-topics` / `--no-outline-topics`; unset (None): as the model records (DecodeLimits.outline_topics)."""
    p.add_argument("--outline-topics", action=argparse.BooleanOptionalAction, default=None,
                   help="feed each promise's topic from the outline line before it (models trained on annotator v5; "
                        "default: as the model records in pasta_decoding.json)")
    p.add_argument("--outline-terminated", action=argparse.BooleanOptionalAction, default=None,
                   help="the model ends each outline item with ';' ('Overview: Diet; Sleep;'), which the outline guard "
                        "keeps (default: as the model records in pasta_decoding.json)")
    p.add_argument("--outline-no-repeat", action=argparse.BooleanOptionalAction, default=None,
                   help="ban the token that would make an outline item an exact copy of an earlier one (default: as "
                        "the model records in pasta_decoding.json)")


def limits_from_args(args) -> DecodeLimits:
    return DecodeLimits.from_options(args, max_new_tokens=getattr(args, "max_new_tokens", DecodeLimits.max_new_tokens),
                                     max_thread_tokens=args.max_thread_tokens, max_threads=args.max_threads)


def add_sampling_options(p: argparse.ArgumentParser, *, seed: int | None = None) -> None:
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=seed, help="random seed of the sampler (per-thread streams)")


def sampling_from_args(args, *, seed: int | None = None) -> SamplingParams:
    return SamplingParams(temperature=args.temperature, top_p=args.top_p, seed=args.seed if seed is None else seed)


def _threads(value: str) -> int | str | None:
    try:
        return parse_threads(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_threads_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=_threads, default="auto",
                   help="torch CPU threads: N, 'auto' (default: one per core other processes leave free, re-checked "
                        "while running) or 'torch' (torch's own default, one per core)")


def apply_threads(args, *, interval_s: float = 5.0) -> ThreadGovernor:
    """Set torch's thread count from `--threads`; long-running callers `tick()` the governor between steps."""
    return ThreadGovernor(args.threads, interval_s=interval_s)
