"""No repeated outline items (pasta.outline_bans, DecodeLimits.outline_no_repeat): which token is banned (the one completing a copy), and a
looping model decoded greedily through `Decoding.choose` writes a new item where it would have copied one."""

from __future__ import annotations

import pytest
import torch
from tiny import ByteTokenizer, tiny_model

from pasta.decoding import DecodeLimits, Decoding
from pasta.interpreter import Interpreter
from pasta.outline_bans import outline_copy_bans, outline_items
from pasta.sampling import SamplingParams

TOK = ByteTokenizer()
# A vocabulary of whole words, to test items of one token and multi-token items that share a first token.
WORDS = ["Overview", ":", " Basil", " Mint", ";", " The", " design", " cost", " of", " it", ".", "s;", " Sage"]
ID = {w: i for i, w in enumerate(WORDS)}


def words(*pieces: str) -> list[int]:
    return [ID[p] for p in pieces]


def banned(*pieces: str) -> set[str]:
    return {WORDS[i] for i in outline_copy_bans(words(*pieces), WORDS.__getitem__)}


def test_items_split_at_semicolons_after_the_prefix():
    assert outline_items(words("Overview", ":", " Basil", ";", " The", " design", ";"), WORDS.__getitem__) == [
        [ID[" Basil"]], [ID[" The"], ID[" design"]], []]
    # A ';' token that carries the end of an item ("s;") belongs to that item.
    assert outline_items(words("Overview", ":", " Mint", "s;", " Sage"), WORDS.__getitem__) == [
        [ID[" Mint"], ID["s;"]], [ID[" Sage"]]]
    assert outline_items(words(" The", " design", ";"), WORDS.__getitem__) is None  # not an outline line


@pytest.mark.parametrize("line, expected", [
    # An item of one token is banned as the next item's first token...
    (("Overview", ":", " Basil", ";"), {" Basil"}),
    (("Overview", ":", " Basil", ";", " Mint", ";"), {" Basil", " Mint"}),
    # ...but a longer item's first token is free (items may share their first word)...
    (("Overview", ":", " The", " design", ";"), set()),
    # ...and so is every token of a shared prefix but the one that would complete the copy, for each item it copies.
    (("Overview", ":", " The", " design", ";", " The"), {" design"}),
    (("Overview", ":", " The", " design", " of", " it", ";", " The", " cost", ";", " The"), {" cost"}),
    (("Overview", ":", " The", " design", " of", " it", ";", " The", " design"), set()),
    (("Overview", ":", " The", " design", " of", " it", ";", " The", " design", " of"), {" it"}),
    # A carried ';' ("Mint" + "s;") is banned where it would complete the copy.
    (("Overview", ":", " Mint", "s;", " Mint"), {"s;"}),
    # Parted from every earlier item: nothing to ban.
    (("Overview", ":", " The", " design", ";", " The", " cost"), set()),
    # The first item, an ended outline and a line that is no outline ban nothing.
    (("Overview", ":", " Basil"), set()),
    (("Overview", ":", " Basil", ";", " Mint", "."), set()),
    ((" Basil", ";", " Basil"), set()),
])
def test_the_token_that_would_continue_a_copy_is_banned(line, expected):
    assert banned(*line) == expected


def _greedy_loop(limits: DecodeLimits, mode: str = "async") -> Decoding:
    """Greedy decoding of a model that loops on its outline: its first choice spells TARGET (the first item
    again), its second an 'x'; once its text parts from TARGET it ends the line with '.' and stops."""
    target = "Overview: ab; ab; ab.\n"
    decoding = Decoding(TOK.encode("q", add_special_tokens=False), TOK, eos_ids={TOK.eos_token_id}, limits=limits,
                        mode=mode)
    while not decoding.done:
        decoding.next_inputs()
        text = TOK.decode(decoding.threads[0].tokens)
        logits = torch.zeros(len(decoding.sampler_threads), TOK.vocab_size)
        if target.startswith(text) and len(text) < len(target):
            first = target[len(text)]
        else:
            first = {"x": ".", ".": "\n"}.get(text[-1])
        logits[0, TOK.eos_token_id if first is None else ord(first)] = 2.0
        logits[0, ord("x")] = max(float(logits[0, ord("x")]), 1.0)
        decoding.advance(decoding.choose(logits, SamplingParams(), None))
    return decoding


def test_a_looping_outline_names_a_new_item_instead():
    looped = _greedy_loop(DecodeLimits())
    assert looped.stitch()[1] == "Overview: ab; ab; ab.\n" and looped.outline_blocked == []
    banned_run = _greedy_loop(DecodeLimits(outline_no_repeat=True))
    # "Overview: ab; a" + 'b' would complete a copy of " ab": the model's second choice 'x' is taken, and it ends.
    assert banned_run.stitch()[1] == "Overview: ab; ax.\n"
    assert banned_run.outline_blocked == ["'Overview: ab; a' + 'b'"]
    assert banned_run.result(0.0).stats.outline_blocked == banned_run.outline_blocked
    from pasta.eval.answer_stats import answer_stats

    assert answer_stats(banned_run.result(0.0), TOK).outline_blocked == 1  # pasta eval's rows count it too
    sequential = _greedy_loop(DecodeLimits(outline_no_repeat=True), mode="sequential")
    assert sequential.stitch()[1] == banned_run.stitch()[1]  # the ban reads the main thread alone: same answer


def test_teacher_forcing_is_never_banned_and_the_recorded_default_applies():
    interp = Interpreter(tiny_model("llama"), TOK, decoding_defaults={"outline_no_repeat": True})
    decoding = interp.start(interp.prompt_ids("q"))
    assert decoding.limits.outline_no_repeat is True
    assert interp.start(interp.prompt_ids("q"), limits=DecodeLimits(outline_no_repeat=False)).limits \
        .outline_no_repeat is False
    forced = interp.start(interp.prompt_ids("q"), limits=DecodeLimits(outline_no_repeat=True),
                          teacher="Overview: ab; ab.")
    forced.next_inputs()
    logits = torch.randn(1, TOK.vocab_size)
    assert forced.penalize(logits) is logits


def test_on_the_real_tokenizer_billy_joel_twice_becomes_billy_ray():
    """SmolLM2's tokenizer: items start with a space-led token (' Billy') after 'Overview:' and after ';'. A model
    whose first choice spells the outline again and whose second is ' Ray' ends with another item, not a copy."""
    from pasta.models import load_tokenizer

    tok = load_tokenizer()
    target = tok.encode("Overview: Billy Joel; Billy Joel.\n", add_special_tokens=False)
    other, dot, newline = (tok.encode(t, add_special_tokens=False) for t in (" Ray", ".", ".\n"))
    assert len(other) == 1 and len(dot) == 1
    eos = tok.eos_token_id
    decoding = Decoding(tok.encode("q", add_special_tokens=False), tok, eos_ids={eos},
                        limits=DecodeLimits(outline_no_repeat=True))
    while not decoding.done:
        decoding.next_inputs()
        tokens = decoding.threads[0].tokens
        logits = torch.zeros(len(decoding.sampler_threads), len(tok))
        if tokens == target[: len(tokens)] and len(tokens) < len(target):
            first = target[len(tokens)]
        else:  # parted from the script: end the line, then the answer
            first = {other[0]: dot[0], dot[0]: newline[-1]}.get(tokens[-1], eos)
        logits[0, first] = 2.0
        logits[0, other[0]] = max(float(logits[0, other[0]]), 1.0)
        decoding.advance(decoding.choose(logits, SamplingParams(), None))
    assert decoding.stitch()[1].startswith("Overview: Billy Joel; Billy Ray.")
    assert decoding.outline_blocked == ["'Overview: Billy Joel; Billy' + ' Joel'"] and decoding.guards == []
