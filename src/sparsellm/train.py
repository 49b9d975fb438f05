"""Sparse pre-training loop: single process, or DDP under ``torchrun`` (nccl on GPU, gloo on CPU).

Every rank builds the same model from the same seed, DDP keeps the weights equal, and the pruner
broadcasts rank 0's masks, so masks agree on every rank. Batches are a pure function of
``(seed, step, rank)`` and all state (model, optimizer, pruner, losses) is checkpointed, so a resumed
run continues exactly where an uninterrupted one would be.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from .data import eval_batches, load_tokenizer, read_texts, tokenize_corpus_cached, train_batch
from .models import build_model, resolve_preset
from .pruner import Pruner, PrunerConfig, count_parameters
from .schedule import PruningSchedule, schedule_from_compute_fractions


# What the ``params`` / ``avg_params`` / ``final_params`` columns count (as Jin et al.'s model cards do:
# "linear parameters"): every nn.Linear weight, i.e. attention, MLP and the untied output head; the input
# embedding and the norm weights are excluded (they are ``other_params``).
PARAMS_COUNTED = "non_embedding_linear"


@dataclass
class TrainConfig:
    out_dir: str
    data: list[str] = field(default_factory=lambda: ["shakespeare"])
    preset: str = "nano"
    tokenizer: str = "byte"  # byte | bpe:N | path
    seq_len: int = 128
    batch_size: int = 16  # per rank
    steps: int | None = None
    tokens: int | None = None  # alternative to steps: total training tokens (all ranks)
    lr: float = 3e-3
    warmup_frac: float = 0.01
    min_lr_frac: float = 0.1
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    clip: float = 1.0
    # pruning
    sparsity: float = 0.0
    schedule: str = "geometric"
    start_step: int | None = None  # if None, placed at start_fraction of compute
    end_step: int | None = None
    start_fraction: float = 0.25
    end_fraction: float = 0.75
    frequency: int = 100
    method: str = "magnitude"
    structure: str = "unstructured"
    exempt: list[str] = field(default_factory=list)
    # bookkeeping
    eval_fraction: float = 0.05
    max_chars: int | None = None
    eval_every: int = 0  # 0 = only at the end
    eval_batches: int = 8
    save_every: int = 0  # 0 = only at the end
    log_every: int = 10
    seed: int = 0
    resume: bool = False
    stop_after: int | None = None  # stop (with a checkpoint) after this many steps: simulates a crash
    export: bool = True
    progress: bool = True
    threads: int | None = None
    # hardware: device auto = CUDA when available; bf16 = autocast of forward passes (weights, masks and the
    # optimizer stay fp32, as in the paper); fused AdamW on CUDA; torch.compile of the model (optional)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    bf16: bool = False
    compile: bool | str = False  # True = inductor, or a torch.compile backend name ("eager", "aot_eager", ...)

    def __post_init__(self) -> None:
        resolve_preset(self.preset)  # raises ValueError on an unknown name
        if (self.steps is None) == (self.tokens is None):
            raise ValueError("give exactly one of steps or tokens")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.tokens is not None and self.tokens < self.seq_len * self.batch_size:
            raise ValueError(f"tokens must be at least one batch ({self.seq_len * self.batch_size}), got {self.tokens}")
        for name in ("seq_len", "batch_size", "frequency", "eval_batches", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup_frac < 1 or not 0 <= self.min_lr_frac <= 1:
            raise ValueError("warmup_frac must be in [0, 1) and min_lr_frac in [0, 1]")
        if not 0 <= self.sparsity < 1:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    def total_steps(self, world: int = 1) -> int:
        if self.steps is not None:
            return self.steps
        return max(1, self.tokens // (self.seq_len * self.batch_size * world))

    def make_schedule(self, world: int = 1) -> PruningSchedule:
        T = self.total_steps(world)
        if self.start_step is not None or self.end_step is not None:
            start = self.start_step if self.start_step is not None else 0
            end = self.end_step if self.end_step is not None else start
            return PruningSchedule(T, self.sparsity, start, end, self.frequency, self.schedule)  # type: ignore[arg-type]
        return schedule_from_compute_fractions(T, self.sparsity, self.start_fraction, self.end_fraction,
                                               self.frequency, self.schedule)  # type: ignore[arg-type]


def lr_at(step: int, total: int, peak: float, warmup_frac: float, min_frac: float) -> float:
    """Linear warmup over ``warmup_frac`` of steps, then cosine decay to ``min_frac * peak``."""
    warm = max(1, round(warmup_frac * total))
    if step < warm:
        return peak * (step + 1) / warm
    p = (step - warm) / max(1, total - warm - 1)
    return peak * (min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def lm_loss(model, batch: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """Next-token cross-entropy; with ``bf16`` the forward runs under bf16 autocast, the loss in fp32."""
    with torch.autocast(device_type=batch.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(input_ids=batch[:, :-1]).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))


@torch.no_grad()
def evaluate(model, batches: list[torch.Tensor], device, bf16: bool = False) -> float:
    was = model.training
    model.eval()
    tot, n = 0.0, 0
    for b in batches:
        b = b.to(device)
        tot += float(lm_loss(model, b, bf16)) * b.size(0)
        n += b.size(0)
    model.train(was)
    return tot / n


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; a clear error without CUDA."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} asked for, but CUDA is not available here "
                             f"(torch {torch.__version__}); use --device cpu or auto")
        if spec == "cuda":
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(spec)


def _dist_setup(device: str = "auto") -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    dev = resolve_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return rank, world, dev


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


@dataclass
class TrainResult:
    summary: dict
    model: torch.nn.Module
    pruner: Pruner


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) one pre-training run; returns the summary also written to ``summary.json``."""
    return run_training(cfg).summary


def run_training(cfg: TrainConfig) -> TrainResult:
    """Like :func:`train`, but also hands back the model and the pruner."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rank, world, device = _dist_setup(cfg.device)
    out = Path(cfg.out_dir)
    ckpt_path = out / "checkpoint.pt"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)

    texts = read_texts(cfg.data)
    tok_dir = out / "tokenizer"
    if cfg.resume and tok_dir.exists():
        tok = load_tokenizer(str(tok_dir))
    else:
        tok = load_tokenizer(cfg.tokenizer, texts)
        if rank == 0:
            tok.save(tok_dir)
    data = tokenize_corpus_cached(texts, tok, cfg.eval_fraction, cfg.max_chars)
    evb = eval_batches(data.eval, cfg.seq_len, cfg.batch_size, cfg.eval_batches)

    model = build_model(cfg.preset, tok.vocab_size, cfg.seq_len, cfg.seed).to(device)
    model.train()
    prunable, other = count_parameters(model, cfg.exempt)
    sched = cfg.make_schedule(world)
    T = sched.total_steps
    pruner = Pruner(model, PrunerConfig(sched, cfg.method, cfg.structure, list(cfg.exempt), cfg.seed))  # type: ignore[arg-type]
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=device.type == "cuda",
    )
    start = 0
    losses: list[float] = []
    history: list[dict] = []
    if cfg.resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optim"])
        pruner.load_state_dict(ck["pruner"])
        start, losses, history = ck["step"], ck["losses"], ck["history"]
    train_model = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:  # the pruner keeps working on `model`'s parameters, which the compiled module shares
        train_model = torch.compile(train_model, backend="inductor" if cfg.compile is True else cfg.compile)

    tokens_per_step = cfg.batch_size * cfg.seq_len * world

    pending: list[torch.Tensor] = []  # this step's losses, read back in blocks (no GPU sync every step)

    def flush_losses() -> None:
        if not pending:
            return
        t = torch.stack(pending).float()
        if world > 1:
            dist.all_reduce(t)
            t = t / world
        losses.extend(t.tolist())
        pending.clear()

    def save(step_done: int) -> None:
        flush_losses()
        if rank != 0:
            return
        _atomic_save({"model": model.state_dict(), "optim": opt.state_dict(), "pruner": pruner.state_dict(),
                      "step": step_done, "losses": losses, "history": history, "config": asdict(cfg)}, ckpt_path)

    if rank == 0:
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
        (out / "schedule.json").write_text(json.dumps(sched.summary(prunable, other, tokens_per_step), indent=2))
    stop = T if cfg.stop_after is None else min(T, cfg.stop_after)
    bar = tqdm(range(start, stop), desc=f"train {cfg.preset} s={cfg.sparsity}", disable=not cfg.progress or rank != 0,
               initial=start, total=T)
    t0 = time.time()
    for step in bar:
        lr = lr_at(step, T, cfg.lr, cfg.warmup_frac, cfg.min_lr_frac)
        for g in opt.param_groups:
            g["lr"] = lr
        pruner.step(step, opt)
        batch = train_batch(data.train, step, cfg.batch_size, cfg.seq_len, cfg.seed, rank).to(device)
        loss = lm_loss(train_model, batch, cfg.bf16)
        loss.backward()
        pruner.mask_grads()
        if cfg.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        pruner.apply_masks()
        pending.append(loss.detach())
        if (step + 1) % cfg.log_every == 0:
            flush_losses()
            bar.set_postfix(loss=f"{losses[-1]:.3f}", density=f"{pruner.density:.3f}")
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < T:
            flush_losses()
            ev = evaluate(model, evb, device, cfg.bf16)
            history.append({"step": step + 1, "eval_loss": ev, "train_loss": losses[-1], "density": pruner.density,
                            "avg_density": pruner.average_density, "lr": lr})
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < stop:
            save(step + 1)
    bar.close()
    save(stop)
    if stop < T:
        return TrainResult({"stopped_at": stop}, model, pruner)

    ev = evaluate(model, evb, device, cfg.bf16)
    tail = max(1, len(losses) // 100)
    summary = {
        "preset": cfg.preset, "sparsity": cfg.sparsity, "schedule": sched.kind, "method": cfg.method,
        "structure": cfg.structure, "steps": T, "start_step": sched.start_step, "end_step": sched.end_step,
        "frequency": sched.frequency, "tokens": T * tokens_per_step, "seq_len": cfg.seq_len,
        "vocab_size": tok.vocab_size, "world_size": world, "device": device.type, "bf16": cfg.bf16,
        "compile": cfg.compile,
        # the paper's count: every linear weight (attention, MLP, untied head), no embedding and no norms
        "params_counted": PARAMS_COUNTED,
        "params": prunable, "other_params": other, "total_params": prunable + other,
        "avg_density": pruner.average_density, "predicted_avg_density": sched.average_density(),
        "final_density": pruner.density,
        "avg_params": pruner.average_density * prunable, "final_params": pruner.density * prunable,
        "training_flops": sched.training_flops(prunable, tokens_per_step),
        "loss": ev, "train_loss": sum(losses[-tail:]) / tail, "seconds": time.time() - t0,
    }
    history.append({"step": T, "eval_loss": ev, "train_loss": losses[-1], "density": pruner.density,
                    "avg_density": pruner.average_density})
    if rank == 0:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        with open(out / "history.jsonl", "w") as f:
            for h in history:
                f.write(json.dumps(h) + "\n")
        if cfg.export:
            model.save_pretrained(str(out / "hf"))
            tok.save(out / "hf")
    if world > 1:
        dist.barrier()
    return TrainResult(summary, model, pruner)


def inspect(path: str) -> dict:
    """Per-layer sparsity of a Hugging Face folder or a training checkpoint."""
    p = Path(path)
    if p.is_dir() and (p / "checkpoint.pt").exists():
        p = p / "checkpoint.pt"
    if p.is_file():
        sd = torch.load(p, map_location="cpu", weights_only=False)["model"]
    elif p.is_dir():
        from transformers import AutoModelForCausalLM
        sd = AutoModelForCausalLM.from_pretrained(str(p)).state_dict()
    else:
        raise ValueError(f"{path}: not a checkpoint file, run folder or Hugging Face folder")
    from .infer import model_pattern, speedup_note

    layers = {}
    nz = tot = 0
    for n, w in sd.items():
        if w.dim() != 2 or "embed" in n:
            continue
        z = int((w == 0).sum())
        layers[n] = {"shape": list(w.shape), "sparsity": z / w.numel()}
        nz += w.numel() - z
        tot += w.numel()
    pat = model_pattern(sd)
    for n, v in pat["layers"].items():
        layers[n]["pattern"] = v["pattern"]
    return {"layers": layers, "linear_params": tot, "nonzero_linear_params": nz,
            "sparsity": 1 - nz / max(1, tot), "pattern": pat["pattern"],
            "layers_2_4": pat["layers_2_4"], "speedup": speedup_note(pat)}
