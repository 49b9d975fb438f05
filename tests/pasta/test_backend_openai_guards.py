"""The remote backend applies the local decoder's runtime guards (`pasta.guards`): the same scripted model, decoded by
the local state machine (`drive_script`, token by token) and through a scripted OpenAI server (text between stop
strings), gives the same answer, storage form, guard firings and fed topics.

The server's "model" writes a fixed script per thread, as `tiny.ScriptedProgram` does: what the model writes -
stop strings included - consumes its script; an outline topic the client feeds must be what the script says next
(and consumes it, as jump-forward does); what a guard writes instead (a forced `<sync/>`, an outline cut) does not."""

from __future__ import annotations

import re
import sys
import threading
from pathlib import Path

import pytest
from tiny import ByteTokenizer, drive_script

sys.path.insert(0, str(Path(__file__).parents[1]))
from openai_stub import OpenAIStub, StubRequest  # noqa: E402

from pasta.backends.openai import PROMISE_OPEN, RemoteConfig, RemoteInterpreter  # noqa: E402
from pasta.decoding import DecodeLimits  # noqa: E402
from pasta.openai_client import OpenAIClient  # noqa: E402
from pasta.lang import is_valid, strip_tags  # noqa: E402

TOK = ByteTokenizer()
PROMPT = "q"
_CHUNK_BODY = re.compile(r"<async>.*?</async>", re.DOTALL)


class ScriptedServer:
    """An OpenAI completions server whose model writes `main` and, in fork order, `chunks` (then EOS)."""

    def __init__(self, main: str, chunks: list[str], owned_by: str = "vllm") -> None:
        self.main, self.chunks, self.owned_by = main, chunks, owned_by
        self.cursor = 0  # characters of the main script consumed
        self.seen = ""  # the main thread's text (chunk bodies removed) as of the last reply, the reply included
        self.last_stop: str | None = None
        self.chunk_cursor: dict[str, tuple[int, int]] = {}  # chunk context -> (fork order, characters consumed)
        self.lock = threading.Lock()

    def __call__(self, req: StubRequest):
        if req.endpoint == "models":
            return {"object": "list", "data": [{"id": "m", "object": "model", "owned_by": self.owned_by}]}
        body = req.json
        with self.lock:
            prompt, stops, limit = body["prompt"], body["stop"], body["max_tokens"]
            assert prompt.startswith(PROMPT)
            if prompt.rfind("<async>") > prompt.rfind("</async>"):  # a chunk's request: its body so far is open
                context, _, written = prompt.rpartition("<async>")
                order, _ = self.chunk_cursor.setdefault(context, (len(self.chunk_cursor), 0))
                script = self.chunks[order] if order < len(self.chunks) else ""
                # a continuation re-sends what the chunk wrote: it must be the script's own text
                assert script.startswith(written), (script, written)
                text, stop = self._reply(script, len(written), stops, limit)
                self.chunk_cursor[context] = (order, len(written) + len(text) + len(stop or ""))
                return _completion(text, stop)
            main = _CHUNK_BODY.sub("", prompt[len(PROMPT):])
            assert main.startswith(self.seen), "the client dropped text the model had read"
            extra = main[len(self.seen):]
            if self.last_stop == PROMISE_OPEN and extra.startswith(PROMISE_OPEN):
                fed = extra[len(PROMISE_OPEN):]  # an outline topic: the script must say it next
                if "/>" in fed:  # a promise past the outline, closed by the client; what follows is a guard's
                    fed = fed[: fed.index("/>") + 2]
                assert self.main[self.cursor : self.cursor + len(fed)] == fed, (self.main[self.cursor:], fed)
                self.cursor += len(fed)
            text, stop = self._reply(self.main, self.cursor, stops, limit)
            self.cursor += len(text) + len(stop or "")
            self.seen, self.last_stop = main + text, stop
            return _completion(text, stop)

    @staticmethod
    def _reply(script: str, at: int, stops: list[str], limit: int) -> tuple[str, str | None]:
        """The script from `at` up to the first stop string (excluded), EOS, or `limit` characters (byte tokens)."""
        rest = script[at : at + limit]
        found = [(rest.find(s), s) for s in stops if rest.find(s) >= 0]
        if not found:
            return rest, None
        where, stop = min(found)
        return rest[:where], stop


def _completion(text: str, stop: str | None) -> dict:
    choice = {"index": 0, "text": text, "finish_reason": "stop", "stop_reason": stop}
    return {"choices": [choice], "usage": {"prompt_tokens": 1, "completion_tokens": max(1, len(text))}}


def remote(main: str, chunks: list[str], *, max_threads: int = 1, mode: str = "async", owned_by: str = "vllm",
           **config):
    """Decode the script through the remote backend (one chunk request at a time by default, so the server sees
    chunks in fork order as the local script does)."""
    with OpenAIStub(ScriptedServer(main, chunks, owned_by)) as stub:
        config = RemoteConfig(base_url=stub.base_url, max_new_tokens=4000, max_threads=max_threads, **config)
        # no retries: a script the client strays from answers 500, and the test fails at once
        interp = RemoteInterpreter(config, client=OpenAIClient(stub.base_url, max_retries=0))
        return interp.generate(PROMPT, chat=False, mode=mode), stub


def local(main: str, chunks: list[str], mode: str = "async", **limits):
    decoding = drive_script(main, chunks, DecodeLimits(max_new_tokens=4000, **limits), mode, TOK)
    annotated, text = decoding.stitch()
    return annotated, text, decoding


def _p(topic: str) -> str:
    return f'<promise topic="{topic}" tokens="5"/>'


OUTLINE = ('Tips:\nOverview: Sleep; Food.\n\n1. <promise topic="1/2 Sleep" tokens="5"/>\n'
           '2. <promise topic="2/2 Food" tokens="5"/>\n<sync/>Done.')
CHUNKS2 = ["Sleep well.</async>", "Eat well.</async>"]

CASES = {
    "well behaved": ("Tips:\n" + _p("sleep") + "\n" + _p("food") + "\n<sync/>Done.", CHUNKS2, {}),
    "repeated topic": ("Tips:\n" + _p("Sleep well") + "\n" + _p("sleep  WELL!") + "Done.", CHUNKS2, {}),
    "dangling marker": ("Animals:\n1. " + _p("Bats") + "\n2. " + _p("Birds") + "\n3. " + _p("bats") + "\nThat is all.",
                        ["Bats fly.</async>", "Birds sing.</async>"], {}),
    "promise loop": ("Actors:\n" + (_p("Billy Crystal") + "\n") * 30, ["Billy Crystal: an actor.</async>"] * 30, {}),
    "sync loop": ("Tips:\n" + _p("a") + "\n<sync/>\n\n<sync/>\n\n" * 50, ["Sleep.</async>"], {}),
    "numbered sync loop": ("Steps:\n1. " + _p("a") + "\n2. <sync/>\n3. <sync/>\n4. <sync/>" * 20, ["Draw.</async>"], {}),
    "harmless syncs": ("A<sync/>B<sync/>" + _p("b") + "<sync/>C<sync/>D", ["x</async>"], {}),
    "promise in a chunk": ("Steps:\n1. " + _p("Install") + "\n<sync/>Done.",
                           ["Install them:\n1. " + _p("Install") + "\n2. " + _p("Install") + " and more</async>"], {}),
    "sync in a chunk": ("Steps:\n1. " + _p("Install") + "\n<sync/>Done.", ["Install<sync/> them.</async>"], {}),
    "promise cap": ("".join(_p(f"t{i}") + "<sync/>" for i in range(6)) + "End.", [f"{i}</async>" for i in range(6)],
                    {"max_promises": 3}),
    "per-sync cap": ("".join(_p(f"t{i}") for i in range(5)) + "Conclusion.", [f"{i}</async>" for i in range(5)],
                     {"max_promises_per_sync": 3}),
    "count overrun": ("L:\n" + _p("1/2 a") + _p("2/2 b") + _p("3/2 c") + "End.", ["A</async>", "B</async>", "C</async>"],
                      {}),
    "outline topics": (OUTLINE, CHUNKS2, {"outline_topics": True}),
    "outline repeat": (OUTLINE.replace("Food.\n\n", "Food; Sleep;"), CHUNKS2, {"outline_topics": True}),
    "past the outline": (OUTLINE.replace("\n<sync/>Done.", '\n3. <promise topic="3/2" tokens="1"/>Done.'),
                         CHUNKS2, {"outline_topics": True}),
    "outline repeat, cut": ('Overview: Sleep; Food; sleep;1. <promise topic="1/2 Sleep" tokens="5"/>'
                            '2. <promise topic="2/2 Food" tokens="5"/><sync/>x', ["a</async>"] * 2,
                            {"outline_topics": True}),
    "outline too long": ('Overview: a1; a2; a3; a4; a5; a6; a7; a8; a9; a10.\n<promise topic="1/8 a1" tokens="5"/>'
                         '<sync/>x', ["a</async>"] * 2, {"outline_topics": True}),
    "terminated outline repeat": ('Overview: Sleep; Food; sleep;1. <promise topic="1/2 Sleep" tokens="5"/>'
                                  '2. <promise topic="2/2 Food" tokens="5"/><sync/>x', ["a</async>"] * 2,
                                  {"outline_topics": True, "outline_terminated": True}),
    "semicolons outside an outline": ('Note: a; b; a; a; a.\nOverview: x; y.\n<promise topic="1/2 x" tokens="5"/>'
                                      '<sync/>z', ["a</async>"], {"outline_topics": True}),
    # The model ends its answer inside a tag: the half tag is markup, dropped (not shown as text) on both paths.
    "EOS inside a fed promise": ('Overview: A; B.\n1. <promise topic="1/2 A" tokens="', [], {"outline_topics": True}),
    "EOS inside a tag": ("Tips:\n" + _p("a") + '<sync/>Done. <promise topic="b', ["x</async>"], {}),
    "EOS inside a chunk's tag": ("Tips:\n" + _p("a") + "<sync/>Done.", ["x </asyn", "y"], {}),
    "'/>' as text": ("See a/> b " + _p("a") + "<sync/>Done.", ["x />y</async>"], {}),
    "a lone '<' at EOS is text": ("Tips: a <", [], {}),
    # Closing tags the language does not have, and chunk tags in the main thread (the default model writes them
    # through a plain engine): markup, dropped from the answer with a warning on both paths.
    "stray closing tags": ("Tips:</promise>\n" + _p("a") + "\n<sync/>Done.</sync>\n2. More.</async> x</sync/> <async>y",
                           ["Sleep</sync> well</sync/> <async>x.</async>"], {}),
    "a chunk over its budget": ("Tips:\n" + _p("a") + _p("b") + "<sync/>Done.",
                                ["abcdefghijklmnop</async>", "ab</async>"], {"max_thread_tokens": 12}),
    "repeated item fed once": ('Overview: A; B; A.\n<promise topic="1/2 A" tokens="5"/>'
                               '<promise topic="2/2 B" tokens="5"/><sync/>x', ["a</async>"] * 2,
                               {"outline_topics": True}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_remote_guards_match_the_local_decoder(name):
    main, chunks, options = CASES[name]
    annotated, text, decoding = local(main, chunks, **options)
    result, _ = remote(main, chunks, **options)
    assert result.annotated == annotated
    assert result.text == text
    assert result.stats.guards == decoding.guards
    assert result.stats.outline_topics_fed == decoding.outline_topics_fed
    assert result.stats.finish_reason == decoding.finish_reason
    assert result.stats.threads == len(decoding.threads) - 1
    # how each thread ended (answer_stats' reaches_sync reads it): main first, then the chunks in fork order
    assert [t.close_reason for t in result.stats.timeline] == [t.trace.close_reason for t in decoding.threads]
    ignored = [w for w in decoding.warnings if w.endswith(("; ignored", "; dropped from text"))]
    assert [w for w in result.stats.warnings if w.endswith(("; ignored", "; dropped from text"))] == ignored
    if not ignored:  # an ignored tag stays in the storage form (both paths), so only then is it valid
        assert is_valid(result.annotated) and strip_tags(result.annotated) == result.text


def test_the_cases_exercise_every_guard():
    """The oracle above is only as good as its cases: together they fire every guard the remote backend applies."""
    fired = set()
    for main, chunks, options in CASES.values():
        fired |= {g.split(":")[0] for g in local(main, chunks, **options)[2].guards}
    assert fired == {"repeated_topic", "count_overrun", "max_promises", "max_promises_per_sync", "idle_sync",
                     "chunk_promise", "outline_repeat", "outline_long", "outline_done"}


@pytest.mark.parametrize("mode", ["async", "sequential"])
def test_a_looping_model_finishes_cleanly_through_the_remote_backend(mode):
    """The first default model's failure through vLLM: one topic again and again. The guards end it long before the
    token cap, in both modes, with every chunk request in flight at once."""
    main, chunks, _ = CASES["promise loop"]
    result, stub = remote(main, chunks, max_threads=8, mode=mode)
    assert result.stats.finish_reason == "guard" and len(result.stats.guards) == 2
    assert result.text == "Actors:\nBilly Crystal: an actor.\n\n"
    assert result.stats.tokens < 200 and len(stub.requests_to("completions")) == 4
    unguarded, _ = remote(main, chunks, max_threads=8, mode=mode, guards=False)  # the backend as it was
    assert unguarded.stats.guards == [] and unguarded.stats.threads == 30
    assert unguarded.text == "Actors:\n" + "Billy Crystal: an actor.\n" * 30


def test_outline_stops_only_for_servers_that_report_the_matched_stop():
    """Without `stop_reason` a ';' or a promise opening cannot be told from EOS: the outline conventions are off
    (a warning says so) and only '/>' is asked for; the promise guards still apply."""
    main, chunks, options = CASES["outline repeat, cut"]
    result, stub = remote(main, chunks, owned_by="llamacpp", **options)
    assert any("outline topics and the outline guard are off" in w for w in result.stats.warnings)
    assert all(r.json["stop"] in (["/>"], ["</async>", "/>"]) for r in stub.requests_to("completions"))
    assert result.stats.outline_topics_fed == 0 and "Food; sleep;" in result.text
    reported, _ = remote(main, chunks, **options)
    assert reported.stats.warnings == [] and [g.split(":")[0] for g in reported.stats.guards] == ["outline_repeat"]


def test_the_cli_takes_the_outline_conventions_from_the_tokenizer_folder(tmp_path, monkeypatch):
    import argparse

    from pasta.backends import openai as backend

    seen = {}

    def fake_generate(self, prompt, *, mode="async", chat=True):
        seen["config"] = self.config
        from pasta.results import GenerationResult, RunStats

        return GenerationResult(text="", annotated="", stats=RunStats(
            mode=mode, steps=1, tokens=0, threads=0, critical_path=1, theoretical_speedup=1.0, wall_s=0.0,
            prompt_tokens=1, cache_tokens=0, tokens_per_thread=[0], timeline=[]))

    monkeypatch.setattr(backend.RemoteInterpreter, "generate", fake_generate)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "pasta_decoding.json").write_text('{"outline_topics": true, "presence_penalty": 0.5}')
    args = argparse.Namespace(base_url="http://unused/v1", tokenizer=str(folder), remote_model=None, max_new_tokens=64,
                              max_thread_tokens=32, max_threads=2, temperature=0.0, top_p=1.0, seed=None,
                              prompt="hi", sequential=False, raw=True, presence_penalty=None, frequency_penalty=None,
                              outline_topics=None, outline_terminated=None, outline_no_repeat=None, adapter=None,
                              no_adapter=False)
    result = backend.generate_from_args(args)
    assert seen["config"].outline_topics is True and seen["config"].outline_terminated is False
    assert any("presence_penalty" in w and "only local decoding applies" in w for w in result.stats.warnings)
    args.outline_topics = False  # the user's choice wins over the record
    backend.generate_from_args(args)
    assert seen["config"].outline_topics is False
    args.outline_no_repeat = True
    with pytest.raises(ValueError, match="--outline-no-repeat"):
        backend.generate_from_args(args)
    args.outline_no_repeat = None
    served = tmp_path / "adapter"  # the adapter the server applies records its own conventions: they win
    served.mkdir()
    (served / "pasta_decoding.json").write_text('{"outline_terminated": true}')
    args.outline_topics, args.adapter, args.no_adapter = None, str(served), False
    backend.generate_from_args(args)
    assert seen["config"].outline_terminated is True and seen["config"].outline_topics is False
    args.adapter, args.no_adapter = None, True  # --no-adapter: the base model, no convention
    backend.generate_from_args(args)
    assert seen["config"].outline_topics is False and seen["config"].outline_terminated is False
    args.no_adapter = False
    (folder / "pasta_decoding.json").write_text('{"outline_topics": "yes"}')
    with pytest.raises(ValueError, match="outline_topics must be true or false"):
        backend.generate_from_args(args)


def test_guard_options_are_validated():
    with pytest.raises(ValueError, match="max_promises"):
        RemoteConfig(base_url="http://unused", max_promises=0)
    assert RemoteConfig(base_url="http://unused", max_promises_per_sync=3).limits.max_promises_per_sync == 3
