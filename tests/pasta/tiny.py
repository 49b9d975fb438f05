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
    elif family == "qwen3":  # per-head q/k norms
        from transformers import Qwen3Config

        config = Qwen3Config(**common, head_dim=16)
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


class ScriptedProgram:
    """A scripted model around a `Decoding`: whatever is sampled, the main thread writes `main` and the k-th chunk
    `chunks[k]` (after its forced <async>), then EOS. A row a guard overrides does not consume the script (the
    script continues where the model would). Tag syntax the interpreter feeds by itself (jump-forward) is taken
    from the script too, and must be what the script says next. Runs on the engine (`Interpreter.run`) or the
    oracle (`reference_generate`) like the `Decoding` it wraps."""

    def __init__(self, decoding, main: str, chunks: list[str], tokenizer) -> None:
        self.decoding, self.tokenizer, self.chunks = decoding, tokenizer, chunks
        self.scripts = {0: tokenizer.encode(main, add_special_tokens=False)}
        self.used: dict[int, int] = {}

    def __getattr__(self, name):  # done, layout, steps, stitch, threads, ... of the wrapped decoding
        return getattr(self.decoding, name)

    def next_inputs(self, max_prefill=None):
        return self.decoding.next_inputs(max_prefill)

    @property
    def sampler_threads(self) -> list[int]:
        return self.decoding.sampler_threads

    def result(self, wall_s: float):
        return self.decoding.result(wall_s)

    def advance(self, sampled: list[int]) -> list[int]:
        decoding, eos = self.decoding, self.tokenizer.eos_token_id
        samplers = decoding.sampler_threads
        draft = decoding.draft_rows  # a promise draft: row first + i predicts the main script's token k + i
        first_main = self.used.get(0, 0)
        tokens = []
        for row, index in enumerate(samplers):
            thread = decoding.threads[index]
            if draft is not None and index == 0 and draft[0] <= row <= draft[0] + len(draft[1]):
                at = first_main + row - draft[0]
                tokens.append(self.scripts[0][at] if at < len(self.scripts[0]) else eos)
                continue
            if thread.inject:
                tokens.append(0)  # replaced by the guard's token
                continue
            if index not in self.scripts:
                body = self.chunks[index - 1] if index - 1 < len(self.chunks) else ""
                self.scripts[index] = self.tokenizer.encode(body, add_special_tokens=False)
            script = self.scripts[index]
            k = self.used.get(index, 0)
            self.used[index] = k + 1
            tokens.append(script[k] if k < len(script) else eos)
        taken = decoding.advance(tokens)
        if draft is not None:  # the confirmed draft and the model's own token after it
            self.used[0] = first_main + decoding.last_draft_accepted + 1
        main = decoding.threads[0]
        if 0 in samplers and len(main.pending) > 1:  # jump-forward: tokens fed beside the sample
            jumped, k = main.pending[1:], self.used[0]
            assert self.scripts[0][k : k + len(jumped)] == jumped, "jump-forward fed what the script does not say"
            self.used[0] = k + len(jumped)
        return taken


def drive_script(main: str, chunks: list[str], limits=None, mode: str = "async", tokenizer=None):
    """Decode a scripted model (`ScriptedProgram`) with no model at all; returns the `Decoding`."""
    from pasta.decoding import DecodeLimits, Decoding

    tok = tokenizer or ByteTokenizer()
    decoding = Decoding(tok.encode("q", add_special_tokens=False), tok, eos_ids={tok.eos_token_id},
                        limits=limits or DecodeLimits(), mode=mode)
    program = ScriptedProgram(decoding, main, chunks, tok)
    while not decoding.done:
        decoding.next_inputs()
        program.advance([0] * len(decoding.sampler_threads))
    return decoding
