"""End to end against an engine no one here wrote: llama.cpp's OpenAI-compatible server (llama-cpp-python).

    python scripts/e2e_llamacpp.py --convert PATH/convert_hf_to_gguf.py

1. Exports the embedded default model with its Pasta adapter merged (a Hugging Face folder) and converts it to a
   GGUF (f16) with llama.cpp's own `convert_hf_to_gguf.py`, so llama.cpp serves the model that writes Pasta-Lang.
2. Starts `python -m llama_cpp.server` on a free loopback port (the interpreter given by --llama-python, where
   llama-cpp-python[server] is installed; building it: docs/serve.md).
3. The remote backend (`pasta generate --backend openai`) answers prompts asynchronously through it, and
   sequentially for comparison; the LLM annotator (`pasta annotate --annotator openai`) annotates a few ShareGPT
   answers through its chat endpoint.
4. Writes everything it saw to --out (default results/e2e_llamacpp/): the answers, stats, the annotator's output
   and rejects with reasons, the server's version, and a summary.json.

Nothing is downloaded; llama.cpp runs on this CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from pasta.backends.llamacpp import llama_server, llamacpp_python

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["Give three tips for staying healthy.", "What are the benefits of reading books?",
           "Name three famous painters and one work of each."]


def export_gguf(convert: Path, work: Path) -> Path:
    gguf = work / "smollm2-135m-pasta-f16.gguf"
    if gguf.is_file():
        return gguf
    from pasta.interpreter import Interpreter

    folder = work / "hf-merged"
    interp = Interpreter.from_pretrained(None, dtype="float32", adapter=True)  # the adapter merged into the weights
    interp.model.save_pretrained(folder)
    interp.tokenizer.save_pretrained(folder)
    subprocess.run([sys.executable, str(convert), str(folder), "--outtype", "f16", "--outfile", str(gguf)], check=True)
    return gguf


def pasta(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-m", "pasta.cli", *args], capture_output=True, text=True, env=env,
                          timeout=1800)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--llama-python", default=None, help="a python with llama-cpp-python[server] (default: .venv-llamacpp)")
    p.add_argument("--convert", required=True, type=Path, help="llama.cpp's convert_hf_to_gguf.py")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "e2e_llamacpp")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "e2e_llamacpp")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--annotate-limit", type=int, default=4)
    a = p.parse_args(argv)
    a.llama_python = str(a.llama_python or llamacpp_python())
    a.out.mkdir(parents=True, exist_ok=True)
    a.work.mkdir(parents=True, exist_ok=True)
    gguf = export_gguf(a.convert, a.work)
    summary: dict = {"gguf": gguf.name, "gguf_bytes": gguf.stat().st_size}
    with llama_server(gguf, alias="smollm2-pasta", log=a.out / "server.log", python=a.llama_python) as base:
        summary["models"] = httpx.get(base + "/models", timeout=5).json()
        version = subprocess.run([a.llama_python, "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                                 capture_output=True, text=True)
        summary["llama_cpp_python"] = version.stdout.strip()
        answers = []
        for prompt in PROMPTS:
            row = {"prompt": prompt}
            for mode, extra in (("async", []), ("sequential", ["--sequential"])):
                done = pasta("generate", prompt, "--backend", "openai", "--base-url", base, "--remote-model",
                             "smollm2-pasta", "--tokenizer", str(a.work / "hf-merged"), "--max-new-tokens",
                             str(a.max_new_tokens), "--json", *extra)
                row[mode] = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else \
                    {"error": done.stderr[-2000:], "returncode": done.returncode}
            answers.append(row)
            print(f"{prompt!r}: async {row['async'].get('stats', row['async'])}", file=sys.stderr)
        (a.out / "generate.json").write_text(json.dumps(answers, indent=1, ensure_ascii=False))
        annotated = a.out / "annotate.jsonl"
        for f in (annotated, a.out / "annotate.rejects.jsonl"):
            f.unlink(missing_ok=True)
        done = pasta("annotate", "--annotator", "openai", "--base-url", base, "--model", "smollm2-pasta",
                     "--source", "sharegpt", "--limit", str(a.annotate_limit), "--out", str(annotated),
                     "--concurrency", "2", "--max-tokens", "512", "--no-progress")
        summary["annotate"] = {"returncode": done.returncode, "stdout": done.stdout[-2000:], "stderr": done.stderr[-1500:]}
        summary["generate"] = [
            {"prompt": r["prompt"], **{m: ({**{k: r[m]["stats"].get(k) for k in ("threads", "tokens", "wall_s")},
                                            **{k: (r[m]["stats"].get("remote") or {}).get(k)
                                               for k in ("requests", "peak_concurrency")}}
                                          if "stats" in r[m] else r[m]) for m in ("async", "sequential")}}
            for r in answers]
    (a.out / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    print(json.dumps(summary, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
