"""Arguments of `pasta train pref` (stage 2). Wired by `pasta.train.cli`: `add_pref_arguments(parser)` and
`run_pref(args)`; also runnable as `python -m pasta.train.pref_cli ...` (and under torchrun / accelerate launch)."""

from __future__ import annotations

import argparse
import json
import math
import sys


def add_pref_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (samples, pairs, adapters per round); rerun to resume")
    p.add_argument("--prompts", default="sharegpt",
                   help="training prompts: 'sharegpt', a .jsonl file or a datasets folder (AlpacaEval prompts are "
                        "always dropped)")
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--model", default=None, help="base model folder or .gguf (default: the embedded SmolLM2)")
    p.add_argument("--adapter", default=None, help="stage-1 adapter to start from (default: the embedded one)")
    p.add_argument("--no-adapter", action="store_true", help="start from the base model")
    p.add_argument("--n", "--n-samples", dest="n_samples", type=int, default=10, help="samples per prompt")
    p.add_argument("--lambda", dest="lam", type=float, default=1.0,
                   help="score = theoretical speedup + lambda * quality ('inf': quality first)")
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the NLL term (1 - alpha: IPO term)")
    p.add_argument("--beta", type=float, default=0.1, help="IPO target margin is 1/(2 beta)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--max-thread-tokens", type=int, default=256)
    p.add_argument("--max-threads", type=int, default=8)
    p.add_argument("--full", action="store_true", help="train all parameters instead of LoRA")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--grad-accum", type=int, default=4)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--judge", choices=["local", "openai", "none"], default="local")
    p.add_argument("--judge-model", default=None)
    p.add_argument("--judge-base-url", default=None)
    p.add_argument("--judge-api-key-env", default="OPENAI_API_KEY")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--pairs", default=None,
                   help="train one round on these pairs (.jsonl: prompt, chosen, rejected[, chosen_truncated, "
                        "rejected_truncated]) "
                        "instead of sampling, e.g. scripts/correction_pairs.py's output")


def run_pref(args: argparse.Namespace) -> int:
    from .pref import PrefConfig, train_pref

    adapter = False if args.no_adapter else (args.adapter or True)
    config = PrefConfig(
        output_dir=args.out, prompts=args.prompts, num_prompts=args.num_prompts, model=args.model, adapter=adapter,
        n_samples=args.n_samples, lam=args.lam if not math.isinf(args.lam) else math.inf, alpha=args.alpha,
        beta=args.beta, rounds=args.rounds, temperature=args.temperature, top_p=args.top_p,
        max_new_tokens=args.max_new_tokens, max_thread_tokens=args.max_thread_tokens, max_threads=args.max_threads,
        lora=not args.full, lora_r=args.lora_r, lora_alpha=args.lora_alpha, learning_rate=args.lr,
        epochs=args.epochs, batch_size=args.batch_size, grad_accum=args.grad_accum, max_length=args.max_length,
        judge=args.judge, judge_model=args.judge_model, judge_base_url=args.judge_base_url,
        judge_api_key_env=args.judge_api_key_env, seed=args.seed, torch_threads=args.threads,
        pairs=args.pairs,
    )
    report = train_pref(config)
    print(json.dumps(report, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pasta train pref")
    add_pref_arguments(parser)
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run_pref(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"pasta train pref: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
