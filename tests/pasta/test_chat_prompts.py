"""One prompt path: SFT, preference training, the interpreter, `pasta serve`, the judge's plumbing and the remote
backend build the same prompt for the same messages, with a chat template and without one (the transcript
fallback). Before, a tokenizer without a template trained on the raw prompt and was served a transcript."""

from __future__ import annotations

import pytest
from tiny import ByteTokenizer, tiny_hf_folder

from pasta.backends.openai import RemoteConfig, RemoteInterpreter
from pasta.chat import prompt_ids, prompt_text, transcript
from pasta.interpreter import Interpreter
from pasta.serve.app import chat_prompt_ids as serve_prompt_ids
from pasta.serve.schemas import Message
from pasta.train.sft import chat_prompt_ids as sft_prompt_ids


@pytest.fixture(scope="module", params=["template", "no-template"])
def interp(request, tmp_path_factory):
    if request.param == "no-template":
        from tiny import tiny_model

        return Interpreter(tiny_model("llama"), ByteTokenizer())
    folder = tiny_hf_folder(tmp_path_factory.mktemp("hf"))
    return Interpreter.from_pretrained(str(folder), dtype="float32", adapter=False)


def test_training_and_serving_build_the_same_prompt_ids(interp):
    tok = interp.tokenizer
    question = "Give two tips for sleeping well."
    trained = sft_prompt_ids(tok, question)
    served = serve_prompt_ids(tok, [Message(role="user", content=question)])
    assert trained == served == interp.prompt_ids(question) == prompt_ids(tok, question)
    # The remote backend sends text; a server tokenizes it back to the same ids.
    remote = RemoteInterpreter(RemoteConfig(base_url="http://unused"))
    remote._template = tok if getattr(tok, "chat_template", None) else None
    text = remote.prompt_text(question)
    assert text == prompt_text(tok if remote._template is not None else None, question)
    if remote._template is None:
        assert text == transcript([{"role": "user", "content": question}])
        assert tok.encode(text, add_special_tokens=True) == trained
    # A system + user conversation, with `developer` read as `system`, agrees too.
    convo = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": question}]
    msgs = [Message(role="developer", content="Be brief."), Message(role="user", content=question)]
    assert serve_prompt_ids(tok, msgs) == interp.prompt_ids(convo) == prompt_ids(
        tok, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}])


def test_fallback_is_the_transcript_and_raw_text_stays_raw():
    tok = ByteTokenizer()
    ids = prompt_ids(tok, "hi")
    assert ids == tok.encode("user: hi\nassistant: ", add_special_tokens=True)
    from tiny import tiny_model

    interp = Interpreter(tiny_model("llama"), tok)
    assert interp.prompt_ids("hi", chat=False) == tok.encode("hi", add_special_tokens=True)
    with pytest.raises(ValueError, match="empty"):
        prompt_ids(tok, [])
