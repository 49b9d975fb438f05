"""The naive reference interpreter: the test oracle for the cached engine.

It drives the same `Decoding` state machine but keeps no KV cache: every step recomputes a full forward pass
over all tokens so far, with the layout's full [slots, slots] visibility mask and position ids, and reads the
logits of the rows that sample. Slow (quadratic) and obviously correct.
"""

from __future__ import annotations

import torch

from .decoding import Decoding
from .runner import ModelRunner
from .sampling import SamplingParams


def full_forward(runner: ModelRunner, token_ids: list[int], positions: list[int], mask: torch.Tensor) -> torch.Tensor:
    """Logits [slots, vocab] for a whole laid-out sequence (no cache)."""
    return runner.forward(token_ids, positions, mask)


def oracle_runner(runner: ModelRunner) -> ModelRunner:
    """The oracle calls the Hugging Face module itself, never our own forward pass (`pasta.llama_forward`): an
    engine running that is then checked against the model's reference implementation, not against itself."""
    if not runner.own_forward or runner.quantize is not None:  # quantized weights: the module has no such model
        return runner
    return ModelRunner(runner.model, own_forward=False)


def reference_generate(
    runner: ModelRunner, decoding: Decoding, sampling: SamplingParams | None = None
) -> list[tuple[list[int], torch.Tensor]]:
    """Run `decoding` to the end with full recomputation. Returns per step (thread indices, logits)."""
    runner = oracle_runner(runner)
    sampling = sampling or SamplingParams()
    streams = sampling.streams()
    token_ids: list[int] = []
    trace: list[tuple[list[int], torch.Tensor]] = []
    while not decoding.done:
        inputs = decoding.next_inputs()
        token_ids.extend(inputs.token_ids)
        layout = decoding.layout
        logits_all = full_forward(runner, token_ids, layout.positions, layout.full_mask())
        rows = [inputs.slots[i] for i in inputs.logit_rows]
        logits = logits_all[rows]
        trace.append((decoding.sampler_threads, logits))
        decoding.advance(decoding.choose(logits, sampling, streams))
        del token_ids[len(layout) :]  # a rejected promise draft's tokens leave the sequence (Layout.truncate)
    return trace
