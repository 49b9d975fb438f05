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


def tiny_model(family: str = "llama", seed: int = 0, vocab: int = 259, dtype=torch.float32, attn: str = "sdpa"):
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
    elif family == "mistral":  # one window for every layer, no `layer_types`
        from transformers import MistralConfig

        config = MistralConfig(**common, sliding_window=8)
    elif family == "phi3":
        from transformers import Phi3Config

        config = Phi3Config(**common, sliding_window=8)
    elif family == "qwen2-sliding":  # `layer_types` from use_sliding_window / max_window_layers
        config = Qwen2Config(**common, use_sliding_window=True, sliding_window=8, max_window_layers=1)
    else:
        raise ValueError(family)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    return model


SAMPLE_TEXT = (
    'Tips:\n<promise topic="sleep" tokens="10"/><async>1. Sleep eight hours.</async>\n'
    '<promise topic="food" tokens="10"/><async>2. Eat vegetables.</async>\n<sync/>In short, be kind to yourself. '
    "The quick brown fox jumps over the lazy dog. Write a short answer to the question below, please."
)


def tiny_hf_folder(path, family: str = "llama", seed: int = 0):
    """A saved Hugging Face folder (tiny random model + a small byte-level BPE tokenizer trained here, with a chat
    template): loads through the same code paths as a real model, no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|im_start|>", "<|im_end|>", "<pad>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([SAMPLE_TEXT] * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<pad>")
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    vocab = len(fast)
    model = tiny_model(family, seed=seed, vocab=vocab)
    for cfg in (model.config, model.generation_config):
        cfg.eos_token_id = fast.eos_token_id
        cfg.bos_token_id = fast.bos_token_id
        cfg.pad_token_id = fast.pad_token_id
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path
