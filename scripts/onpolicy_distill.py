"""On-policy self-distillation data for the default model (see pasta.data.onpolicy): the model's own greedy answers
(guards on) to ShareGPT instructions, then the kept ones as SFT rows.

    python scripts/onpolicy_distill.py --limit 640 --out data/onpolicy-r16.jsonl --kept data/sft-onpolicy-r16.jsonl

With --fallback-out/--fallback-kept it also answers, with the base model and no tags, every prompt on which the model
forked and a guard stepped in, and writes those plain answers as SFT rows (a target that says "do not fork here").
"""

from __future__ import annotations

import argparse
import json
import sys

from pasta.data.distill import choose_prompts
from pasta.data.onpolicy import OnPolicyConfig, generate, guarded_fork_prompts, kept_rows, plain_fallback_rows
from pasta.data.sources import load_examples


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="sharegpt")
    p.add_argument("--limit", type=int, default=640)
    p.add_argument("--shuffle-seed", type=int, default=1)
    p.add_argument("--list-share", type=float, default=0.7)
    p.add_argument("--adapter", default=None, help="default: the embedded adapter")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", required=True, help="every answer (appended; a rerun resumes)")
    p.add_argument("--kept", help="write the answers worth training on here (SFT rows)")
    p.add_argument("--kept-only", action="store_true", help="only rebuild --kept from --out")
    p.add_argument("--clean-only", action="store_true", help="keep no answer a guard corrected (OnPolicyConfig)")
    p.add_argument("--one-item-per-chunk", action="store_true",
                   help="keep no forked answer whose chunk goes on to a further numbered item")
    p.add_argument("--forked-only", action="store_true",
                   help="write only the kept answers that fork (an earlier round's plain answers are already learnt)")
    p.add_argument("--min-fork-speedup", type=float, default=1.0,
                   help="keep forked answers with at least this plain-text speedup (default 1.0: all)")
    p.add_argument("--guarded-prompts-of", metavar="ANSWERS",
                   help="answer only the prompts on which an earlier run (its --out) forked and a guard stepped in "
                        "(the first --limit of them, in that run's order)")
    p.add_argument("--samples", type=int, default=1, help="answers per prompt (needs --temperature > 0)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--sample-seed", type=int, default=0)
    p.add_argument("--best-per-prompt", action="store_true",
                   help="keep at most one answer per prompt: its fastest kept fork, else a kept plain one")
    p.add_argument("--drop-evasive", action="store_true",
                   help="keep no answer that declines or stalls in its first sentences (pasta.data.onpolicy.EVASIVE)")
    p.add_argument("--fallback-out", help="plain base-model answers to the guarded-fork prompts (appended; resumes)")
    p.add_argument("--fallback-kept", help="write those plain answers as SFT rows here (needs --fallback-out)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.fallback_kept and not args.fallback_out:
        p.error("--fallback-kept needs --fallback-out (where the plain answers are)")
    config = OnPolicyConfig(max_new_tokens=args.max_new_tokens, max_batch=args.max_batch,
                            keep_guarded=not args.clean_only, min_fork_speedup=args.min_fork_speedup,
                            one_item_per_chunk=args.one_item_per_chunk, keep_plain=not args.forked_only,
                            drop_evasive=args.drop_evasive, samples=args.samples, temperature=args.temperature,
                            top_p=args.top_p, seed=args.sample_seed, best_per_prompt=args.best_per_prompt)
    if not args.kept_only:
        import torch

        from pasta.interpreter import Interpreter

        if args.threads:
            torch.set_num_threads(args.threads)
        if args.guarded_prompts_of:
            examples = guarded_fork_prompts(args.guarded_prompts_of)[: args.limit]
        else:
            examples = choose_prompts(load_examples(args.source), instructions_only=True,
                                      shuffle_seed=args.shuffle_seed, limit=args.limit, list_share=args.list_share)
        interp = Interpreter.from_pretrained(adapter=args.adapter or True)
        stats = generate(interp, examples, args.out, config, progress=not args.no_progress)
        print(f"on-policy: {stats.summary()}")
    if args.kept:
        rows, reasons = kept_rows(args.out, config)
        with open(args.kept, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"kept {len(rows)} -> {args.kept}; {json.dumps(reasons, sort_keys=True)}")
    if args.fallback_out:
        prompts = guarded_fork_prompts(args.out)
        if not args.kept_only:
            from pasta.data.distill import DistillConfig, distill

            stats = distill(prompts, args.fallback_out, DistillConfig(max_new_tokens=400, max_batch=32),
                            progress=not args.no_progress)
            print(f"plain fallback for {len(prompts)} guarded-fork prompts: {stats.summary()}")
        if args.fallback_kept:
            rows = plain_fallback_rows(args.fallback_out, drop_evasive=args.drop_evasive)
            with open(args.fallback_kept, "w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
            print(f"kept {len(rows)} plain answers of {len(prompts)} guarded-fork prompts -> {args.fallback_kept}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
