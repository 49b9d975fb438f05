"""Gradual pruning of any ``nn.Module``: global magnitude or random scores, unstructured or 2:4.

Usage in a training loop (see :mod:`sparsellm.train`)::

    pruner = Pruner(model, PrunerConfig(schedule=sched))
    for step in range(T):
        pruner.step(step, optimizer)        # prune if `step` is an event; track density
        loss.backward()
        pruner.mask_grads()                 # pruned weights get no gradient (clip norm ignores them)
        optimizer.step()
        pruner.apply_masks()                # re-binarize: weight decay cannot bring them back

No regrowth: a new mask is always a subset of the old one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.distributed as dist
from torch import nn

from .schedule import PruningSchedule

Method = Literal["magnitude", "random"]
Structure = Literal["unstructured", "2:4"]


@dataclass
class PrunerConfig:
    schedule: PruningSchedule
    method: Method = "magnitude"
    structure: Structure = "unstructured"
    exempt: list[str] = field(default_factory=list)  # regexes matched (re.search) against param names
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in ("magnitude", "random"):
            raise ValueError(f"method must be 'magnitude' or 'random', got {self.method!r}")
        if self.structure not in ("unstructured", "2:4"):
            raise ValueError(f"structure must be 'unstructured' or '2:4', got {self.structure!r}")
        if self.structure == "2:4" and self.schedule.sparsity not in (0.0, 0.5):
            raise ValueError(f"2:4 structure means 50% sparsity; got sparsity {self.schedule.sparsity}")
        for p in self.exempt:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"bad exempt pattern {p!r}: {e}") from e


def prunable_parameters(model: nn.Module, exempt: list[str] | tuple[str, ...] = ()) -> dict[str, nn.Parameter]:
    """Weights of every ``nn.Linear`` (an untied output head included), minus exempt names.

    Embeddings and norms are not Linear modules, so they are never selected. A Linear whose weight is
    the same tensor as an embedding's (tied head) is skipped: pruning it would prune the embedding.
    """
    embed_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    pats = [re.compile(p) for p in exempt]
    out: dict[str, nn.Parameter] = {}
    seen: set[int] = set()
    for mname, m in model.named_modules():
        if not isinstance(m, nn.Linear):
            continue
        name = f"{mname}.weight" if mname else "weight"
        w = m.weight
        if id(w) in embed_ids or id(w) in seen or any(p.search(name) for p in pats):
            continue
        seen.add(id(w))
        out[name] = w
    return out


def count_parameters(model: nn.Module, exempt: list[str] | tuple[str, ...] = ()) -> tuple[int, int]:
    """(prunable, non-prunable) parameter counts, each shared tensor counted once."""
    pr = prunable_parameters(model, exempt)
    pr_ids = {id(p) for p in pr.values()}
    total = {id(p): p.numel() for p in model.parameters()}
    n_pr = sum(p.numel() for p in pr.values())
    n_other = sum(n for i, n in total.items() if i not in pr_ids)
    return n_pr, n_other


class Pruner:
    def __init__(self, model: nn.Module, config: PrunerConfig) -> None:
        self.model = model
        self.config = config
        self.params = prunable_parameters(model, config.exempt)
        if not self.params:
            raise ValueError("model has no prunable (nn.Linear) weights")
        if config.structure == "2:4":
            for n, p in self.params.items():
                if p.shape[-1] % 4:
                    raise ValueError(f"2:4 needs in_features divisible by 4; {n} has shape {tuple(p.shape)}")
        self.masks: dict[str, torch.Tensor] = {
            n: torch.ones_like(p, dtype=p.dtype) for n, p in self.params.items()
        }
        self.total = sum(p.numel() for p in self.params.values())
        self.alive = self.total
        self.density_sum = 0.0  # sum over tracked steps of the density each step trained with
        self.steps_tracked = 0
        self.events_done = 0
        self.mask_disagreements = 0  # under DDP: mask entries this rank chose unlike rank 0 (see _sync_masks)

    # ---- tracking -----------------------------------------------------------------------------
    @property
    def density(self) -> float:
        return self.alive / self.total

    @property
    def average_density(self) -> float:
        return self.density_sum / max(1, self.steps_tracked)

    def average_params(self, non_prunable_params: int = 0) -> float:
        return self.average_density * self.total + non_prunable_params

    def layer_sparsity(self) -> dict[str, float]:
        return {n: 1.0 - float(m.sum()) / m.numel() for n, m in self.masks.items()}

    # ---- the training-loop hooks ----------------------------------------------------------------
    def step(self, step: int, optimizer: torch.optim.Optimizer | None = None) -> bool:
        """Call before the forward pass of ``step``. Prunes on event steps; records the density."""
        target = self.config.schedule.target_at_event(step)
        pruned = False
        if target is not None:
            self.prune_to(target, step, optimizer)
            self.events_done += 1
            pruned = True
        self.density_sum += self.density
        self.steps_tracked += 1
        return pruned

    @torch.no_grad()
    def mask_grads(self) -> None:
        grads, masks = [], []
        for n, p in self.params.items():
            if p.grad is not None:
                grads.append(p.grad)
                masks.append(self.masks[n])
        if grads:
            torch._foreach_mul_(grads, masks)

    @torch.no_grad()
    def apply_masks(self) -> None:
        torch._foreach_mul_(list(self.params.values()), list(self.masks.values()))

    # ---- pruning -------------------------------------------------------------------------------
    def _scores(self, step: int) -> dict[str, torch.Tensor]:
        if self.config.method == "magnitude":
            return {n: p.detach().abs().float() for n, p in self.params.items()}
        g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + step)
        return {n: torch.rand(p.shape, generator=g).to(p.device) for n, p in self.params.items()}

    @torch.no_grad()
    def prune_to(self, density: float, step: int = 0, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Prune globally to ``round(density * total)`` alive weights (never regrowing any)."""
        keep = int(round(density * self.total))
        if keep >= self.alive:
            return
        names = list(self.params)
        scores = self._scores(step)
        flat, cand = [], []
        for n in names:
            s = scores[n]
            alive = self.masks[n].bool()
            c = alive.clone()
            if self.config.structure == "2:4":
                # the two best alive weights of each group of 4 along the input dim are protected
                g = s.masked_fill(~alive, float("-inf")).reshape(-1, 4)
                top2 = g.topk(2, dim=-1).indices
                prot = torch.zeros_like(g, dtype=torch.bool).scatter_(1, top2, True).reshape(s.shape)
                c &= ~prot
            flat.append(s.flatten())
            cand.append(c.flatten())
        flat_s = torch.cat(flat)
        flat_c = torch.cat(cand)
        n_remove = self.alive - keep
        n_cand = int(flat_c.sum())
        if n_remove > n_cand:
            raise RuntimeError(f"cannot remove {n_remove} weights, only {n_cand} are prunable candidates")
        # the n_remove lowest-scoring candidates go; non-candidates get +inf so they are never chosen
        key = flat_s.masked_fill(~flat_c, float("inf"))
        idx = torch.topk(key, n_remove, largest=False, sorted=False).indices
        remove = torch.zeros_like(flat_c)
        remove[idx] = True
        off = 0
        for n in names:
            m = self.masks[n]
            k = m.numel()
            r = remove[off:off + k].view(m.shape)
            m.masked_fill_(r, 0.0)
            off += k
        self._sync_masks()
        self.alive = int(sum(int(m.sum()) for m in self.masks.values()))
        self.apply_masks()
        if optimizer is not None:
            self.zero_optimizer_state(optimizer)

    def _sync_masks(self) -> None:
        """Under DDP, rank 0's masks are the masks (they should already agree; this makes it certain)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for m in self.masks.values():
                local = m.clone()
                dist.broadcast(m, src=0)
                # Masks this rank chose differently from rank 0: should stay 0 (the weights are equal); a test
                # and a user can check it, since the broadcast alone would hide a desynchronised run.
                self.mask_disagreements += int((local != m).sum())

    @torch.no_grad()
    def zero_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero every per-weight optimizer buffer (Adam moments...) of pruned weights."""
        for n, p in self.params.items():
            st = optimizer.state.get(p)
            if not st:
                continue
            for v in st.values():
                if torch.is_tensor(v) and v.shape == p.shape:
                    v.mul_(self.masks[n].to(v.dtype))

    # ---- checkpointing --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "masks": {n: m.bool().cpu() for n, m in self.masks.items()},
            "density_sum": self.density_sum,
            "steps_tracked": self.steps_tracked,
            "events_done": self.events_done,
        }

    def load_state_dict(self, state: dict) -> None:
        if set(state["masks"]) != set(self.masks):
            raise ValueError("pruner state does not match this model's prunable parameters")
        for n, m in state["masks"].items():
            self.masks[n].copy_(m.to(self.masks[n].device, self.masks[n].dtype))
        self.alive = int(sum(int(m.sum()) for m in self.masks.values()))
        self.density_sum = float(state["density_sum"])
        self.steps_tracked = int(state["steps_tracked"])
        self.events_done = int(state["events_done"])
        self.apply_masks()


def is_valid_2_4(w: torch.Tensor) -> bool:
    """Every group of 4 consecutive weights along the last dim has at most 2 non-zeros."""
    return bool(((w.reshape(-1, 4) != 0).sum(-1) <= 2).all())
