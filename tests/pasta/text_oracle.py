"""An oracle for teacher-forced decoding that shares no visibility or position code with the engine.

From the annotated text alone (a regex, not `pasta.lang`'s parser) and the rules written in `pasta/layout.py`'s
docstring, it derives every fed token's position and the set of tokens it sees, builds its own [n, n] mask (its own
sliding windows, its own eager float mask), runs the model once over the whole answer with no cache, and returns
every thread's next-token logits, in the order the thread predicts them. It knows nothing of `Layout`, `Decoding`,
`model_attention_mask` or the KV cache, so a bug there cannot hide in both.

Scope: well-formed programs where every `<async>` follows its promise and ends with `</async>`, decoded without
limits (no budget or guard closes anything early).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from pasta.forcing import encode_piece

_TAG = re.compile(r'(<promise\b[^>]*/>|<async>.*?</async>|<sync/>)', re.DOTALL)
_TOKENS = re.compile(r'\btokens="(\d+)"')


@dataclass
class _Chunk:
    tokens: list[int]  # "<async>" + body + "</async>", all fed
    opening: int  # how many of them are the forced opening tag (fed, not predicted)
    fork: int  # index, in the main thread, of its promise's last token
    promised: int | None  # the tokens attribute
    join: int | None = None  # index of the main token that completes the sync that joins it
    start: int = 0  # its first position


def oracle_logits(model, tokenizer, prompt_ids: list[int], annotated: str, eos_id: int, *, reserve_factor: float = 2.0,
                  default_tokens: int = 64, max_reserve: int = 4096) -> list[torch.Tensor]:
    """Per thread (main first, then chunks in promise order): logits [predictions, vocab], fp32."""
    main: list[int] = []
    chunks: list[_Chunk] = []
    syncs: list[int] = []  # main index of each sync's last token
    opening = encode_piece(tokenizer, "<async>")
    for piece in _TAG.split(annotated):
        if not piece:
            continue
        if piece.startswith("<async>"):
            body = piece[len("<async>"):-len("</async>")]
            chunks[-1].tokens = opening + encode_piece(tokenizer, body) + encode_piece(tokenizer, "</async>")
            continue
        main.extend(encode_piece(tokenizer, piece))
        if piece.startswith("<promise"):
            m = _TOKENS.search(piece)
            chunks.append(_Chunk([], len(opening), len(main) - 1, int(m.group(1)) if m else None))
        elif piece == "<sync/>":
            syncs.append(len(main) - 1)
    main.append(eos_id)
    fed_main = main[:-1]
    for c in chunks:
        c.join = next(s for s in syncs if s > c.fork)  # the first sync after its promise

    # Positions, by the docstring's rules.
    P = len(prompt_ids)
    main_pos: list[int] = []
    p = P
    for i in range(len(fed_main)):
        joined = [c for c in chunks if c.join == i]
        if joined:  # the token that completes a sync
            p = max([p] + [c.start + len(c.tokens) for c in joined])
        main_pos.append(p)
        p += 1
        for c in chunks:
            if c.fork == i:
                c.start = p  # right after the promise tag
                predicted = default_tokens if c.promised is None else c.promised
                p += int(min(max_reserve, max(1, round(reserve_factor * predicted))))

    # One sequence: prompt, main, then each chunk; a token's identity is (thread, index).
    ids = list(prompt_ids) + fed_main + [t for c in chunks for t in c.tokens]
    who = [("prompt", i) for i in range(P)] + [("main", i) for i in range(len(fed_main))]
    who += [(k, i) for k, c in enumerate(chunks) for i in range(len(c.tokens))]
    pos = list(range(P)) + main_pos + [c.start + i for c in chunks for i in range(len(c.tokens))]

    def sees(q, k) -> bool:
        (tq, iq), (tk, ik) = q, k
        if tk == "prompt":
            return tq != "prompt" or ik <= iq
        if tq == "prompt":
            return False
        if tq == "main":
            if tk == "main":
                return ik <= iq
            return chunks[tk].join <= iq  # every later main token sees a joined chunk whole
        if tk == "main":
            return ik <= chunks[tq].fork  # the main thread through its promise tag
        if tk == tq:
            return ik <= iq
        return chunks[tk].join <= chunks[tq].fork  # chunks joined before its promise

    n = len(ids)
    mask = torch.tensor([[sees(who[a], who[b]) for b in range(n)] for a in range(n)])
    logits = _forward(model, ids, pos, mask)
    index = {w: i for i, w in enumerate(who)}
    out = [logits[[index[("prompt", P - 1)]] + [index[("main", i)] for i in range(len(main) - 1)]]]
    for k, c in enumerate(chunks):
        out.append(logits[[index[(k, i)] for i in range(c.opening - 1, len(c.tokens) - 1)]])
    return out


def _forward(model, ids: list[int], pos: list[int], mask: torch.Tensor) -> torch.Tensor:
    config = model.config
    positions = torch.tensor(pos)
    window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
    layer_types = getattr(config, "layer_types", None)
    near = (positions[:, None] - positions[None, :]) < window if window else None

    def as_model_wants(m: torch.Tensor) -> torch.Tensor:
        m = m[None, None]
        if config._attn_implementation == "eager":
            return torch.zeros(m.shape).masked_fill(~m, torch.finfo(torch.float32).min)
        return m

    if window and layer_types is not None and "sliding_attention" in layer_types:
        attention = {"full_attention": as_model_wants(mask), "sliding_attention": as_model_wants(mask & near)}
    elif window and layer_types is None:
        attention = as_model_wants(mask & near)
    else:
        attention = as_model_wants(mask)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), position_ids=positions[None], attention_mask=attention,
                    use_cache=False)
    return out.logits[0].float()
