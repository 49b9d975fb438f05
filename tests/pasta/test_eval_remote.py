"""`pasta eval --backend openai`: the systems served by an OpenAI-compatible server.

The oracle: the same tiny model evaluated locally and through `pasta serve` gives the same answers and the same
answer statistics, system by system (greedy, fp32). Skeleton-of-Thought through a scripted server sends its points
as concurrent requests and assembles them as the local engine's batch does."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch
from openai_stub import OpenAIStub, StubRequest
from serve_helpers import RunningServer
from tiny import tiny_hf_folder

from pasta.decoding import DecodeLimits
from pasta.eval.prompts import PromptItem
from pasta.eval.remote import RemoteSystem
from pasta.eval.runner import EvalConfig, Systems, run_eval
from pasta.eval.sot import POINT_PROMPT, SKELETON_PREFILL
from pasta.interpreter import Interpreter
from pasta.models import load_tokenizer
from pasta.serve.config import ServeConfig

torch.set_num_threads(1)
ITEMS = [PromptItem(f"p{i}", f"Question number {i}?", "test") for i in range(3)]
BUDGETS = dict(max_new_tokens=12, max_thread_tokens=6, max_threads=4, sot_skeleton_tokens=8, bootstrap=50,
               plots=False)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return str(tiny_hf_folder(tmp_path_factory.mktemp("tiny") / "tiny-model"))


def _records(out) -> dict[str, dict[str, dict]]:
    found = {}
    for path in (out / "generations").glob("*.jsonl"):
        found[path.stem] = {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}
    return found


def test_remote_eval_reproduces_local_eval_through_pasta_serve(tmp_path, folder, monkeypatch, capsys):
    from pasta.cli import main

    interp = Interpreter.from_pretrained(folder, dtype="float32", adapter=False)
    local = run_eval(EvalConfig(out=str(tmp_path / "local"), model=folder, adapter=False, **BUDGETS),
                     systems=Systems(pasta=interp, original=interp), items=ITEMS)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": it.id, "instruction": it.instruction}) + "\n" for it in ITEMS))
    with RunningServer(interp, ServeConfig(max_tokens_limit=64, default_max_tokens=16)) as server:
        args = ["eval", "--backend", "openai", "--base-url", server.url + "/v1", "--tokenizer", folder,
                "--remote-original-model", interp.name, "--prompts", str(prompts), "--out", str(tmp_path / "remote"),
                "--max-new-tokens", "12", "--max-thread-tokens", "6", "--max-threads", "4",
                "--sot-skeleton-tokens", "8", "--bootstrap", "50", "--no-plots", "--json", "--quiet", "--threads", "1"]
        assert main(args) == 0
    remote = json.loads(capsys.readouterr().out)
    mine, theirs = _records(tmp_path / "remote"), _records(tmp_path / "local")
    assert set(mine) == set(theirs) == {"pasta", "sequential", "original", "sot"}
    for system in mine:
        for key, record in theirs[system].items():
            got = mine[system][key]
            assert got["output"] == record["output"], (system, key)
            assert got["annotated"] == record["annotated"]
            assert got["tokens"] == record["tokens"] and got["critical_path"] == record["critical_path"]
            assert got["stats"] == record["stats"], (system, key)  # plain tokens, completeness, repetition, ...
            assert got["generator"] == f"{system}:{interp.name}"
    for system in mine:  # the same figures, but for the wall times
        for field in ("complete", "n_speedup", "theoretical_speedup_geomean", "mean_tokens"):
            assert remote["systems"][system][field] == local["systems"][system][field], (system, field)
    assert remote["config"]["backend"] == "openai" and "backend" not in local["config"]
    assert any("--backend openai" in note for note in remote["notes"])
    report = (tmp_path / "remote" / "report.md").read_text()
    assert f"served models `first listed` (pasta, sequential) and `{interp.name}` (original, sot)" in report


def test_remote_config_errors_name_what_is_missing():
    def config(**kw):
        given = dict(base_url="http://unused/v1", tokenizer="default", remote_original_model="base")
        return EvalConfig(out="unused", backend="openai", **{**given, **kw})

    with pytest.raises(ValueError, match="base_url"):
        config(base_url=None)
    with pytest.raises(ValueError, match="tokenizer"):
        config(tokenizer=None)
    with pytest.raises(ValueError, match=r"systems \['original', 'sot'\] need the original model's id"):
        config(**{"remote_original_model": None})
    assert config(remote_original_model=None, systems=("pasta", "sequential")).systems == ("pasta", "sequential")
    with pytest.raises(ValueError, match="presence_penalty, outline_no_repeat: only local decoding"):
        config(presence_penalty=0.5, outline_no_repeat=True)
    with pytest.raises(ValueError, match="backend must be"):
        EvalConfig(out="unused", backend="vllm")
    key = config().generation_key()
    assert key["remote_original_model"] == "base" and "base_url" not in key  # a new port resumes the same run


def test_remote_skeleton_of_thought_sends_points_concurrently(folder):
    """The skeleton, then one request per point, all in flight together; each point's prompt is the SoT point prompt
    in the chat template with the point prefilled; the answer joins the points, cut where one starts the next."""
    tokenizer = load_tokenizer(folder)
    in_flight, peak, lock = [0], [0], threading.Lock()

    def handler(req: StubRequest):
        if req.endpoint != "completions":
            return None
        prompt = req.json["prompt"]
        if prompt.endswith(SKELETON_PREFILL):
            return _reply(" Sleep well\n2. Eat food\n3. Walk\n", 9)
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.2)  # long enough for the others to arrive
        with lock:
            in_flight[0] -= 1
        index = prompt.rsplit("<|im_start|>assistant\n", 1)[1].split(".")[0]
        assert f"writing of point {index}." in prompt
        body = {"1": " means eight hours.", "2": " of every colour.\n3. Walk and more", "3": " daily."}[index]
        return _reply(body, {"1": 4, "2": 6, "3": 2}[index])

    with OpenAIStub(handler) as stub:
        system = RemoteSystem(stub.base_url, "m", tokenizer, folder, {})
        res = system.skeleton_of_thought("How to stay healthy?", limits=DecodeLimits(max_new_tokens=40,
                                                                                    max_thread_tokens=6))
    assert peak[0] == 3
    assert res.text == "1. Sleep well means eight hours.\n2. Eat food of every colour.\n3. Walk daily."
    assert res.tokens == 9 + 4 + 6 + 2 and res.critical_path == res.steps == 9 + 6
    assert res.truncated and res.warnings == ["points [2] reached max_thread_tokens"]  # point 2 used all 6
    point = POINT_PROMPT.format(question="How to stay healthy?", skeleton="1. Sleep well\n2. Eat food\n3. Walk",
                                index=2)
    assert any(r.json["prompt"].endswith(point + "<|im_end|>\n<|im_start|>assistant\n2. Eat food")
               for r in stub.requests_to("completions"))


def _reply(text: str, tokens: int) -> dict:
    return {"choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": tokens}}


def test_the_pasta_models_conventions_come_from_its_adapter(tmp_path, folder):
    """Outline conventions from pasta_decoding.json beside the served adapter (or in the tokenizer folder, or the
    shipped adapter's for the embedded model); the local-only ones it records are noted, and the served ids checked."""
    from pasta.backends.openai import served_conventions as pasta_conventions
    from pasta.eval.remote import load_remote_systems
    from pasta.models import default_adapter_path

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "pasta_decoding.json").write_text('{"outline_topics": true, "presence_penalty": 0.5}')
    assert pasta_conventions(folder, str(adapter)) == {"outline_topics": True, "presence_penalty": 0.5}
    assert pasta_conventions(folder, True) == {} and pasta_conventions(str(adapter), False) == {}
    assert pasta_conventions(str(adapter), True)["outline_topics"] is True
    if default_adapter_path() is not None:
        shipped = json.loads((default_adapter_path() / "pasta_decoding.json").read_text())
        assert pasta_conventions("default", True) == shipped
    with pytest.raises(ValueError, match="not a folder"):
        pasta_conventions(folder, str(tmp_path / "missing"))

    models = {"object": "list", "data": [{"id": "pasta", "owned_by": "vllm"}, {"id": "base", "owned_by": "vllm"}]}
    with OpenAIStub(lambda req: models if req.endpoint == "models" else None) as stub:
        config = EvalConfig(out="unused", backend="openai", base_url=stub.base_url, tokenizer=folder,
                            adapter=str(adapter), remote_original_model="base")
        systems = load_remote_systems(config)
        assert (systems.pasta.model, systems.original.model) == ("pasta", "base")
        assert systems.pasta.conventions["outline_topics"] is True and systems.original.conventions == {}
        assert any("presence_penalty" in note and "only local decoding" in note for note in systems.notes)
        for system in (systems.pasta, systems.original):  # the outline stops: the Pasta model's convention only
            system.generate("hi", limits=DecodeLimits(max_new_tokens=4), mode="sequential")
        stops = [r.json["stop"] for r in stub.requests_to("completions")]
        assert stops[0] == ["/>", ";", '<promise topic="'] and stops[-1] == ["/>"]
        bad = EvalConfig(out="unused", backend="openai", base_url=stub.base_url, tokenizer=folder,
                         remote_model="other", systems=("pasta", "sequential"))
        with pytest.raises(ValueError, match=r"serves \['pasta', 'base'\], not 'other'"):
            load_remote_systems(bad)


def test_the_original_model_may_be_served_elsewhere(folder):
    """`--original-base-url`: e.g. a second `pasta serve --no-adapter` beside the Pasta model's server."""
    from pasta.eval.remote import load_remote_systems

    def serving(name):
        return lambda req: {"object": "list", "data": [{"id": name}]} if req.endpoint == "models" else None

    with OpenAIStub(serving("pasta")) as pasta, OpenAIStub(serving("base")) as base:
        config = EvalConfig(out="unused", backend="openai", base_url=pasta.base_url, tokenizer=folder,
                            remote_original_model="base", original_base_url=base.base_url)
        systems = load_remote_systems(config)
        assert (systems.pasta.base_url, systems.original.base_url) == (pasta.base_url, base.base_url)
        assert systems.original.model == "base" and any(base.base_url in note for note in systems.notes)
        with pytest.raises(ValueError, match=r"serves \['pasta'\], not 'base'"):
            load_remote_systems(EvalConfig(out="unused", backend="openai", base_url=pasta.base_url, tokenizer=folder,
                                           remote_original_model="base"))


class AnsweringServer:
    """Completions that answer each prompt deterministically after a short wait, counting requests in flight; one
    prompt (`fail_on`) gets a 400 until `fail_on` is cleared."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.in_flight = self.peak = 0
        self.lock = threading.Lock()
        self.fail_on = fail_on

    def __call__(self, req: StubRequest):
        from openai_stub import Reply

        if req.endpoint != "completions":
            return {"object": "list", "data": [{"id": "pasta", "owned_by": "vllm"}]}
        prompt = req.json["prompt"]
        if self.fail_on and self.fail_on in prompt:
            return Reply.error(400, "no such prompt here")
        with self.lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        time.sleep(0.05)
        with self.lock:
            self.in_flight -= 1
        question = prompt.rsplit("Question", 1)[-1].split("?")[0]
        return _reply(f"Answer{question} in a few words.", 6)


def test_answers_in_flight_at_once_give_the_same_records_and_resume(tmp_path, folder):
    """--concurrency N: the server sees several answers at once, the records are those of one-at-a-time decoding, a
    failing answer stops the run with every finished answer kept, and a rerun completes it."""
    items = [PromptItem(f"p{i}", f"Question number {i}?", "test") for i in range(8)]

    def run(out, server, concurrency):
        with OpenAIStub(server) as stub:
            config = EvalConfig(out=str(out), backend="openai", base_url=stub.base_url, tokenizer=folder,
                                systems=("pasta", "sequential"), concurrency=concurrency, max_new_tokens=16,
                                bootstrap=20, plots=False)
            return run_eval(config, items=items)

    one_at_a_time = AnsweringServer()
    alone = run(tmp_path / "one", one_at_a_time, 1)
    assert one_at_a_time.peak == 1
    server = AnsweringServer(fail_on="number 5?")
    with pytest.raises(Exception, match="400"):
        run(tmp_path / "many", server, 4)
    assert server.peak > 1
    kept = _records(tmp_path / "many")
    assert 0 < sum(len(by_id) for by_id in kept.values()) < 2 * len(items)  # finished answers are on disk
    server.fail_on = None
    together = run(tmp_path / "many", server, 4)  # resumes: only what is missing is asked for
    mine, theirs = _records(tmp_path / "many"), _records(tmp_path / "one")
    for system in ("pasta", "sequential"):
        assert {k: r["output"] for k, r in mine[system].items()} == {k: r["output"] for k, r in theirs[system].items()}
        assert len(mine[system]) == len(items)
    assert together["answers"]["complete"] == alone["answers"]["complete"] == 1.0
    assert any("4 answers in flight at once" in note for note in together["notes"])
    with pytest.raises(ValueError, match="needs backend openai"):
        EvalConfig(out="unused", concurrency=2)
