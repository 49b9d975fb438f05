"""Sparsity at inference: which pattern a pruned model has, what speed-up it can give, and the 2:4 export.

A pruned ``sparsellm`` model stores its zeros densely, so with dense kernels it costs exactly what the
dense model costs. Only the 2:4 pattern (at most two non-zeros in every group of four weights along the
input dimension) has a kernel path in PyTorch: :func:`torch.sparse.to_sparse_semi_structured` compresses a
2:4 weight and dispatches ``nn.Linear`` to cuSPARSELt or CUTLASS, on CUDA GPUs of compute capability 8.0
(Ampere) or newer, in fp16 / bf16 (int8 too). Unstructured sparsity has no such path here.

    from sparsellm.infer import model_pattern, speedup_note, to_semi_structured
    r = model_pattern(model.state_dict())          # {"pattern": "2:4", "sparsity": 0.5, ...}
    print(speedup_note(r))
    n = to_semi_structured(model.cuda().half())    # linear weights -> SparseSemiStructuredTensor
"""

from __future__ import annotations

import torch
from torch import nn

DENSE_BELOW = 0.01  # a layer with fewer than 1% zeros is called dense

# What the published measurements say (cited in docs/sparsellm.md, "Sparsity at inference"):
# NVIDIA's sparse tensor cores double the math rate of a 2:4 operand; PyTorch's semi-structured kernels
# measured 1.24x / 1.27x on ViT-L MLP shapes on an A100 (torchao sparsity README), PyTorch's tutorial warns
# newer GPUs may see less, and a batch-1 4096x4096 matmul showed no speed-up (pytorch/pytorch#111339).
NOTE_24 = ("2:4 on NVIDIA GPUs of compute capability >= 8.0 (fp16/bf16): the linear layers can run on "
           "semi-structured sparse kernels (torch.sparse.to_sparse_semi_structured): at most 2x on their math, "
           "about 1.1-1.3x measured on large layers (torchao, A100), little or none at batch-1 decode or on "
           "small layers; the rest of the model is unchanged. Measure yours: python bench/sparse_infer.py --json")
NOTE_UNSTRUCTURED = ("unstructured at {s:.0%}: no speed-up from dense kernels (the zeros are stored and "
                     "multiplied); general sparse formats (CSR) rarely beat a dense matmul at such sparsity, so the "
                     "saving is training FLOPs (the average parameter count), not serving cost. Prune with "
                     "--structure 2:4 for a kernel path")
NOTE_DENSE = "dense: no sparsity to exploit"


def weight_pattern(w: torch.Tensor) -> str:
    """``dense`` (< 1% zeros), ``2:4`` (every group of 4 along the input dim has <= 2 non-zeros) or
    ``unstructured``."""
    if w.dim() != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(w.shape)}")
    z = float((w == 0).float().mean())
    if z < DENSE_BELOW:
        return "dense"
    if w.shape[1] % 4 == 0 and bool(((w.reshape(-1, 4) != 0).sum(-1) <= 2).all()):
        return "2:4"
    return "unstructured"


def semi_structured_shape_ok(shape: tuple[int, int] | torch.Size, dtype: torch.dtype = torch.bfloat16,
                             backend: str = "cusparselt") -> bool:
    """Whether a weight of this (out, in) shape passes ``to_sparse_semi_structured``'s shape check."""
    from torch.sparse import SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS

    cls = SparseSemiStructuredTensorCUSPARSELT if backend == "cusparselt" else SparseSemiStructuredTensorCUTLASS
    c = cls._DTYPE_SHAPE_CONSTRAINTS.get(dtype)
    if c is None:
        return False
    m, n = shape
    return m >= c.sparse_min_rows and m % c.sparse_min_rows == 0 and n >= c.sparse_min_cols and n % c.sparse_min_cols == 0


def model_pattern(state_dict: dict[str, torch.Tensor], dtype: torch.dtype = torch.bfloat16) -> dict:
    """The sparsity pattern of every linear (2-D, non-embedding) weight and of the model as a whole.

    ``pattern`` is ``2:4`` when every sparse layer is 2:4 (dense layers, e.g. an exempt head, are allowed),
    ``unstructured`` when any sparse layer is not 2:4, and ``dense`` when no layer is sparse.
    """
    layers: dict[str, dict] = {}
    for n, w in state_dict.items():
        if not torch.is_tensor(w) or w.dim() != 2 or "embed" in n:
            continue
        layers[n] = {"pattern": weight_pattern(w), "sparsity": float((w == 0).float().mean()),
                     "numel": w.numel(), "semi_structured_shape_ok": semi_structured_shape_ok(w.shape, dtype)}
    if not layers:
        raise ValueError("no linear (2-D, non-embedding) weights found")
    tot = sum(v["numel"] for v in layers.values())
    zeros = sum(v["sparsity"] * v["numel"] for v in layers.values())
    kinds = {v["pattern"] for v in layers.values()}
    pattern = "unstructured" if "unstructured" in kinds else "2:4" if "2:4" in kinds else "dense"
    n24 = [v for v in layers.values() if v["pattern"] == "2:4"]
    return {"pattern": pattern, "sparsity": zeros / tot, "linear_layers": len(layers),
            "layers_2_4": len(n24), "params_2_4": sum(v["numel"] for v in n24),
            "layers_2_4_convertible": sum(v["semi_structured_shape_ok"] for v in n24),
            "linear_params": tot, "layers": layers}


def speedup_note(r: dict) -> str:
    """One line for ``sparsellm inspect``: the pattern, its sparsity and the speed-up it can give."""
    p, s = r["pattern"], r["sparsity"]
    if p == "dense":
        return NOTE_DENSE
    if p == "unstructured":
        return NOTE_UNSTRUCTURED.format(s=s)
    share = r["params_2_4"] / r["linear_params"]
    conv = r["layers_2_4_convertible"]
    return (f"2:4 on {r['layers_2_4']} of {r['linear_layers']} linear layers ({share:.0%} of linear params, "
            f"{conv} with shapes the bf16 kernels accept); " + NOTE_24)


def semi_structured_available(device: torch.device | str | None = None) -> tuple[bool, str]:
    """(available, reason): semi-structured kernels need a CUDA GPU of compute capability >= 8.0."""
    if not torch.cuda.is_available():
        return False, f"no CUDA device (torch {torch.__version__}); the semi-structured format is CUDA-only"
    dev = torch.device(device) if device is not None else torch.device("cuda")
    cap = torch.cuda.get_device_capability(dev)
    if cap < (8, 0):
        return False, f"{torch.cuda.get_device_name(dev)} has compute capability {cap[0]}.{cap[1]}; 2:4 kernels need >= 8.0"
    return True, f"{torch.cuda.get_device_name(dev)}, compute capability {cap[0]}.{cap[1]}"


def semi_structured_backend() -> str:
    """``cusparselt`` where torch was built with it, else ``cutlass`` (sets the subclass torch will use)."""
    from torch.sparse import SparseSemiStructuredTensor

    ok = hasattr(torch.backends, "cusparselt") and torch.backends.cusparselt.is_available()
    SparseSemiStructuredTensor._FORCE_CUTLASS = not ok
    return "cusparselt" if ok else "cutlass"


@torch.no_grad()
def to_semi_structured(model: nn.Module, min_sparsity: float = 0.49) -> list[str]:
    """Replace every 2:4 ``nn.Linear`` weight whose shape the kernels accept by its compressed form.

    The model must already be on a CUDA device of capability >= 8.0 in fp16 / bf16. Returns the names of
    the converted layers; others (dense, unstructured, unsupported shapes) are left as they are.
    """
    from torch.sparse import to_sparse_semi_structured

    ok, why = semi_structured_available(next(model.parameters()).device)
    if not ok:
        raise RuntimeError(f"semi-structured sparsity unavailable: {why}")
    backend = semi_structured_backend()
    done = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.Linear):
            continue
        w = m.weight
        if weight_pattern(w) != "2:4" or float((w == 0).float().mean()) < min_sparsity:
            continue
        if not semi_structured_shape_ok(w.shape, w.dtype, backend):
            continue
        m.weight = nn.Parameter(to_sparse_semi_structured(w.detach().contiguous()), requires_grad=False)
        done.append(name)
    return done
