"""Weight-only quantized linear layers for CPU decoding (`quantize="int4"`), with LoRA adapters kept beside them.

A decode step of a small model reads every weight once per token, so on a CPU its time is the bytes of the
weights: 4-bit weights are a quarter of bf16's. Each row is cut into groups of 32 inputs, and each group stores
16 levels between its minimum and maximum: w = min + q * (max - min) / 15, q in 0..15 - the scheme of GGUF's
Q4_1. For the embedded model, whose weights *are* Q4_1 (dequantized when the GGUF was converted), requantizing
recovers the file's own levels exactly, so this runs the same model llama.cpp runs (tests check it).

The matrix products use PyTorch's packed int4 CPU kernel (`aten._weight_int4pack_mm_for_cpu`, the one torchao
and gpt-fast use) with bfloat16 activations. The output head (the vocabulary projection, often tied to the
embeddings) keeps 8 bits, one scale per row, as GGUF files keep it at Q8_0 or better: logits are where 4 bits would
hurt most. It runs on fbgemm's int8 x int8 kernel with the activation rounded to 8 bits as it comes (what
llama.cpp does for its dot products; VNNI instructions where the CPU has them): on this 2-core AVX-512 CPU the
49152 x 576 head of SmolLM2 takes ~2.4 ms a step instead of ~4.1 ms with `aten._weight_int8pack_mm` (bf16
activations), which stays the fallback where PyTorch has no fbgemm/x86 quantized engine. A LoRA adapter is not
merged into the 4-bit weights (its small update would mostly round away): its two low-rank factors run beside the
kernel, as in QLoRA.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

GROUP = 32


def int4_available() -> bool:
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") and hasattr(
        torch.ops.aten, "_convert_weight_to_int4pack_for_cpu")


def quantize_groups(weight: torch.Tensor, group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q [N, K] int32 in 0..15, step [N, K/group], minimum [N, K/group]) with w ~ minimum + q * step, the
    asymmetric min/max scheme of GGUF Q4_1, computed in float32."""
    n, k = weight.shape
    if k % group:
        raise ValueError(f"in-features {k} are not a multiple of the group size {group}")
    groups = weight.detach().float().reshape(n, k // group, group)
    low, high = groups.amin(-1), groups.amax(-1)
    step = (high - low) / 15
    safe = torch.where(step > 0, step, torch.ones_like(step))  # a constant group: every q is 0
    q = torch.round((groups - low[..., None]) / safe[..., None]).clamp_(0, 15)
    return q.reshape(n, k).to(torch.int32), step, low


def dequantize_groups(q: torch.Tensor, step: torch.Tensor, low: torch.Tensor, group: int = GROUP) -> torch.Tensor:
    n, k = q.shape
    return (low[..., None] + q.reshape(n, k // group, group).float() * step[..., None]).reshape(n, k)


class LowRank:
    """A LoRA update x -> scale * B(A(x)); several adapters side by side (q, k and v of one fused projection) are
    one A stacked over their inputs and one block-diagonal B."""

    def __init__(self, parts: list[tuple[torch.Tensor, torch.Tensor, float] | None], out_features: list[int]) -> None:
        ranks = [0 if p is None else p[0].shape[0] for p in parts]
        reference = next(p for p in parts if p is not None)[0]
        # float32: at these sizes (rank x in-features) bf16 matrix products take a slow path on CPUs
        self.a = torch.cat([p[0] for p in parts if p is not None]).float()
        self.b = torch.zeros(sum(out_features), sum(ranks), dtype=torch.float32, device=reference.device)
        row = col = 0
        for part, rows, rank in zip(parts, out_features, ranks):
            if part is not None:
                self.b[row : row + rows, col : col + rank] = part[1].float() * part[2]
            row, col = row + rows, col + rank

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x.float(), self.a), self.b)


class Int4Linear:
    """y = x W^T (+ bias) (+ LoRA) with W in packed 4-bit groups; x of any float dtype, computed in bfloat16."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, lora: LowRank | None = None,
                 group: int = GROUP) -> None:
        if not int4_available():
            raise RuntimeError("this PyTorch has no int4 CPU kernel (aten._weight_int4pack_mm_for_cpu)")
        if weight.device.type != "cpu":
            raise ValueError("int4 weights run on the CPU kernel; on a GPU decode in bf16")
        q, step, low = quantize_groups(weight, group)
        self.out_features, self.in_features = weight.shape
        self.group = group
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        # The kernel computes (q - 8) * scale + zero: zero = minimum + 8 steps.
        self.scales_and_zeros = torch.stack([step, low + 8 * step], dim=-1).transpose(0, 1).contiguous().to(
            torch.bfloat16)
        self.bias = None if bias is None else bias.detach().to(torch.bfloat16)
        self.lora = lora

    def dequantized(self) -> torch.Tensor:
        """The float32 weight the kernel multiplies by (for oracles and tests; the kernel's float32 path, which is
        exact here and slow)."""
        eye = torch.eye(self.in_features, dtype=torch.float32)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.packed, self.group,
                                                          self.scales_and_zeros.float()).t()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape, dtype = x.shape, x.dtype
        h = x.reshape(-1, shape[-1]).to(torch.bfloat16)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(h, self.packed, self.group, self.scales_and_zeros)
        if self.bias is not None:
            y = y + self.bias
        if self.lora is not None:
            y = self.lora(x.reshape(h.shape)) + y  # float32
        return y.reshape(*shape[:-1], self.out_features).to(dtype)


class Int8Linear:
    """y = x W^T with W in int8, one float scale per output row (absmax / 127).

    `kernel="fbgemm"` (default where available): PyTorch's quantized linear with the activation quantized on the
    fly (per call, 8 bits, float32 in and out); `kernel="int8pack"`: `aten._weight_int8pack_mm` with bfloat16
    activations. Both multiply by the same int8 weights (`dequantized`)."""

    def __init__(self, weight: torch.Tensor, kernel: str | None = None) -> None:
        kernel = kernel or ("fbgemm" if fbgemm_available() else "int8pack")
        if kernel not in ("fbgemm", "int8pack"):
            raise ValueError(f"kernel={kernel!r} ('fbgemm' or 'int8pack')")
        if kernel == "int8pack" and not hasattr(torch.ops.aten, "_weight_int8pack_mm"):
            raise RuntimeError("this PyTorch has no int8 weight-only kernel (aten._weight_int8pack_mm)")
        w = weight.detach().float()
        scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127
        self.weight = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        self.scales = scale.to(torch.bfloat16)
        self.out_features = weight.shape[0]
        self.kernel = kernel
        self._packed = _fbgemm_pack(self.weight, self.scales.float()) if kernel == "fbgemm" else None

    def dequantized(self) -> torch.Tensor:
        return self.weight.float() * self.scales.float()[:, None]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape, dtype = x.shape, x.dtype
        h = x.reshape(-1, shape[-1])
        if self._packed is not None:
            # reduce_range=False: the full 8 bits of the activation (the kernel's int16 sums can saturate only
            # without VNNI, on CPUs older than ~2017, where `kernel="int8pack"` is the safe choice)
            y = torch.ops.quantized.linear_dynamic(h.float(), self._packed, False)
        else:
            y = torch.ops.aten._weight_int8pack_mm(h.to(torch.bfloat16), self.weight, self.scales)
        return y.reshape(*shape[:-1], self.out_features).to(dtype)


def fbgemm_available() -> bool:
    """PyTorch's x86 quantized engine (fbgemm) with its dynamic int8 linear: x86 CPUs with AVX2 or better."""
    return (torch.backends.quantized.engine in ("x86", "fbgemm") and hasattr(torch.ops.quantized, "linear_dynamic")
            and hasattr(torch.ops.quantized, "linear_prepack"))


def _fbgemm_pack(weight: torch.Tensor, scales: torch.Tensor):
    """fbgemm's prepacked form of int8 rows with a float scale each (zero point 0)."""
    zeros = torch.zeros(weight.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # quantized tensors are deprecated as a user API; the packed kernel is not
        warnings.simplefilter("ignore", UserWarning)
        q = torch._make_per_channel_quantized_tensor(weight, scales.double(), zeros, 0)
        return torch.ops.quantized.linear_prepack(q, None)
