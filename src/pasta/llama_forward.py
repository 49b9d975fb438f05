"""A hand-written forward pass for Llama-family decoders (Llama, SmolLM, Mistral without a window, Qwen2, Qwen3).

Why: at batch 1 on a CPU a decode step of a small model is a few hundred small matrix-vector products, and the
Hugging Face module stack around them (hooks, kwargs plumbing, output records, one `nn.Linear` per projection)
costs as much as a fifth of the step. This module runs the same arithmetic with the model's own weights and the
same `Cache` API (`cache.update(key, value, layer)`), so the engine's `SlotCache` is used unchanged:

- the q/k/v projections and the gate/up projections run as one matrix each (the model's parameters become views
  into the fused matrices, so no weight is stored twice and the Hugging Face module still works on the same data);
- everything else mirrors `transformers` op for op (RMSNorm in float32, the model's own rotary embedding, SDPA with
  the same grouped-query handling), so logits match the Hugging Face forward pass (tests/pasta/test_llama_forward.py
  compares both, in float32 and bfloat16, with and without a cache).

Models outside the family, sliding windows, eager attention and anything else this module does not mirror fall
back to the Hugging Face forward pass (`LlamaForward.supports`).

`quantize="int4"` runs the projections with 4-bit weights and the output head with 8-bit ones (`pasta.quantized`),
a LoRA adapter left unmerged beside them. Those weights, and the fused q/k/v biases, are copies taken when the
forward pass is built (a moved or cast model rebuilds it; an in-place training step on them is not seen): build
a new runner after training, as each preference round does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .model_config import sliding_window
from .quantized import Int4Linear, Int8Linear, LowRank, int4_available

FAMILY = ("llama", "mistral", "qwen2", "qwen3")


@dataclass
class _Output:
    logits: torch.Tensor


class _Dense:
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        self.weight, self.bias = weight, bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


@dataclass
class _Layer:
    input_norm: torch.Tensor
    post_norm: torch.Tensor
    qkv: Callable[[torch.Tensor], torch.Tensor]  # q, k and v projections as one
    o: Callable[[torch.Tensor], torch.Tensor]
    gate_up: Callable[[torch.Tensor], torch.Tensor]  # gate and up projections as one
    down: Callable[[torch.Tensor], torch.Tensor]
    q_norm: torch.Tensor | None  # Qwen3: RMSNorm over each head before the rotary embedding
    k_norm: torch.Tensor | None


def _lora_parts(module: torch.nn.Module) -> tuple[torch.nn.Linear, tuple | None] | None:
    """(the plain linear layer, its unmerged LoRA (A, B, scale) or None), or None when the module is neither a
    plain nn.Linear nor a PEFT LoRA layer with one active adapter over one."""
    if isinstance(module, torch.nn.Linear):
        return module, None
    base = getattr(module, "base_layer", None)
    if not isinstance(base, torch.nn.Linear) or not hasattr(module, "lora_A") or getattr(module, "merged", False):
        return None
    if getattr(module, "disable_adapters", False):  # inside peft's `disable_adapter()`: the base layer alone
        return base, None
    active = [name for name in module.active_adapters if name in module.lora_A]
    if len(active) != 1 or getattr(module, "use_dora", {}).get(active[0], False):
        return None
    name = active[0]
    return base, (module.lora_A[name].weight, module.lora_B[name].weight, float(module.scaling[name]))


def _projections(layer: torch.nn.Module) -> list[torch.nn.Module]:
    attention, mlp = layer.self_attn, layer.mlp
    return [attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj, mlp.gate_proj, mlp.up_proj,
            mlp.down_proj]


def _unsupported_reason(model: torch.nn.Module, quantize: str | None = None) -> str | None:
    config = model.config
    if quantize not in (None, "int4"):
        return f"quantize={quantize!r} (None or 'int4')"
    if getattr(config, "model_type", None) not in FAMILY:
        return f"model type {getattr(config, 'model_type', None)!r} is not one of {FAMILY}"
    if getattr(config, "_attn_implementation", "sdpa") != "sdpa":
        return f"attention implementation {config._attn_implementation!r} (only sdpa is mirrored)"
    if sliding_window(config) is not None:
        return "sliding-window attention"
    if getattr(config, "mlp_bias", False) or getattr(config, "hidden_act", "silu") != "silu":
        return "an MLP with bias or an activation other than SiLU"
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb"):
        return "no `model.layers` / `model.rotary_emb` (not a plain causal LM)"
    head = getattr(model, "lm_head", None)
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        return "an output head that is not a plain nn.Linear without bias"
    for layer in inner.layers:
        parts = [_lora_parts(m) for m in _projections(layer)]
        if any(p is None for p in parts):
            return "projections that are neither nn.Linear nor a LoRA layer over one"
        if quantize is None and any(p[1] is not None for p in parts):
            return "an unmerged LoRA adapter (merge it, or decode with quantize='int4')"
        if parts[3][0].bias is not None:
            return "an output projection with bias"
        biases = [base.bias for base, _ in parts[:3]]
        if any(b is None for b in biases) and any(b is not None for b in biases):
            return "bias on some of q/k/v only"
    if quantize == "int4":
        if not int4_available():
            return "this PyTorch has no int4 CPU kernel"
        if next(model.parameters()).device.type != "cpu":
            return "int4 weights run on the CPU kernel"
    return None


def _fuse(modules: list[torch.nn.Linear]) -> torch.Tensor:
    """One matrix for several projections; each module's weight becomes a view of its rows (nothing is copied
    twice, and the module computes exactly what it did). Fusing again (another runner over the same model) finds
    the matrix already there and copies nothing."""
    fused = getattr(modules[0], "_pasta_fused", None)
    if fused is not None and fused.dtype == modules[0].weight.dtype and fused.device == modules[0].weight.device:
        start = fused.data_ptr()
        for m in modules:
            if m.weight.data_ptr() != start:
                break
            start += m.weight.numel() * m.weight.element_size()
        else:
            return fused
    fused = torch.cat([m.weight.data for m in modules])
    modules[0]._pasta_fused = fused
    start = 0
    for m in modules:
        rows = m.weight.shape[0]
        m.weight.data = fused[start : start + rows]
        start += rows
    return fused


class LlamaForward:
    """Called like the Hugging Face model with the arguments `pasta.runner.call_model` passes (input_ids,
    position_ids, a boolean attention_mask [B, 1, q, k], the cache, logits_to_keep); returns `.logits`."""

    def __init__(self, model: torch.nn.Module, quantize: str | None = None) -> None:
        reason = _unsupported_reason(model, quantize)
        if reason is not None:
            raise ValueError(f"LlamaForward does not mirror this model: {reason}")
        self.model = model
        self.quantize = quantize
        self.config = model.config
        inner = model.model
        self.embed = inner.embed_tokens
        self.rotary = inner.rotary_emb
        self.final_norm = inner.norm
        self.lm_head = Int8Linear(model.lm_head.weight) if quantize == "int4" else model.lm_head
        self.eps = float(self.config.rms_norm_eps)
        first = inner.layers[0].self_attn
        self.head_dim = first.head_dim
        self.heads = first.q_proj.out_features // self.head_dim
        self.kv_heads = first.k_proj.out_features // self.head_dim
        self.groups = self.heads // self.kv_heads
        self.scaling = first.scaling
        self.layers: list[_Layer] = []
        for layer in inner.layers:
            attention, mlp = layer.self_attn, layer.mlp
            self.layers.append(_Layer(
                input_norm=layer.input_layernorm.weight, post_norm=layer.post_attention_layernorm.weight,
                qkv=self._linear([attention.q_proj, attention.k_proj, attention.v_proj]),
                o=self._linear([attention.o_proj]),
                gate_up=self._linear([mlp.gate_proj, mlp.up_proj]), down=self._linear([mlp.down_proj]),
                q_norm=attention.q_norm.weight if hasattr(attention, "q_norm") else None,
                k_norm=attention.k_norm.weight if hasattr(attention, "k_norm") else None,
            ))
        self._weights_at = self._where()

    def _linear(self, modules: list[torch.nn.Module]) -> Callable[[torch.Tensor], torch.Tensor]:
        """One projection for several modules that read the same input (their outputs side by side)."""
        parts = [_lora_parts(m) for m in modules]
        bases = [base for base, _ in parts]
        bias = None if bases[0].bias is None else torch.cat([b.bias.data for b in bases])
        if self.quantize is None:
            return _Dense(_fuse(bases) if len(bases) > 1 else bases[0].weight, bias)
        loras = [lora for _, lora in parts]
        low_rank = LowRank(loras, [b.out_features for b in bases]) if any(loras) else None
        return Int4Linear(torch.cat([b.weight.data for b in bases]), bias, low_rank)

    @staticmethod
    def supports(model: torch.nn.Module, quantize: str | None = None) -> bool:
        return _unsupported_reason(model, quantize) is None

    def parameters(self):  # what pasta.runner.call_model asks of a model (dtype and device)
        return self.model.parameters()

    def _where(self) -> tuple:
        q = self.model.model.layers[0].self_attn.q_proj.weight
        return q.data_ptr(), q.dtype, q.device

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # As LlamaRMSNorm: the statistics in float32, the scale applied in the input dtype.
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * h.to(dtype)

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        # As transformers' sdpa_attention_forward: one query row attends on the key/value heads directly (the
        # query heads of a group become its rows); longer queries repeat the key/value heads.
        b, _, length, d = q.shape
        if self.groups > 1:
            if length == 1:
                q = q.reshape(b, self.kv_heads, self.groups, d)
            else:
                k = k[:, :, None].expand(b, self.kv_heads, self.groups, *k.shape[2:]).reshape(b, self.heads, -1, d)
                v = v[:, :, None].expand(b, self.kv_heads, self.groups, *v.shape[2:]).reshape(b, self.heads, -1, d)
        causal = mask is None and length > 1
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scaling, is_causal=causal)
        return out.reshape(b, -1, length, d).transpose(1, 2).reshape(b, length, -1)

    @torch.inference_mode()
    def __call__(self, *, input_ids: torch.Tensor, position_ids: torch.Tensor,
                 attention_mask: torch.Tensor | None = None, use_cache: bool = False, cache=None,
                 past_key_values=None, logits_to_keep: torch.Tensor | None = None) -> _Output:
        if self._where() != self._weights_at:  # moved or cast since: the fused matrices are stale
            self.__init__(self.model, self.quantize)
        cache = cache if cache is not None else past_key_values
        if attention_mask is not None and attention_mask.dtype != torch.bool:
            raise ValueError("LlamaForward takes a boolean attention mask (True = attend)")
        x = self.embed(input_ids)
        b, length, _ = x.shape
        if attention_mask is not None:  # additive once per step (SDPA would convert the boolean mask in every layer,
            # to exactly this: 0 where True, -inf where False, in the query's dtype)
            attention_mask = torch.zeros(attention_mask.shape, dtype=x.dtype, device=x.device).masked_fill_(
                attention_mask.logical_not(), float("-inf"))
        cos, sin = self.rotary(x, position_ids)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        nq, nkv, d = self.heads * self.head_dim, self.kv_heads * self.head_dim, self.head_dim
        for index, layer in enumerate(self.layers):
            h = self._rms(x, layer.input_norm)
            qkv = layer.qkv(h)
            v = qkv[..., nq + nkv :].view(b, length, -1, d).transpose(1, 2)
            if layer.q_norm is None:  # q and k rotated as one tensor: half the small ops
                qk = self._rotate(qkv[..., : nq + nkv].view(b, length, -1, d).transpose(1, 2), cos, sin)
                q, k = qk[:, : self.heads], qk[:, self.heads :]
            else:
                q = self._rms(qkv[..., :nq].view(b, length, -1, d), layer.q_norm)
                k = self._rms(qkv[..., nq : nq + nkv].view(b, length, -1, d), layer.k_norm)
                q, k = self._rotate(q.transpose(1, 2), cos, sin), self._rotate(k.transpose(1, 2), cos, sin)
            if cache is not None:
                k, v = cache.update(k, v, index)
            x = x + layer.o(self._attend(q, k, v, attention_mask))
            h = self._rms(x, layer.post_norm)
            gate, up = layer.gate_up(h).chunk(2, dim=-1)
            x = x + layer.down(F.silu(gate) * up)
        if logits_to_keep is not None:
            x = x[:, logits_to_keep]
        return _Output(logits=self.lm_head(self._rms(x, self.final_norm.weight)))
