"""The one prompt path: chat messages -> the text or token ids a model reads.

With a chat template: the tokenizer's template with `add_generation_prompt=True`. Without one, the one fallback: a
plain transcript, "role: content" per message and a final "assistant: ", encoded with the tokenizer's special
tokens. SFT, preference optimization, the interpreter, `pasta serve`, the local judge and the remote backend all
build prompts here, so a model is trained on exactly the prompt it is served (and a test checks it).
"""

from __future__ import annotations

from typing import Any

Messages = list[dict[str, Any]]


def as_messages(prompt: str | Messages) -> Messages:
    """A user message, or a list of {"role", "content"} messages (`developer` is read as `system`)."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if not messages:
        raise ValueError("empty message list")
    return [{**m, "role": "system" if m.get("role") == "developer" else m.get("role")} for m in messages]


def has_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def transcript(messages: Messages) -> str:
    """The fallback for a tokenizer without a chat template."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "


def prompt_text(tokenizer, prompt: str | Messages) -> str:
    """The prompt as text (for text APIs such as the remote backend's completions)."""
    messages = as_messages(prompt)
    if tokenizer is not None and has_template(tokenizer):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return transcript(messages)


def prompt_ids(tokenizer, prompt: str | Messages) -> list[int]:
    """The prompt as token ids."""
    messages = as_messages(prompt)
    if has_template(tokenizer):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)
    return tokenizer.encode(transcript(messages), add_special_tokens=True)
