"""Token-level corrections (SFTConfig.correction_data): where a correction pair's chosen answer parts from the
model's own rejected one, the chosen token is the one label and the rejected token the one negative. Checked against
the full layout (the cut example sees exactly what the full one sees at that slot) and by training a tiny model."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import ByteTokenizer, tiny_model

from pasta.layout import LayoutConfig
from pasta.train.collator import causal_lm_loss, collate, forward_laid_out, layout_example
from pasta.train.sft import SFTConfig, correction_point, read_correction_rows

TOK = ByteTokenizer()
CHOSEN = ('Sure:\nOverview: ab; cd.\n1. <promise topic="1/2 ab" tokens="2"/><async>ab: x</async>\n'
          '2. <promise topic="2/2 cd" tokens="2"/><async>cd: y</async>\n<sync/>Done.')
REPEAT = "Sure:\nOverview: ab; cd; ab;"  # the model went on with a copy where the outline should end
# the model wrote a third list item where the list should sync; its chunk bodies differ from the chosen ones
PAST_LIST = ('Sure:\nOverview: ab; cd.\n1. <promise topic="1/2 ab" tokens="2"/><async>ab: other</async>\n'
             '2. <promise topic="2/2 cd" tokens="2"/><async>cd: words</async>\n3.')


def _point_text(text: str, index: int) -> str:
    from pasta.forcing import forced_program

    return TOK.decode(forced_program(TOK, text).main[:index])


def test_correction_point_is_the_first_main_thread_token_where_the_sides_part():
    index, rejected = correction_point(TOK, CHOSEN, REPEAT)
    assert _point_text(CHOSEN, index) == "Sure:\nOverview: ab; cd" and rejected == ord(";")
    # chunk bodies are not the main thread's: they differ, yet the sides part where the main thread does
    index, rejected = correction_point(TOK, CHOSEN, PAST_LIST)
    assert _point_text(CHOSEN, index) == ('Sure:\nOverview: ab; cd.\n1. <promise topic="1/2 ab" tokens="2"/>\n'
                                          '2. <promise topic="2/2 cd" tokens="2"/>\n') and rejected == ord("3")
    assert correction_point(TOK, CHOSEN, "Sure:\nOverview: ab") is None  # a prefix: nothing to correct


def test_a_correction_sees_what_the_full_answer_sees_at_its_slot():
    torch.manual_seed(0)
    model = tiny_model()
    prompt = TOK.encode("q")
    for rejected, chosen_char in ((REPEAT, "."), (PAST_LIST, "<")):
        index, rejected_id = correction_point(TOK, CHOSEN, rejected)
        cut = layout_example(TOK, prompt, CHOSEN, LayoutConfig(), eos_id=TOK.eos_token_id,
                             correction=(index, rejected_id, 10.0))
        full = layout_example(TOK, prompt, CHOSEN, LayoutConfig(), eos_id=TOK.eos_token_id)
        slots = (cut.weights > 0).nonzero().flatten().tolist()
        assert len(slots) == 1 and cut.weights[slots[0]] == 10.0
        slot = slots[0]
        assert chr(cut.labels[slot]) == chosen_char and cut.negatives[slot].tolist() == [rejected_id]
        assert (cut.negatives >= 0).sum() == 1
        assert len(cut) < len(full)  # laid out only as far as the decision
        # the cut layout is the full one's prefix: same tokens, positions and mask, so the same logits at the slot
        n = len(cut)
        assert torch.equal(cut.input_ids, full.input_ids[:n]) and torch.equal(cut.position_ids, full.position_ids[:n])
        with torch.no_grad():
            cut_logits = forward_laid_out(model, collate([cut], TOK.pad_token_id)).logits[0, slot]
            full_logits = forward_laid_out(model, collate([full], TOK.pad_token_id)).logits[0, slot]
        torch.testing.assert_close(cut_logits, full_logits, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="negatives=None"):
        layout_example(TOK, prompt, CHOSEN, LayoutConfig(), eos_id=TOK.eos_token_id, negatives="copies",
                       correction=(3, 0, 1.0))
    with pytest.raises(ValueError, match="is the rejected one"):
        layout_example(TOK, prompt, CHOSEN, LayoutConfig(), eos_id=TOK.eos_token_id, correction=(0, ord("S"), 1.0))


def test_training_on_a_correction_moves_the_decision():
    torch.manual_seed(0)
    model = tiny_model()
    index, rejected_id = correction_point(TOK, CHOSEN, REPEAT)
    laid = layout_example(TOK, TOK.encode("q"), CHOSEN, LayoutConfig(), eos_id=TOK.eos_token_id,
                          correction=(index, rejected_id, 1.0))
    batch = collate([laid], pad_id=TOK.pad_token_id)
    slot = int((laid.weights > 0).nonzero()[0])

    def probs() -> tuple[float, float]:
        with torch.no_grad():
            p = torch.softmax(forward_laid_out(model, batch).logits[0, slot].float(), -1)
        return p[ord(".")].item(), p[ord(";")].item()

    before = probs()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(5):
        optimizer.zero_grad()
        causal_lm_loss(model, batch, unlikelihood=1.0).backward()
        optimizer.step()
    after = probs()
    assert after[0] > before[0] and after[1] < before[1]


def test_correction_rows_and_config(tmp_path, caplog):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join([
        json.dumps({"prompt": "p", "kind": "outline_repeat", "chosen": CHOSEN, "rejected": REPEAT}),
        json.dumps({"prompt": "p", "kind": "outline_done", "chosen": CHOSEN, "rejected": PAST_LIST}),
        json.dumps({"prompt": "p", "chosen": CHOSEN}),
        "[1, 2]",
    ]) + "\n")
    rows = read_correction_rows([str(pairs)])
    assert [r["kind"] for r in rows] == ["outline_repeat", "outline_done"]
    assert "pairs.jsonl:3" in caplog.text and "pairs.jsonl:4" in caplog.text
    assert [r["kind"] for r in read_correction_rows([str(pairs)], kinds=["outline_done"])] == ["outline_done"]
    data = tmp_path / "sft.jsonl"
    data.write_text(json.dumps({"prompt": "p", "annotated": CHOSEN}) + "\n")
    with pytest.raises(ValueError, match="unlikelihood"):
        SFTConfig(data=[str(data)], output_dir=str(tmp_path / "o"), correction_data=[str(pairs)])
    with pytest.raises(ValueError, match="correction_weight"):
        SFTConfig(data=[str(data)], output_dir=str(tmp_path / "o"), unlikelihood=1.0, correction_data=[str(pairs)],
                  correction_weight=0.0)
    with pytest.raises(FileNotFoundError):
        SFTConfig(data=[str(data)], output_dir=str(tmp_path / "o"), unlikelihood=1.0, correction_data=["nope.jsonl"])
