"""Stage 2 of PASTA: preference optimization for speed and quality (BoNBoN objective), in rounds.

Per round:
1. Sample: for each training prompt, `n_samples` annotated answers from the current policy through the
   interpreter (asynchronous decoding, temperature sampling).
2. Score: score = theoretical_speedup + lambda * quality, where theoretical_speedup = (plain-text tokens + 1) /
   critical path of the sample, 0 for a runaway answer (truncated, guarded, repeated topics or duplicate chunks:
   `sample_speedup`), and quality = the judge's preference (both orders averaged, in [0, 1]) for the sample's plain text
   over the *sequential answer*: the initial model's greedy answer decoded sequentially, computed once per prompt.
   lambda = inf ranks by quality, ties broken by speedup. Without a judge, quality is 0 (speed only).
3. Pairs: the best and the worst sample (skipped when every score ties), saved in TRL's shape
   (`prompt`, `chosen`, `rejected`; chosen/rejected are the annotated storage forms) with their scores.
4. Train: the BoNBoN loss

       L = alpha * (-log p(y+|x)) + (1 - alpha) * ((log p(y+) - log p(y-)) - (log p0(y+) - log p0(y-)) - 1/(2 beta))^2

   with sequence log-probabilities (sums over the answer's tokens) computed in the Pasta layout
   (`pasta.train.collator`: each token conditioned on exactly what it sees at inference), p0 the frozen initial
   model (with LoRA: the same network with the adapter disabled). AdamW on LoRA (peft) or on all parameters.

Resumable: everything lives in `output_dir` (`reference.jsonl`, `round-K/samples.jsonl` appended per prompt,
`round-K/pairs.jsonl`, `round-K/adapter|model`, `round-K/done.json`); a rerun skips finished prompts and rounds
and restarts an interrupted training phase from the round's start. Runs on CPU for small models; under
`torchrun`/`accelerate launch` each process samples a shard of the prompts and trains on a shard of the pairs,
gradients all-reduced (no DDP wrapper, so the layout code sees the plain model).

This module is the round loop (`PrefTrainer`); the objective and ranking are `pref_scoring`, the collectives
`dist`, and folding the Stage-2 LoRA into the Stage-1 one `lora_merge`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..eval.answer_stats import answer_stats
from ..jsonl import append_jsonl, jsonl_lines, read_rows
from ..settings import DecodeSettings
from .dist import barrier, rank_and_world
from .lora_merge import combine_lora_adapters
from .pref_scoring import bonbon_loss, sample_speedup, score_sample, select_pair

log = logging.getLogger(__name__)

__all__ = ["PrefConfig", "bonbon_loss", "combine_lora_adapters", "sample_speedup", "score_sample", "select_pair",
           "train_pref"]


@dataclass
class PrefConfig(DecodeSettings):
    output_dir: str
    prompts: str = "sharegpt"  # a training source for pasta.data.sources.load_examples (eval prompts dropped)
    num_prompts: int = 64
    model: str | None = None
    adapter: str | bool = True  # the stage-1 (SFT) adapter to start from; merged, it is the initial model p0
    n_samples: int = 10
    lam: float = 1.0
    alpha: float = 0.5
    beta: float = 0.1
    rounds: int = 1
    temperature: float = 1.0
    top_p: float = 0.95
    max_new_tokens: int = 512
    max_thread_tokens: int = 256
    max_threads: int = 8
    lora: bool = True
    lora_r: int = 8
    lora_alpha: int = 16
    learning_rate: float = 5e-5
    epochs: int = 1
    batch_size: int = 1
    grad_accum: int = 4
    max_length: int = 1024
    judge: str = "local"  # local | openai | none
    judge_model: str | None = None
    judge_base_url: str | None = None
    judge_api_key_env: str = "OPENAI_API_KEY"
    seed: int = 0
    torch_threads: int | None = None
    # Offline pairs (a .jsonl in TRL's shape: prompt, chosen, rejected; optional chosen_truncated/rejected_truncated
    # for a side cut off mid-answer, as `pasta.data.correction_pairs` writes): the round trains on them instead of
    # sampling.
    pairs: str | None = None

    def __post_init__(self) -> None:
        if self.n_samples < 2:
            raise ValueError(f"n_samples must be >= 2 (a best and a worst), got {self.n_samples}")
        if self.rounds < 1 or self.num_prompts < 1 or self.epochs < 1:
            raise ValueError("rounds, num_prompts and epochs must be >= 1")
        if not (self.lam >= 0):
            raise ValueError(f"lambda must be >= 0 (inf allowed), got {self.lam}")
        bonbon_loss(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), self.alpha, self.beta)
        if self.judge not in ("local", "openai", "none"):
            raise ValueError(f"judge must be local, openai or none, got {self.judge!r}")
        if self.pairs is not None and self.rounds != 1:
            raise ValueError(f"offline pairs train one round; got rounds={self.rounds}")
        self.validate_decode_settings()


# ---- the trainer ---------------------------------------------------------------------------------------------------


class PrefTrainer:
    """Holds the policy (and reference), the tokenizer, the judge; runs rounds. Built by `train_pref`, or directly
    with a model and tokenizer (tests)."""

    def __init__(self, config: PrefConfig, model, tokenizer, *, judge=None, layout_config=None,
                 device: str | torch.device | None = None, stage1_adapter: str | Path | None = None,
                 decoding_defaults: dict | None = None) -> None:
        from ..layout import LayoutConfig

        self.config = config
        # the LoRA adapter already merged into `model` (the initial model p0); saved rounds fold it in
        self.stage1_adapter = Path(stage1_adapter) if stage1_adapter else None
        self.tokenizer = tokenizer
        self.judge = judge
        self.layout_config = layout_config or LayoutConfig()
        self.decoding_defaults = dict(decoding_defaults or {})  # the stage-1 model's conventions, kept by each round
        self.out = Path(config.output_dir)
        self.rank, self.world = rank_and_world()
        self.device = torch.device(device) if device else next(model.parameters()).device
        model.to(self.device)
        self.ref_model = None
        if config.lora:
            from peft import LoraConfig, PeftModel, get_peft_model

            if isinstance(model, PeftModel):
                self.policy = model
            else:
                self.policy = get_peft_model(model, LoraConfig(
                    r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0, task_type="CAUSAL_LM",
                    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                ))
        else:
            import copy

            self.policy = model
            self.ref_model = copy.deepcopy(model).eval()
            for p in self.ref_model.parameters():
                p.requires_grad_(False)
        from ..interpreter import eos_token_ids

        self.eos_ids = eos_token_ids(self._decoder_model(), tokenizer)
        self.eos_id = min(self.eos_ids) if tokenizer.eos_token_id is None else int(tokenizer.eos_token_id)

    def _decoder_model(self):
        """The network the interpreter drives (LoRA layers included, without the peft wrapper)."""
        return self.policy.get_base_model() if self.config.lora else self.policy

    def interpreter(self):
        from ..interpreter import Interpreter

        return Interpreter(self._decoder_model(), self.tokenizer, layout_config=self.layout_config, limits=self.config.limits,
                           name="policy", decoding_defaults=self.decoding_defaults)

    def prompt_ids(self, prompt: str) -> list[int]:
        from .sft import chat_prompt_ids

        return chat_prompt_ids(self.tokenizer, prompt)

    # -- log-probs in the Pasta layout ----------------------------------------------------------------------------
    def laid_out(self, prompt: str, annotated: str, *, truncated: bool = False):
        from .collator import layout_example

        return layout_example(self.tokenizer, self.prompt_ids(prompt), annotated, self.layout_config, self.eos_id,
                              end_with_eos=not truncated)

    def policy_logprob(self, laid) -> torch.Tensor:
        from .collator import sequence_logprob

        return sequence_logprob(self.policy, laid)

    @torch.no_grad()
    def reference_logprob(self, laid) -> torch.Tensor:
        from .collator import sequence_logprob

        if self.ref_model is not None:
            return sequence_logprob(self.ref_model, laid)
        with self.policy.disable_adapter():
            return sequence_logprob(self.policy, laid)

    def pair_loss(self, pair_laid: list[tuple[Any, Any]], ref: torch.Tensor) -> torch.Tensor:
        """Mean BoNBoN loss over pairs [(best, worst)]; `ref` [B, 2] = reference log-probs (best, worst)."""
        best = self.policy_logprob([b for b, _ in pair_laid])
        worst = self.policy_logprob([w for _, w in pair_laid])
        losses = bonbon_loss(best, worst, ref[:, 0].to(best.device), ref[:, 1].to(best.device),
                             self.config.alpha, self.config.beta)
        return losses.mean()

    # -- sampling and scoring -------------------------------------------------------------------------------------
    def reference_answers(self, examples: list) -> dict[str, str]:
        """Greedy sequential answers of the initial model (the quality baseline), cached in reference.jsonl."""
        path = self.out / f"reference.rank{self.rank}.jsonl"
        done = {r["id"]: r["text"] for p in self.out.glob("reference.rank*.jsonl") for r in read_rows(p)}
        todo = [ex for ex in examples[self.rank::self.world] if ex.id not in done]
        if todo:
            interp = self.interpreter()
            ctx = self.policy.disable_adapter() if self.config.lora else _null()
            with ctx:
                for ex in todo:
                    res = interp.generate(self.prompt_ids(ex.prompt), mode="sequential")
                    append_jsonl(path, {"id": ex.id, "text": res.text})
                    done[ex.id] = res.text
        barrier(self.world)
        return {r["id"]: r["text"] for p in self.out.glob("reference.rank*.jsonl") for r in read_rows(p)}

    def sample_round(self, round_no: int, examples: list, references: dict[str, str]) -> list[dict]:
        from ..eval.judge import judge_pair

        folder = self.out / f"round-{round_no}"
        path = folder / f"samples.rank{self.rank}.jsonl"
        done = {r["id"] for p in folder.glob("samples.rank*.jsonl") for r in read_rows(p)}
        interp = self.interpreter()
        self.policy.eval()
        for k, ex in enumerate(examples):
            if k % self.world != self.rank or ex.id in done:
                continue
            samples = []
            for n in range(self.config.n_samples):
                seed = (self.config.seed * 1_000_003 + round_no * 10_007 + k * 101 + n) % (2**63)
                sampling = dataclasses.replace(self.config.sampling, seed=seed)
                res = interp.generate(self.prompt_ids(ex.prompt), sampling=sampling, mode="async")
                stats = answer_stats(res, self.tokenizer)
                speedup = sample_speedup(stats, res.stats.critical_path)
                quality = None
                if self.judge is not None:
                    quality = judge_pair(self.judge, ex.prompt, references[ex.id], res.text).preference
                samples.append({"annotated": res.annotated, "text": res.text, "tokens": res.stats.tokens,
                                "critical_path": res.stats.critical_path, "threads": res.stats.threads,
                                "speedup": speedup, "quality": quality, "answer_stats": stats.to_dict()})
            append_jsonl(path, {"id": ex.id, "prompt": ex.prompt, "samples": samples})
            log.info("round %d: sampled %s (%d/%d): speedups %s, quality %s", round_no, ex.id, k + 1, len(examples),
                     [round(s["speedup"], 2) for s in samples], [s["quality"] for s in samples])
        barrier(self.world)
        return [r for p in sorted(folder.glob("samples.rank*.jsonl")) for r in read_rows(p)]

    def build_pairs(self, round_no: int, sampled: list[dict]) -> list[dict]:
        pairs = []
        for row in sampled:
            chosen = select_pair(row["samples"], self.config.lam)
            if chosen is None:
                continue
            best, worst = chosen
            pairs.append({
                "id": row["id"], "round": round_no, "prompt": row["prompt"], "chosen": best["annotated"],
                "rejected": worst["annotated"],
                "score_chosen": score_sample(best["speedup"], best["quality"], self.config.lam)[0],
                "score_rejected": score_sample(worst["speedup"], worst["quality"], self.config.lam)[0],
                "speedup_chosen": best["speedup"], "speedup_rejected": worst["speedup"],
                "quality_chosen": best["quality"], "quality_rejected": worst["quality"],
            })
        if self.rank == 0:
            path = self.out / f"round-{round_no}" / "pairs.jsonl"
            path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs), encoding="utf-8")
        return pairs

    # -- training ---------------------------------------------------------------------------------------------------
    def train_round(self, round_no: int, pairs: list[dict]) -> list[dict]:
        """BoNBoN on the round's pairs. Under torchrun every rank holds every pair and the same shuffled schedule;
        a micro-batch is `batch_size * world` pairs dealt round-robin to the ranks, and every rank takes part in
        every gradient all-reduce and optimizer step, even with no pair of its own in a micro-batch (fewer pairs
        than ranks). The loss is scaled by the pairs in the accumulation window, so N ranks x batch B computes
        exactly what one process with batch N*B does."""
        cfg = self.config
        laid = []
        for p in pairs:
            b = self.laid_out(p["prompt"], p["chosen"], truncated=bool(p.get("chosen_truncated")))
            w = self.laid_out(p["prompt"], p["rejected"], truncated=bool(p.get("rejected_truncated")))
            if max(len(b), len(w)) <= cfg.max_length:
                laid.append((b, w))
        rng = random.Random(cfg.seed + round_no)
        per_micro = cfg.batch_size * self.world
        schedule = []  # per epoch: windows of micro-batches of pair indices (identical on every rank)
        for _ in range(cfg.epochs):
            order = list(range(len(laid)))
            rng.shuffle(order)
            micro = [order[i:i + per_micro] for i in range(0, len(order), per_micro)]
            schedule.append([micro[i:i + cfg.grad_accum] for i in range(0, len(micro), cfg.grad_accum)])
        mine = sorted({i for epoch in schedule for window in epoch for m in window for i in m[self.rank::self.world]})
        self.policy.eval()
        log.info("round %d: reference log-probs of %d pairs (%d longer than max_length %d left out)", round_no,
                 len(mine), len(pairs) - len(laid), cfg.max_length)
        ref = {}
        for n, i in enumerate(mine, 1):
            ref[i] = torch.stack([self.reference_logprob(laid[i][0]), self.reference_logprob(laid[i][1])])
            if n % 25 == 0 or n == len(mine):
                log.info("round %d: reference log-probs %d/%d", round_no, n, len(mine))
        params = [p for p in self.policy.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate)
        self.policy.train()
        history = []
        step = 0
        for epoch, windows in enumerate(schedule):
            batch_no = 0
            for window in windows:
                total = sum(len(m) for m in window)
                for micro in window:
                    own = micro[self.rank::self.world]
                    batch_no += 1
                    if not own:
                        continue
                    loss = self.pair_loss([laid[i] for i in own], torch.stack([ref[i] for i in own]))
                    (loss * len(own) / total).backward()
                    history.append({"round": round_no, "epoch": epoch, "batch": batch_no, "step": step + 1,
                                    "loss": float(loss.detach()), "pairs": len(own)})
                    log.info("round %d epoch %d batch %d: loss %.4f (%d pairs)", round_no, epoch, batch_no,
                             float(loss.detach()), len(own))
                if self.world > 1:
                    for p in params:  # every rank reduces every parameter: the collectives always match
                        if p.grad is None:
                            p.grad = torch.zeros_like(p)
                        torch.distributed.all_reduce(p.grad)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
        self.policy.eval()
        return history

    def save(self, folder: Path) -> None:
        """`adapter` (or `model`) is what decoding loads on the base model. On a merged stage-1 LoRA the trained
        LoRA is a delta: it is kept in `stage2-delta` (for resuming) and `adapter` is stage 1 + delta, combined."""
        if self.rank != 0:
            return
        target = folder / ("adapter" if self.config.lora else "model")
        if self.config.lora and self.stage1_adapter is not None:
            delta = folder / "stage2-delta"
            self.policy.save_pretrained(delta)
            combine_lora_adapters(self.stage1_adapter, delta, target)
        else:
            self.policy.save_pretrained(target)
        if hasattr(self.tokenizer, "save_pretrained"):
            self.tokenizer.save_pretrained(target)
        (target / "pasta_layout.json").write_text(json.dumps(asdict(self.layout_config)))
        if self.decoding_defaults:
            (target / "pasta_decoding.json").write_text(json.dumps(self.decoding_defaults))

    def load_round(self, folder: Path) -> None:
        """Continue from a finished round's weights (resume)."""
        if self.config.lora:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            weights = folder / ("stage2-delta" if (folder / "stage2-delta").is_dir() else "adapter") / "adapter_model.safetensors"
            set_peft_model_state_dict(self.policy, load_file(str(weights), device=str(self.device)))
        else:
            from transformers import AutoModelForCausalLM

            loaded = AutoModelForCausalLM.from_pretrained(str(folder / "model"))
            self.policy.load_state_dict(loaded.state_dict())

    def run(self, examples: list) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            (self.out / "pref_config.json").write_text(json.dumps(asdict(self.config), indent=2, default=str))
        offline = load_pairs(self.config.pairs) if self.config.pairs else None
        references = self.reference_answers(examples) if self.judge is not None and offline is None else {}
        report = {"rounds": []}
        for round_no in range(1, self.config.rounds + 1):
            folder = self.out / f"round-{round_no}"
            done_file = folder / "done.json"
            if done_file.is_file():
                self.load_round(folder)
                report["rounds"].append(json.loads(done_file.read_text()))
                continue
            if offline is not None:
                sampled, pairs = [], offline
            else:
                sampled = self.sample_round(round_no, examples, references)
                pairs = self.build_pairs(round_no, sampled)
            history = self.train_round(round_no, pairs)
            self.save(folder)
            summary = {
                "round": round_no, "prompts": len({p["prompt"] for p in pairs}) if offline else len(sampled),
                "pairs": len(pairs), "pairs_from": self.config.pairs,
                "mean_speedup": _mean([s["speedup"] for r in sampled for s in r["samples"]]),
                "mean_quality": _mean([s["quality"] for r in sampled for s in r["samples"] if s["quality"] is not None]),
                "first_loss": history[0]["loss"] if history else None,
                "last_loss": history[-1]["loss"] if history else None,
            }
            if self.rank == 0:
                (folder / "train_log.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
                done_file.write_text(json.dumps(summary, indent=2))
            barrier(self.world)
            report["rounds"].append(summary)
        return report


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def load_pairs(path: str | Path) -> list[dict]:
    """Preference pairs from a .jsonl file in TRL's shape; a bad row is an error that names its line."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no pairs file {path}")
    pairs = []
    for line_no, row in jsonl_lines(path):
        where = f"{path}:{line_no}"
        if isinstance(row, json.JSONDecodeError):
            raise ValueError(f"{where}: not JSON ({row.msg})")
        if not isinstance(row, dict):
            raise ValueError(f"{where}: a pair is an object with prompt, chosen and rejected")
        for key in ("prompt", "chosen", "rejected"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise ValueError(f"{where}: {key!r} must be a non-empty string")
        if row["chosen"] == row["rejected"]:
            raise ValueError(f"{where}: chosen and rejected are the same text")
        for key in ("chosen_truncated", "rejected_truncated"):
            if not isinstance(row.get(key, False), bool):
                raise ValueError(f"{where}: {key!r} must be true or false")
        pairs.append(row)
    if not pairs:
        raise ValueError(f"{path}: no pairs")
    return pairs


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def build_judge(config: PrefConfig, fallback_model=None, fallback_tokenizer=None):
    if config.judge == "none":
        return None
    if config.judge == "openai":
        from ..eval.judge import OpenAIJudge
        from ..openai_client import OpenAIClient

        if not config.judge_base_url or not config.judge_model:
            raise ValueError("judge 'openai' needs judge_base_url and judge_model")
        return OpenAIJudge(OpenAIClient(config.judge_base_url, api_key_env=config.judge_api_key_env), config.judge_model)
    from ..eval.judge import LocalJudge
    from ..models import load_model

    loaded = load_model(config.judge_model, dtype="float32", adapter=False)
    return LocalJudge(loaded.model, loaded.tokenizer, name=loaded.name)


def train_pref(config: PrefConfig) -> dict:
    """Load the initial model (base + stage-1 adapter, merged), the judge and the prompts; run the rounds."""
    from ..data.sources import load_examples
    from ..interpreter import decoding_defaults_for, layout_config_for
    from ..models import DEFAULT_MODEL, default_adapter_path, load_model, resolve_model_path

    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    torch.manual_seed(config.seed)
    rank, world = rank_and_world()
    device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    loaded = load_model(config.model, dtype="float32", adapter=config.adapter, device=device)
    layout = layout_config_for(loaded)
    stage1 = None  # the LoRA adapter load_model merged, if any (the same rule as load_model's)
    if config.model and (Path(config.model) / "adapter_config.json").is_file():
        stage1 = Path(config.model)
    elif config.adapter is True:
        stage1 = default_adapter_path() if resolve_model_path(config.model)[0] == DEFAULT_MODEL else None
    elif config.adapter:
        stage1 = Path(config.adapter)
    examples = [] if config.pairs else list(load_examples(config.prompts, limit=config.num_prompts, exclude_eval=True))
    if not examples and not config.pairs:
        raise ValueError(f"no training prompts in {config.prompts!r}")
    judge = None if config.pairs else build_judge(config)
    trainer = PrefTrainer(config, loaded.model, loaded.tokenizer, judge=judge, layout_config=layout, device=device,
                          stage1_adapter=stage1, decoding_defaults=decoding_defaults_for(loaded))
    return trainer.run(examples)
