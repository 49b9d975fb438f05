"""The LLM annotator end to end against a real loopback OpenAI-compatible server."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest
from openai_stub import OpenAIStub, Reply, chat_reply

from pasta import lang
from pasta.data.annotate_llm import annotate_llm, build_messages, load_fewshot_examples
from pasta.data.cli import main as cli_main
from pasta.data.sources import Example
from pasta.openai_client import OpenAIClient

ITEM = "is a tip with enough words to be worth its own parallel thread"


def response_for(i: int) -> str:
    return f"Answer {i}:\n\n- First {ITEM}.\n- Second {ITEM}.\n\nDone {i}."


def good_annotation(response: str) -> str:
    """What a competent annotator returns: tags added, silly token guesses, text untouched."""
    intro, rest = response.split("\n\n- ", 1)
    first, rest = rest.split("\n- ", 1)
    second, outro = rest.split("\n\n", 1)
    return (f'{intro}\n\n<promise topic="first tip" tokens="7"/><async>- {first}</async>\n'
            f'<promise topic="second tip" tokens="7000"/><async>- {second}</async>\n\n<sync/>{outro}')


def task_response(req) -> str:
    """The response the annotator was asked to annotate (from the user message of the request)."""
    m = re.search(r"\[RESPONSE TO ANNOTATE\]\n(.*)\n\[END\]", req.last_user_text, re.S)
    assert m, req.last_user_text
    return m.group(1)


def examples(n: int) -> list[Example]:
    return [Example(f"ex:{i}", f"Question {i}?", response_for(i), "test") for i in range(n)]


def read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def client_for(stub) -> OpenAIClient:
    return OpenAIClient(stub.base_url, backoff=0.01, max_backoff=0.05, max_retries=3)


def test_prompt_holds_language_description_and_examples():
    shots = load_fewshot_examples()
    msgs = build_messages("Q?", "the response", shots)
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert "<promise" in msgs[0]["content"] and "<sync/>" in msgs[0]["content"]
    assert msgs[0]["content"].count("### Example") == 7
    assert all(s.annotated in msgs[0]["content"] for s in shots)
    assert "[RESPONSE TO ANNOTATE]\nthe response\n[END]" in msgs[1]["content"]


def test_good_answer_accepted_with_tokens_rewritten(tmp_path):
    with OpenAIStub(lambda req: chat_reply(good_annotation(task_response(req)))) as stub:
        stats = annotate_llm(examples(3), client_for(stub), "annot-model", tmp_path / "out.jsonl",
                             tmp_path / "rej.jsonl", concurrency=2, count_tokens=lambda s: 23, progress=False,
                             temperature=0.3, extra_params={"seed": 1})
    assert (stats.accepted, stats.annotated, stats.rejected) == (3, 3, 0)
    rows = read(tmp_path / "out.jsonl")
    assert sorted(r["id"] for r in rows) == ["ex:0", "ex:1", "ex:2"]
    for r in rows:
        assert set(r) == {"id", "prompt", "response", "annotated", "source", "annotator"}
        assert r["annotator"] == "openai:annot-model" and r["source"] == "test"
        assert lang.strip_tags(r["annotated"]) == r["response"] == response_for(int(r["id"][3:]))
        assert [c.tokens for c in lang.to_structure(r["annotated"]).chunks] == [30, 30]  # from the counter
    body = stub.requests[0].json
    assert body["model"] == "annot-model" and body["temperature"] == 0.3 and body["seed"] == 1
    assert "max_tokens" not in body  # None is not sent
    assert (tmp_path / "rej.jsonl").read_text() == ""


def test_bad_answers_rejected_with_reasons(tmp_path):
    def handler(req):
        response = task_response(req)
        good = good_annotation(response)
        i = int(re.search(r"Answer (\d+)", response).group(1))
        if i == 0:
            return chat_reply(good.replace("First", "Primary"))  # the model rewrote the text
        if i == 1:
            return chat_reply(good.replace("</async>", "", 1))  # broken tags
        if i == 2:
            return chat_reply(good.replace('topic="first tip"', 'topic="  "'))  # empty topic
        if i == 3:
            return chat_reply(good[:40], finish_reason="length")  # ran out of tokens
        if i == 4:
            return Reply.error(400, "context length exceeded")  # a client error: no retry, recorded
        return chat_reply(good)

    with OpenAIStub(handler) as stub:
        stats = annotate_llm(examples(6), client_for(stub), "m", tmp_path / "out.jsonl", tmp_path / "rej.jsonl",
                             progress=False)
        assert len(stub.requests) == 6
    rejects = {r["id"]: r for r in read(tmp_path / "rej.jsonl")}
    assert {k: v["reason"] for k, v in rejects.items()} == {
        "ex:0": "text_changed", "ex:1": "malformed_tags", "ex:2": "empty_topic", "ex:3": "truncated",
        "ex:4": "api_error"}
    assert "Primary" in rejects["ex:0"]["detail"] and "First" in rejects["ex:0"]["detail"]
    assert "unclosed-async" in rejects["ex:1"]["detail"] or "async" in rejects["ex:1"]["detail"]
    assert rejects["ex:0"]["raw"].startswith("Answer 0")  # the model's answer is kept for inspection
    assert "400" in rejects["ex:4"]["detail"]
    assert [r["id"] for r in read(tmp_path / "out.jsonl")] == ["ex:5"]
    assert stats.reasons == {"text_changed": 1, "malformed_tags": 1, "empty_topic": 1, "truncated": 1,
                             "api_error": 1}


def test_rate_limit_then_success_is_retried(tmp_path):
    seen: dict[str, int] = {}
    lock = threading.Lock()

    def handler(req):
        response = task_response(req)
        with lock:
            seen[response] = seen.get(response, 0) + 1
            first = seen[response] == 1
        if first:
            return Reply.error(429, "slow down", headers={"Retry-After": "0"})
        return chat_reply(good_annotation(response))

    with OpenAIStub(handler) as stub:
        stats = annotate_llm(examples(4), client_for(stub), "m", tmp_path / "o.jsonl", tmp_path / "r.jsonl",
                             concurrency=4, progress=False)
        assert len(stub.requests) == 8  # each example: one 429, one success
    assert stats.accepted == 4 and stats.rejected == 0


def test_requests_run_concurrently(tmp_path):
    lock = threading.Lock()
    state = {"inflight": 0, "max": 0}

    def handler(req):
        with lock:
            state["inflight"] += 1
            state["max"] = max(state["max"], state["inflight"])
        time.sleep(0.15)
        with lock:
            state["inflight"] -= 1
        return chat_reply(good_annotation(task_response(req)))

    with OpenAIStub(handler) as stub:
        annotate_llm(examples(8), client_for(stub), "m", tmp_path / "o.jsonl", tmp_path / "r.jsonl",
                     concurrency=4, progress=False)
    assert 2 <= state["max"] <= 4


def test_resume_after_interruption_makes_no_new_requests_for_done_ids(tmp_path):
    out, rej = tmp_path / "out.jsonl", tmp_path / "rej.jsonl"
    answers = {"fail_server": True}

    def handler(req):
        response = task_response(req)
        if "Answer 2:" in response:
            return chat_reply("totally different text")  # a permanent reject
        if "Answer 3:" in response and answers["fail_server"]:
            return Reply.error(503)  # keeps failing in the first run: an api_error reject, retried later
        return chat_reply(good_annotation(response))

    with OpenAIStub(handler) as stub:
        first = annotate_llm(examples(5)[:4], client_for(stub), "m", out, rej, progress=False)
        assert first.accepted == 2 and first.reasons == {"text_changed": 1, "api_error": 1}
    # The process died while writing ex:4: a partial line at the end of the output.
    with out.open("a") as f:
        f.write('{"id": "ex:4", "prompt": "Quest')
    answers["fail_server"] = False
    with OpenAIStub(handler) as stub:
        second = annotate_llm(examples(5), client_for(stub), "m", out, rej, progress=False)
        asked = sorted(re.search(r"Answer (\d+)", task_response(r)).group(1) for r in stub.requests)
    assert asked == ["3", "4"]  # done ids (accepted or permanently rejected) are not asked again
    assert second.skipped_done == 3 and second.accepted == 2
    rows = read_lenient(out)
    assert sorted(r["id"] for r in rows) == ["ex:0", "ex:1", "ex:3", "ex:4"]  # nothing lost, nothing twice
    assert all(lang.strip_tags(r["annotated"]) == r["response"] for r in rows)
    # A third run has nothing left to do.
    with OpenAIStub(handler) as stub:
        third = annotate_llm(examples(5), client_for(stub), "m", out, rej, progress=False)
        assert stub.requests == [] and third.skipped_done == 5


def read_lenient(path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def test_cli_openai_and_structural(tmp_path, capsys):
    src = tmp_path / "src.jsonl"
    src.write_text("not json\n" + "".join(json.dumps({"id": i, "prompt": f"Q{i}", "response": response_for(i)})
                                         + "\n" for i in range(3)))
    with OpenAIStub(lambda req: chat_reply(good_annotation(task_response(req)))) as stub:
        rc = cli_main(["annotate", "--annotator", "openai", "--base-url", stub.base_url, "--model", "m",
                       "--source", str(src), "--out", str(tmp_path / "llm.jsonl"), "--limit", "2",
                       "--concurrency", "2", "--no-progress"])
    assert rc == 0
    assert [r["id"] for r in read(tmp_path / "llm.jsonl")] in (["src:0", "src:1"], ["src:1", "src:0"])
    assert (tmp_path / "llm.rejects.jsonl").exists()
    text = capsys.readouterr().out
    assert "1 bad rows skipped" in text and "2 accepted" in text

    rc = cli_main(["annotate", "--annotator", "structural", "--source", str(src),
                   "--out", str(tmp_path / "st.jsonl"), "--rejects", str(tmp_path / "st_rej.jsonl"), "--no-progress"])
    assert rc == 0
    rows = read(tmp_path / "st.jsonl")
    assert len(rows) == 3 and all(r["annotator"] == "structural" and "<promise" in r["annotated"] for r in rows)

    assert cli_main(["annotate", "--annotator", "openai", "--source", str(src),
                     "--out", str(tmp_path / "x.jsonl")]) == 2  # no --base-url/--model


@pytest.mark.parametrize("bad", [{"concurrency": 0}, {"model": ""}])
def test_config_validation(tmp_path, bad):
    kwargs = {"model": "m", "concurrency": 2} | bad
    with pytest.raises(ValueError):
        annotate_llm([], OpenAIClient("http://127.0.0.1:9/v1"), kwargs["model"], tmp_path / "o", tmp_path / "r",
                     kwargs["concurrency"], progress=False)
