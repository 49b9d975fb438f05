"""`pasta serve`: command-line registration (the lead's `pasta.cli` calls `add_serve_parser(subparsers)`)."""

from __future__ import annotations

import argparse

from ..cli_options import adapter_from_args, add_limit_options, add_model_options, add_threads_option, apply_threads


def add_serve_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", help="serve an OpenAI-compatible API with asynchronous decoding and batching")
    add_model_options(p)
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", default=None, help="the id /v1/models lists (default: the model's name)")
    p.add_argument("--sequential", action="store_true",
                   help="decode chunks one after another by default (a request may override: pasta.mode)")
    p.add_argument("--max-batch", type=int, default=8, help="requests decoded together per forward pass (1: one at a time)")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting beyond the batch before 429")
    p.add_argument("--max-tokens-limit", type=int, default=2048, help="the largest max_tokens a request may ask for")
    p.add_argument("--default-max-tokens", type=int, default=256)
    add_limit_options(p, max_new_tokens=False)
    p.add_argument("--prefill-chunk", type=int, default=128,
                   help="prompt tokens per step while prefilling, so long prompts do not stall others (0: no chunking)")
    p.add_argument("--batch-invariant", action="store_true",
                   help="each request its own forward pass and cache: answers do not depend on other requests "
                        "(bitwise, any dtype), at the cost of the batching speedup")
    add_threads_option(p)
    p.add_argument("--log-level", default="warning")
    p.set_defaults(func=run_serve)
    return p


def run_serve(args) -> int:
    import uvicorn

    from ..interpreter import Interpreter
    from .app import create_app

    governor = apply_threads(args)
    config = serve_config_from_args(args)
    interpreter = Interpreter.from_pretrained(args.model, dtype=args.dtype, adapter=adapter_from_args(args),
                                              compile=args.compile, cuda_graphs=args.cuda_graphs,
                                              quantize=args.quantize)
    app = create_app(interpreter, config, threads=governor)
    print(f"pasta serve: {config.served_model_name or interpreter.name} on http://{config.host}:{config.port}/v1 "
          f"(max batch {config.max_batch}, {'sequential' if config.sequential else 'async'})", flush=True)
    uvicorn.Server(uvicorn_config(app, config, log_level=args.log_level)).run()
    return 0


def serve_config_from_args(args):
    from .config import ServeConfig

    return ServeConfig(
        host=args.host, port=args.port, max_batch=args.max_batch, max_queue=args.max_queue,
        max_tokens_limit=args.max_tokens_limit, default_max_tokens=min(args.default_max_tokens, args.max_tokens_limit),
        max_thread_tokens=args.max_thread_tokens, max_threads=args.max_threads, sequential=args.sequential,
        served_model_name=args.served_model_name, prefill_chunk=args.prefill_chunk or None,
        batch_invariant=args.batch_invariant, outline_topics=args.outline_topics,
        outline_terminated=args.outline_terminated, outline_no_repeat=args.outline_no_repeat,
        presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty,
        draft_promises=args.draft_promises, draft_tokens=args.draft_tokens,
    )


def uvicorn_config(app, config, *, log_level: str = "warning"):
    """How `pasta serve` runs under uvicorn; SIGTERM waits at most `shutdown_timeout_s` for open requests (then
    cancels them), and the engine at most as long again."""
    import uvicorn

    return uvicorn.Config(app, host=config.host, port=config.port, log_level=log_level, lifespan="on",
                          timeout_graceful_shutdown=config.shutdown_timeout_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pasta.serve")
    sub = parser.add_subparsers(dest="command")
    add_serve_parser(sub)
    args = parser.parse_args(["serve", *(argv if argv is not None else __import__("sys").argv[1:])])
    return int(args.func(args) or 0)
