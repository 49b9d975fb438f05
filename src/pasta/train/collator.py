"""Layout-exact training examples: an annotated response laid out exactly as the interpreter decodes it.

The example is replayed through the interpreter's own state machine (`pasta.decoding.Decoding`) under teacher
forcing, without a model. Tokens come out in KV-cache order (threads interleaved), each with the position id and
visibility row the interpreter gives it, and a label: the token its own thread produces next. So the loss is
computed on exactly the conditionals the model meets at inference (a test checks the log-probs agree).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..decoding import DecodeLimits, Decoding
from ..forcing import forced_program
from ..layout import LayoutConfig
from ..runner import call_model

IGNORE = -100
_UNLIMITED = DecodeLimits(max_new_tokens=10**9, max_thread_tokens=10**9, max_threads=10**6)


@dataclass
class LaidOut:
    input_ids: torch.Tensor  # [n] long, KV-cache order
    position_ids: torch.Tensor  # [n] long
    attention_mask: torch.Tensor  # [n, n] bool: row i = what token i attends to
    labels: torch.Tensor  # [n] long: next token of the same thread, or -100
    prompt_length: int
    weights: torch.Tensor | None = None  # [n] float loss weight per label (None: all 1)
    negatives: torch.Tensor | None = None  # [n, K] token ids to push down per slot (-1: none), `.unlikelihood`

    def __len__(self) -> int:
        return int(self.input_ids.numel())


def layout_example(
    tokenizer,
    prompt_ids: list[int],
    annotated: str,
    layout_config: LayoutConfig | None = None,
    eos_id: int | None = None,
    *,
    train_on_prompt: bool = False,
    main_weight: float = 1.0,
    end_with_eos: bool = True,
    negatives: str | None = None,
    empty_item_negatives: bool = True,
    correction: tuple[int, int, float] | None = None,
) -> LaidOut:
    """`main_weight`: loss weight of the main thread's labels (topics, list markers, the sync decision, the text
    around the chunks) relative to the chunks' (1). The main thread's tokens are few, but they carry the structure.
    `end_with_eos=False`: `annotated` is a cut-off answer (the rejected side of a correction pair), so the main
    thread's end of answer is laid out but not labelled (nothing says the model would have stopped there).
    `negatives`: unlikelihood candidates on the main thread's outline items (`pasta.train.unlikelihood`): "copies"
    (a good answer: the earlier item a token would copy) or "repeat" (a model's own failure, cut after a repeated
    item: that item's tokens, and no cross-entropy anywhere in the answer); with "copies", `empty_item_negatives`
    also pushes down the separators at each item's first token (an empty item).
    `correction=(index, rejected_id, weight)`: a token-level correction (the chosen side of a correction pair, where
    it parts from the model's own rejected side at the main thread's token `index`): the answer is laid out only up
    to that token, which is its one label (cross-entropy with `weight`) and has `rejected_id` as its one negative."""
    if negatives not in (None, "copies", "repeat"):
        raise ValueError(f"negatives must be None, 'copies' or 'repeat', got {negatives!r}")
    if correction is not None and negatives is not None:
        raise ValueError("a correction carries its own negative; give negatives=None")
    eos = tokenizer.eos_token_id if eos_id is None else eos_id
    program = forced_program(tokenizer, annotated, eos_id=eos)
    decoding = Decoding(
        prompt_ids, tokenizer, eos_ids={eos}, layout_config=layout_config, limits=_UNLIMITED,
        forced_main=program.main, forced_chunks=program.chunks,
    )
    token_ids: list[int] = []
    labels: list[int] = []
    weights: list[float] = []
    last_main = None  # slot of the main thread's last label (its EOS)
    main_slots: list[int] = []  # the main thread's label slots in order
    while not decoding.done and not (correction is not None and len(main_slots) > correction[0]):
        inputs = decoding.next_inputs()
        token_ids.extend(inputs.token_ids)
        labels.extend([IGNORE] * len(inputs.token_ids))
        weights.extend([0.0] * len(inputs.token_ids))
        threads = decoding.sampler_threads
        taken = decoding.advance([eos] * len(inputs.logit_rows))  # the teacher overrides these
        for row, token, thread in zip(inputs.logit_rows, taken, threads):
            labels[inputs.slots[row]] = token
            weights[inputs.slots[row]] = main_weight if thread == 0 else 1.0
            if thread == 0:
                last_main = inputs.slots[row]
                main_slots.append(last_main)
    if not end_with_eos and last_main is not None and labels[last_main] == eos:
        labels[last_main] = IGNORE
        weights[last_main] = 0.0
    n = len(token_ids)
    negative_ids = None
    if correction is not None:
        weights, negative_ids = _correction(correction, labels, main_slots, n)
    if train_on_prompt:
        labels[: len(prompt_ids) - 1] = token_ids[1 : len(prompt_ids)]
    if negatives is not None:
        labelled = [s for s in main_slots if labels[s] != IGNORE]  # not the unlabelled end of a cut answer
        negative_ids = _negatives(tokenizer, [labels[s] for s in labelled], labelled, n, negatives,
                                  empty_item_negatives)
        if negatives == "repeat":
            weights = [0.0] * n  # unlikelihood alone: no label of the model's own failure is a target
    return LaidOut(
        input_ids=torch.tensor(token_ids, dtype=torch.long),
        position_ids=torch.tensor(decoding.layout.positions[:n], dtype=torch.long),
        attention_mask=decoding.layout.full_mask()[:n, :n],
        labels=torch.tensor(labels, dtype=torch.long),
        prompt_length=len(prompt_ids),
        weights=None if main_weight == 1.0 and negatives != "repeat" and correction is None
        else torch.tensor(weights, dtype=torch.float),
        negatives=negative_ids,
    )


def _correction(correction: tuple[int, int, float], labels: list[int], main_slots: list[int],
                n: int) -> tuple[list[float], torch.Tensor]:
    index, rejected_id, weight = correction
    if index >= len(main_slots):
        raise ValueError(f"correction at main token {index}: the answer's main thread has {len(main_slots)} tokens")
    slot = main_slots[index]
    if labels[slot] == rejected_id:
        raise ValueError(f"correction at main token {index}: the chosen token is the rejected one ({rejected_id})")
    weights = [0.0] * n
    weights[slot] = weight
    negative_ids = torch.full((n, 1), -1, dtype=torch.long)
    negative_ids[slot, 0] = rejected_id
    return weights, negative_ids


def _negatives(tokenizer, main_tokens: list[int], main_slots: list[int], n: int, kind: str,
               empty_items: bool) -> torch.Tensor:
    from .unlikelihood import copy_negatives, repeat_negatives, separator_tokens, token_pieces

    pieces = token_pieces(tokenizer, main_tokens)
    if kind == "copies":
        found = copy_negatives(main_tokens, pieces, separator_tokens(tokenizer) if empty_items else frozenset())
    else:
        found = repeat_negatives(main_tokens, pieces)
    out = torch.full((n, max((len(ids) for ids in found.values()), default=0)), -1, dtype=torch.long)
    for index, ids in found.items():
        out[main_slots[index], : len(ids)] = torch.tensor(ids)
    return out


def collate(examples: list[LaidOut], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-pad a batch. Padding rows attend only to themselves (a fully masked row would give NaN)."""
    longest = max(len(e) for e in examples)
    batch = len(examples)
    input_ids = torch.full((batch, longest), pad_id, dtype=torch.long)
    position_ids = torch.zeros((batch, longest), dtype=torch.long)
    labels = torch.full((batch, longest), IGNORE, dtype=torch.long)
    mask = torch.eye(longest, dtype=torch.bool).repeat(batch, 1, 1)
    weighted = any(e.weights is not None for e in examples)
    weights = torch.zeros((batch, longest), dtype=torch.float)
    width = max((e.negatives.size(1) for e in examples if e.negatives is not None), default=None)
    negatives = None if width is None else torch.full((batch, longest, max(width, 1)), -1, dtype=torch.long)
    for b, e in enumerate(examples):
        n = len(e)
        input_ids[b, :n] = e.input_ids
        position_ids[b, :n] = e.position_ids
        labels[b, :n] = e.labels
        mask[b, :n, :n] = e.attention_mask
        weights[b, :n] = e.weights if e.weights is not None else (e.labels != IGNORE).float()
        if negatives is not None and e.negatives is not None:
            negatives[b, :n, : e.negatives.size(1)] = e.negatives
    out = {"input_ids": input_ids, "position_ids": position_ids, "attention_mask": mask[:, None], "labels": labels}
    if weighted:
        out["weights"] = weights
    if negatives is not None:
        out["negatives"] = negatives
    return out


def forward_laid_out(model, batch: dict[str, torch.Tensor]):
    return call_model(model, batch["input_ids"], batch["position_ids"], batch["attention_mask"])


def token_logprobs(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(label) per position [B, n] with 0 where unlabelled, label mask [B, n]). Labels are already aligned
    with the token whose logits predict them: no shift."""
    logits = forward_laid_out(model, batch).logits.float()
    labels = batch["labels"]
    valid = labels != IGNORE
    logp = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    return logp * valid, valid


def sequence_logprob(model, laid_out: LaidOut | list[LaidOut], pad_id: int = 0) -> torch.Tensor:
    """Sum of log p(label) over labelled positions: a scalar for one example, [B] for a list."""
    examples = laid_out if isinstance(laid_out, list) else [laid_out]
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in collate(examples, pad_id).items()}
    logp, _ = token_logprobs(model, batch)
    sums = logp.sum(dim=-1)
    return sums if isinstance(laid_out, list) else sums[0]


def causal_lm_loss(model, batch: dict[str, torch.Tensor], unlikelihood: float = 0.0) -> torch.Tensor:
    """Mean token cross-entropy over labelled positions (the SFT loss); weighted mean when the batch has weights.
    Plus `unlikelihood` x the mean unlikelihood loss of the batch's negative candidates, when it has any."""
    logits = forward_laid_out(model, batch).logits.float()
    cross_entropy = _cross_entropy(logits, batch)
    if unlikelihood and "negatives" in batch:
        from .unlikelihood import unlikelihood_loss

        return cross_entropy + unlikelihood * unlikelihood_loss(logits, batch["negatives"].to(logits.device))
    return cross_entropy


def _cross_entropy(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    flat = logits.reshape(-1, logits.size(-1))
    labels = batch["labels"].reshape(-1)
    if "weights" not in batch:
        return F.cross_entropy(flat, labels, ignore_index=IGNORE)
    weights = batch["weights"].reshape(-1).to(flat.device)
    losses = F.cross_entropy(flat, labels, ignore_index=IGNORE, reduction="none")
    return (losses * weights).sum() / weights.sum().clamp(min=1e-9)
