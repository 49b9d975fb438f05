"""Tiny, randomly initialised models and a byte-level tokenizer: fast, offline test fixtures."""

from __future__ import annotations

import torch


class ByteTokenizer:
    """256 byte tokens + BOS/EOS/PAD. Multi-token tags and split UTF-8 characters exercise the interpreter."""

    bos_token_id = 256
    eos_token_id = 257
    pad_token_id = 258
    vocab_size = 259
    chat_template = None
    eos_token = "<eos>"

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = list(text.encode("utf-8"))
        return ([self.bos_token_id] + ids) if add_special_tokens else ids

    def decode(self, ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool = False) -> str:
        data = bytes(i for i in ids if i < 256)
        return data.decode("utf-8", errors="replace")

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": self.encode(text, add_special_tokens)}


def tiny_model(family: str = "llama", seed: int = 0, vocab: int = 259, dtype=torch.float32):
    from transformers import AutoModelForCausalLM, GemmaConfig, LlamaConfig, Qwen2Config, Gemma3TextConfig

    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                  eos_token_id=257, bos_token_id=256, pad_token_id=258)
    if family == "llama":
        config = LlamaConfig(**common)
    elif family == "qwen2":
        config = Qwen2Config(**common)
    elif family == "gemma":
        config = GemmaConfig(**common, head_dim=16)
    elif family == "gemma3":
        # Sliding-window layers with a small window, so the window actually cuts.
        config = Gemma3TextConfig(**common, head_dim=16, sliding_window=24, layer_types=["sliding_attention", "full_attention"])
    else:
        raise ValueError(family)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    return model
