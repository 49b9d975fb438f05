"""Unlikelihood on repeated outline items: which tokens are pushed down, the loss in closed form, and that training
on it lowers the repeated token's probability (tiny model, byte tokenizer)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tiny import ByteTokenizer, tiny_model

from pasta.layout import LayoutConfig
from pasta.train.collator import IGNORE, causal_lm_loss, collate, forward_laid_out, layout_example
from pasta.train.sft import SFTConfig, read_repeat_rows
from pasta.train.unlikelihood import (copy_negatives, outline_items, repeat_negatives, separator_tokens, token_pieces,
                                      unlikelihood_loss)

TOK = ByteTokenizer()


def words(*pieces: str) -> tuple[list[int], list[str]]:
    """Fake token ids (one per distinct piece) and the pieces: a word-level tokenizer for the item logic."""
    vocab: dict[str, int] = {}
    return [vocab.setdefault(p, len(vocab)) for p in pieces], list(pieces)


def test_outline_items_span_the_tokens_of_each_item():
    ids, pieces = words("Intro", ":\n\n", "Overview", ":", " Head", ";", " Tail", " end", ".", "\n\n", "1", ".")
    assert outline_items(pieces) == [[[4], [6, 7]]]
    # a line cut after a separator (the guard's cut) has no empty last item; one cut inside an item keeps its part
    assert outline_items(pieces[:6]) == [[[4]]]
    assert outline_items(pieces[:7]) == [[[4], [6]]]
    # a token across an item's edge: that item is unaligned (None), the others stay
    _, merged = words("Overview", ":", " Head;", " Tail", ".\n")
    assert outline_items(merged) == [[None, [3]]]
    # not at a line start: not an outline
    assert outline_items(["See", " Overview", ":", " A", ";", " B", ".\n"]) == []


def test_copy_negatives_push_down_the_copy_never_the_target():
    ids, pieces = words("Overview", ":", " The", " Beatles", ";", " The", " Rolling", " Stones", ";", " Abba", ".\n")
    got = copy_negatives(ids, pieces)
    beatles, the, rolling = ids[3], ids[2], ids[6]
    # item 2: " The" is the target (shared start: no negative), then " Beatles" would copy item 1
    assert got[6] == [beatles]
    # item 3 starts differently from both: " The" is what a copy would write
    assert got[9] == [the]
    assert 5 not in got and rolling not in sum(got.values(), [])
    # distinct first tokens: each item start pushes down every earlier start
    ids, pieces = words("Overview", ":", " A", ";", " B", ";", " C", ".\n")
    assert copy_negatives(ids, pieces) == {4: [ids[2]], 6: sorted([ids[2], ids[4]])}
    # separators: every item's first token also pushes down an empty item (";", "."), never its own target
    separators = frozenset({ids[3], ids[7], 99})
    assert copy_negatives(ids, pieces, separators) == {2: [ids[3], ids[7], 99], 4: sorted([ids[2], ids[3], ids[7], 99]),
                                                      6: sorted([ids[2], ids[4], ids[3], ids[7], 99])}
    ids, pieces = words("Overview", ":", ";", " B", ".\n")  # an empty first item: its target is a separator
    assert copy_negatives(ids, pieces, frozenset({ids[2]})) == {}


def test_separator_tokens_are_the_tokens_made_of_semicolons_and_dots():
    assert separator_tokens(TOK) == {ord(";"), ord(".")}


def test_repeat_negatives_only_for_a_final_repeat():
    ids, pieces = words("Overview", ":", " I", " had", ";", " You", ";", " I", " had", ";")
    assert repeat_negatives(ids, pieces) == {7: [ids[7]], 8: [ids[8]]}
    assert repeat_negatives(ids[:7], pieces[:7]) == {}  # "I had; You;": no repeat
    ids, pieces = words("Overview", ":", " I", " had", ";", " I", ";")  # a prefix of an item is not a repeat
    assert repeat_negatives(ids, pieces) == {}
    assert repeat_negatives(*words("No", " outline")) == {}


def test_token_pieces_hold_a_split_character_back():
    ids = TOK.encode("Overview: Å; B.\n", add_special_tokens=False)
    pieces = token_pieces(TOK, ids)
    assert "".join(pieces) == "Overview: Å; B.\n" and len(pieces) == len(ids)
    assert outline_items(pieces)[0][0] == [9, 10, 11]  # " Å" is three bytes: the space and two halves of Å


def test_unlikelihood_loss_closed_form_and_empty_batch():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 7, requires_grad=True)
    negatives = torch.full((2, 3, 2), -1)
    negatives[0, 1] = torch.tensor([4, 2])
    negatives[1, 2, 0] = 6
    p = torch.softmax(logits.detach(), -1)
    expected = -(math.log(1 - p[0, 1, 4]) + math.log(1 - p[0, 1, 2]) + math.log(1 - p[1, 2, 6])) / 3
    loss = unlikelihood_loss(logits, negatives)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    # descent lowers the candidate's logit; rows without a candidate get no gradient
    assert logits.grad[0, 1, 4] > 0 and logits.grad[1, 2, 6] > 0 and logits.grad[0, 0].abs().sum() == 0
    none = unlikelihood_loss(logits, torch.full((2, 3, 1), -1))
    assert none.item() == 0 and none.requires_grad


ANSWER = ('Sure:\nOverview: ab; cd.\n1. <promise topic="1/2 ab" tokens="2"/><async>ab: x</async>\n'
          '2. <promise topic="2/2 cd" tokens="2"/><async>cd: y</async>\n<sync/>Done.')
REJECTED = "Sure:\nOverview: ab; cd; ab;"


def test_layout_attaches_negatives_to_the_slot_that_predicts_the_token():
    prompt = TOK.encode("q")
    good = layout_example(TOK, prompt, ANSWER, LayoutConfig(), eos_id=TOK.eos_token_id, negatives="copies")
    rows = (good.negatives >= 0).any(-1).nonzero().flatten().tolist()
    # each item's first token (its space) pushes down an empty item; in item 2 " cd", after the shared space, "c"
    # would have been "a" (a copy of " ab")
    assert [chr(good.labels[r]) for r in rows] == [" ", " ", "c"]
    assert [sorted(x for x in good.negatives[r].tolist() if x >= 0) for r in rows] == [
        [ord("."), ord(";")], [ord("."), ord(";")], [ord("a")]]
    assert good.weights is None  # cross-entropy as without negatives
    plain = layout_example(TOK, prompt, ANSWER, LayoutConfig(), eos_id=TOK.eos_token_id, negatives="copies",
                           empty_item_negatives=False)  # as row r25 was trained: copies only
    assert (plain.negatives >= 0).sum() == 1 and ord("a") in plain.negatives.flatten().tolist()
    bad = layout_example(TOK, prompt, REJECTED, LayoutConfig(), eos_id=TOK.eos_token_id, end_with_eos=False,
                         negatives="repeat")
    rows = (bad.negatives >= 0).any(-1).nonzero().flatten().tolist()
    assert [chr(bad.labels[r]) for r in rows] == [" ", "a", "b"]
    assert [bad.negatives[r, 0].item() for r in rows] == [bad.labels[r].item() for r in rows]
    assert bad.weights is not None and bad.weights.sum() == 0  # unlikelihood alone on the model's own repeat
    assert (bad.labels != IGNORE).sum() > 0
    with pytest.raises(ValueError, match="negatives"):
        layout_example(TOK, prompt, ANSWER, LayoutConfig(), eos_id=TOK.eos_token_id, negatives="all")


def test_training_on_a_repeat_lowers_its_probability():
    torch.manual_seed(0)
    model = tiny_model()
    prompt = TOK.encode("q")
    bad = layout_example(TOK, prompt, REJECTED, LayoutConfig(), eos_id=TOK.eos_token_id, end_with_eos=False,
                         negatives="repeat")
    batch = collate([bad], pad_id=TOK.pad_token_id)
    slot = int((bad.negatives >= 0).any(-1).nonzero()[1])  # the slot that writes the repeat's "a"

    def p_repeat() -> float:
        with torch.no_grad():
            logits = forward_laid_out(model, batch).logits[0, slot]
        return torch.softmax(logits.float(), -1)[ord("a")].item()

    before = p_repeat()
    assert causal_lm_loss(model, batch).item() == 0  # no cross-entropy on it: only the unlikelihood trains
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    for _ in range(3):
        optimizer.zero_grad()
        causal_lm_loss(model, batch, unlikelihood=1.0).backward()
        optimizer.step()
    assert p_repeat() < before


def test_repeat_rows_and_config(tmp_path, caplog):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join([
        json.dumps({"prompt": "p", "kind": "outline_repeat", "rejected": REJECTED, "chosen": "x"}),
        json.dumps({"prompt": "p", "kind": "one_item", "rejected": "Overview:", "chosen": "x"}),
        json.dumps({"prompt": "p", "rejected": REJECTED}),
        json.dumps({"prompt": "", "kind": "outline_repeat", "rejected": REJECTED}),
        "not json",
    ]) + "\n")
    rows = read_repeat_rows([str(pairs)])
    assert [r["annotated"] for r in rows] == [REJECTED, REJECTED]
    assert "pairs.jsonl:4" in caplog.text and "pairs.jsonl:5" in caplog.text
    data = tmp_path / "sft.jsonl"
    data.write_text(json.dumps({"prompt": "p", "annotated": ANSWER}) + "\n")
    with pytest.raises(ValueError, match="unlikelihood"):
        SFTConfig(data=[str(data)], output_dir=str(tmp_path / "o"), repeat_data=[str(pairs)])
    with pytest.raises(ValueError, match="unlikelihood"):
        SFTConfig(data=[str(data)], output_dir=str(tmp_path / "o"), unlikelihood=-1.0)
    with pytest.raises(FileNotFoundError):
        SFTConfig(data=[str(data)], output_dir=str(tmp_path / "o"), unlikelihood=1.0, repeat_data=["missing.jsonl"])
