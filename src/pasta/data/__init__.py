"""Training data for PASTA: sources of instruction/response pairs and the annotators that add Pasta-Lang.

Submodules (imported lazily by users; nothing heavy here):
- `sources`: ShareGPT, JSONL, `datasets` folders; AlpacaEval prompt exclusion.
- `annotate_structural`: rule-based annotation of lists and sections (offline; the APAR-like baseline).
- `annotate_llm`: annotation by an LLM behind an OpenAI-compatible endpoint.
- `finalize`: the shared acceptance rules, `tokens` rewriting, and the resumable output files.
- `cli`: the `pasta annotate` command.
"""

from pasta.data.finalize import AnnotationRejected, approx_token_count, finalize_annotation
from pasta.data.sources import Example, SourceStats, alpaca_eval_prompts, exclude_eval_prompts, load_examples

__all__ = [
    "Example",
    "SourceStats",
    "load_examples",
    "alpaca_eval_prompts",
    "exclude_eval_prompts",
    "AnnotationRejected",
    "approx_token_count",
    "finalize_annotation",
]
