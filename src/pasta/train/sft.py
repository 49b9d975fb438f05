"""Stage 1: supervised fine-tuning on annotated responses, in the Pasta layout (`pasta train sft`).

Hugging Face Trainer with the layout-exact collator: checkpoints and `--resume`, gradient accumulation, bf16 where
asked, LoRA (peft) or full fine-tuning; the same script runs under `accelerate launch` / `torchrun` on several GPUs.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..chat import prompt_ids
from ..forcing import forced_program
from ..jsonl import jsonl_lines
from ..lang import has_terminated_outline, is_outlined, is_valid, to_structure
from ..layout import LayoutConfig
from .collator import LaidOut, causal_lm_loss, collate, layout_example

log = logging.getLogger(__name__)


@dataclass
class SFTConfig:
    data: list[str]  # JSONL files: {prompt, annotated} rows (as written by `pasta annotate`)
    output_dir: str
    model: str | None = None  # HF folder / .gguf / None = the embedded default
    # Where plain examples (no promise) come from; None: the rows without chunks in `data`. E.g. the base model's
    # own answers (`pasta distill`), so "answer without forking" is taught in the model's own words.
    plain_data: list[str] | None = None
    lora: bool = True
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    # Continue from a trained LoRA adapter (a folder, or "default" for the embedded one) instead of a fresh one: its
    # rank and alpha are used; e.g. a round of on-policy self-distillation (pasta.data.onpolicy) on top of Stage 1.
    init_adapter: str | None = None
    learning_rate: float = 3e-4
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 512  # longer examples are skipped, not truncated (a cut chunk would teach broken tags)
    max_prompt_tokens: int = 256
    max_examples: int | None = None
    annotated_fraction: float | None = 0.8  # share of examples with at least one promise (None: as in the data)
    bf16: bool = False
    seed: int = 0
    save_steps: int = 50
    logging_steps: int = 5
    resume: bool = False
    reserve_factor: float = 2.0
    default_tokens: int = 64
    fixed_reserve: int | None = None
    main_loss_weight: float = 1.0  # loss weight of the main thread's tokens relative to the chunks'
    torch_threads: int | None = None
    # Unlikelihood on repeated outline items (pasta.train.unlikelihood): weight of its loss next to cross-entropy
    # (0 = off). With it, every outline in the data pushes down the token that would copy an earlier item, and
    # `repeat_data` (correction pairs, `scripts/correction_pairs.py`: their outline_repeat rows' rejected side, the
    # model's own repeat) adds answers trained on that loss alone.
    unlikelihood: float = 0.0
    repeat_data: list[str] | None = None
    # ... and at each outline item's first token, the separators (";", "."): an empty item. Off only to rebuild row
    # r25, which was trained before it (and learned to write `Grill;; Store` where it would have copied).
    unlikelihood_empty_items: bool = True
    # Token-level corrections (`correction_data`: correction pairs, any kind): where a pair's chosen side parts from
    # the model's own rejected one (';' where '.' ends the outline, '4.' where '<sync/>' ends the list, 'Overview'
    # where the plain list goes on), cross-entropy on the chosen token with `correction_weight` and unlikelihood on
    # the rejected one; nothing else of the pair is trained. The decision itself, not the whole answer (rows r21-r23
    # moved whole answers and left the decision where it was).
    correction_data: list[str] | None = None
    correction_weight: float = 10.0
    correction_kinds: list[str] | None = None  # only pairs of these kinds (None: all)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("give at least one data file")
        for path in [*self.data, *(self.plain_data or []), *(self.repeat_data or []), *(self.correction_data or [])]:
            if not Path(path).is_file():
                raise FileNotFoundError(f"training data {path} not found")
        if self.init_adapter is not None:
            if not self.lora:
                raise ValueError("init_adapter continues a LoRA adapter; it cannot start a full fine-tune")
            folder = init_adapter_folder(self.init_adapter)
            if not (folder / "adapter_config.json").is_file():
                raise FileNotFoundError(f"init_adapter {self.init_adapter}: no adapter_config.json in {folder}")
        if self.lora_r < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("lora_r, batch_size and grad_accum must be >= 1")
        if not (self.learning_rate > 0):
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not (self.main_loss_weight > 0):
            raise ValueError(f"main_loss_weight must be > 0, got {self.main_loss_weight}")
        if self.annotated_fraction is not None and not (0 <= self.annotated_fraction <= 1):
            raise ValueError(f"annotated_fraction must be in [0, 1], got {self.annotated_fraction}")
        if self.max_length < 16:
            raise ValueError("max_length must be >= 16")
        if not (self.unlikelihood >= 0):
            raise ValueError(f"unlikelihood must be >= 0, got {self.unlikelihood}")
        if self.repeat_data and not self.unlikelihood:
            raise ValueError("repeat_data is trained with the unlikelihood loss alone: give unlikelihood > 0")
        if self.correction_data and not self.unlikelihood:
            raise ValueError("correction_data pushes down the rejected token with the unlikelihood loss: give "
                             "unlikelihood > 0")
        if not (self.correction_weight > 0):
            raise ValueError(f"correction_weight must be > 0, got {self.correction_weight}")

    @property
    def layout(self) -> LayoutConfig:
        return LayoutConfig(reserve_factor=self.reserve_factor, default_tokens=self.default_tokens,
                            fixed_reserve=self.fixed_reserve)


def init_adapter_folder(name: str) -> Path:
    """The folder of an adapter to continue from: a path, or "default" for the embedded default adapter."""
    if name == "default":
        from ..models import default_adapter_path

        found = default_adapter_path()
        if found is None:
            raise FileNotFoundError("init_adapter 'default': this checkout has no embedded default adapter")
        return found
    return Path(name)


def _json_objects(paths: list[str]):
    """(path, line, object) for each JSON object line of the files; a line that is not one is reported (file:line)
    and skipped."""
    for path in paths:
        for line_no, row in jsonl_lines(path):
            if isinstance(row, json.JSONDecodeError):
                log.warning("%s:%d: not JSON (%s); skipped", path, line_no, row)
            elif not isinstance(row, dict):
                log.warning("%s:%d: not a JSON object; skipped", path, line_no)
            else:
                yield path, line_no, row


def read_rows(paths: list[str]) -> list[dict]:
    """Rows with a prompt and an annotated response; bad rows are reported (file:line) and skipped."""
    rows = []
    for path, line_no, row in _json_objects(paths):
        prompt, annotated = row.get("prompt"), row.get("annotated", row.get("response"))
        if not isinstance(prompt, str) or not isinstance(annotated, str) or not prompt or not annotated:
            log.warning("%s:%d: needs non-empty string fields prompt and annotated; skipped", path, line_no)
            continue
        if not is_valid(annotated):
            log.warning("%s:%d: annotated response is not valid Pasta-Lang; skipped", path, line_no)
            continue
        rows.append({"prompt": prompt, "annotated": annotated, "id": row.get("id", f"{path}:{line_no}")})
    return rows


def read_repeat_rows(paths: list[str]) -> list[dict]:
    """The model's own repeated outlines: the rejected side of outline_repeat correction pairs (rows without a kind
    count too). Bad rows are reported (file:line) and skipped."""
    rows = []
    for path, line_no, row in _json_objects(paths):
        if row.get("kind", "outline_repeat") != "outline_repeat":
            continue
        prompt, rejected = row.get("prompt"), row.get("rejected")
        if not isinstance(prompt, str) or not isinstance(rejected, str) or not prompt or not rejected:
            log.warning("%s:%d: needs non-empty string fields prompt and rejected; skipped", path, line_no)
            continue
        rows.append({"prompt": prompt, "annotated": rejected, "id": row.get("id", f"{path}:{line_no}")})
    return rows


def read_correction_rows(paths: list[str], kinds: list[str] | None = None) -> list[dict]:
    """Correction pairs (`scripts/correction_pairs.py`) of the given kinds (None: any), for token-level corrections.
    Bad rows are reported (file:line) and skipped."""
    rows = []
    for path, line_no, row in _json_objects(paths):
        if kinds is not None and row.get("kind") not in kinds:
            continue
        fields = [row.get(name) for name in ("prompt", "chosen", "rejected")]
        if not all(isinstance(value, str) and value for value in fields):
            log.warning("%s:%d: needs non-empty string fields prompt, chosen and rejected; skipped", path, line_no)
            continue
        prompt, chosen, rejected = fields
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "kind": row.get("kind"),
                     "id": row.get("id", f"{path}:{line_no}")})
    return rows


def chat_prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The prompt ids SFT trains on: `pasta.chat`, the same path serving uses."""
    return prompt_ids(tokenizer, prompt)


def build_examples(config: SFTConfig, tokenizer, rows: list[dict],
                   plain_rows: list[dict] | None = None,
                   repeat_rows: list[dict] | None = None,
                   correction_rows: list[dict] | None = None) -> tuple[list[LaidOut], dict]:
    """Lay out rows, keeping those that fit, mixing annotated and plain answers as configured (plain answers from
    `plain_rows` when given, else from `rows`), plus the unlikelihood-only `repeat_rows` that end in a repeat and
    the token-level corrections of `correction_rows`."""
    rng = random.Random(config.seed)
    with_chunks = [r for r in rows if to_structure(r["annotated"]).chunks]
    plain = [r for r in (rows if plain_rows is None else plain_rows) if not to_structure(r["annotated"]).chunks]
    rng.shuffle(with_chunks)
    rng.shuffle(plain)
    stats = {"rows": len(rows), "with_chunks": len(with_chunks), "too_long": 0, "examples_with_outline": 0,
             "examples_with_terminated_outline": 0,
             "promise_tokens": {}}  # promises per `tokens` value in the examples laid out

    def lay(pool: list[dict], want: int) -> list[LaidOut]:
        out = []
        for row in pool:
            if len(out) >= want:
                break
            laid = _lay_fitting(config, tokenizer, row["prompt"], row["annotated"],
                                main_weight=config.main_loss_weight,
                                negatives="copies" if config.unlikelihood else None,
                                empty_item_negatives=config.unlikelihood_empty_items)
            if laid is None:
                stats["too_long"] += 1
                continue
            out.append(laid)
            if is_outlined(row["annotated"]):
                stats["examples_with_outline"] += 1
                stats["examples_with_terminated_outline"] += has_terminated_outline(row["annotated"])
            for value in _PROMISE_TOKENS.findall(row["annotated"]):
                stats["promise_tokens"][value] = stats["promise_tokens"].get(value, 0) + 1
        return out

    total = config.max_examples or len(rows)
    if config.annotated_fraction is None:
        examples = lay(with_chunks + plain, total)
    else:
        annotated = lay(with_chunks, round(total * config.annotated_fraction))
        n_plain = round(len(annotated) * (1 - config.annotated_fraction) / max(config.annotated_fraction, 1e-9))
        examples = annotated + lay(plain, min(n_plain, total - len(annotated)))
    if repeat_rows:
        repeats = [e for e in (_lay_repeat(config, tokenizer, row) for row in repeat_rows) if e is not None]
        stats["repeat_examples"] = len(repeats)
        examples += repeats
    if correction_rows:
        corrections = [e for e in (_lay_correction(config, tokenizer, row) for row in correction_rows) if e is not None]
        stats["correction_examples"] = len(corrections)
        examples += corrections
    if config.unlikelihood:
        stats["unlikelihood_slots"] = sum(int((e.negatives >= 0).any(-1).sum()) for e in examples
                                          if e.negatives is not None)
    rng.shuffle(examples)
    stats["examples"] = len(examples)
    stats["examples_with_chunks"] = sum(1 for e in examples if _has_fork(e))
    stats["tokens"] = sum(len(e) for e in examples)
    return examples, stats


def _lay_fitting(config: SFTConfig, tokenizer, prompt: str, answer: str, **options) -> LaidOut | None:
    """`layout_example` of one answer with `options`, or None when its prompt or the laid-out example is too long."""
    prompt_ids = chat_prompt_ids(tokenizer, prompt)
    if len(prompt_ids) > config.max_prompt_tokens:
        return None
    laid = layout_example(tokenizer, prompt_ids, answer, config.layout, **options)
    return None if len(laid) > config.max_length else laid


def _lay_repeat(config: SFTConfig, tokenizer, row: dict) -> LaidOut | None:
    """A cut answer ending in a repeated outline item, or None when it does not end in one or does not fit."""
    laid = _lay_fitting(config, tokenizer, row["prompt"], row["annotated"], end_with_eos=False, negatives="repeat")
    return laid if laid is not None and bool((laid.negatives >= 0).any()) else None


def correction_point(tokenizer, chosen: str, rejected: str) -> tuple[int, int] | None:
    """(index, rejected token) of the first main-thread token where a pair's chosen and rejected answers part; None
    when the rejected side is a prefix of the chosen one (nothing to correct)."""
    chosen_ids = forced_program(tokenizer, chosen).main
    rejected_ids = forced_program(tokenizer, rejected).main
    for index, (a, b) in enumerate(zip(chosen_ids, rejected_ids)):
        if a != b:
            return index, b
    return None


def _lay_correction(config: SFTConfig, tokenizer, row: dict) -> LaidOut | None:
    """The chosen side up to the token where it parts from the rejected one, that token its one label; None when
    the sides do not part or it does not fit."""
    point = correction_point(tokenizer, row["chosen"], row["rejected"])
    if point is None:
        return None
    return _lay_fitting(config, tokenizer, row["prompt"], row["chosen"], correction=(*point, config.correction_weight))


def decoding_conventions(data_stats: dict) -> dict:
    """What a model trained on these examples needs at decode time (pasta_decoding.json): outline topics when most
    forked examples were outlined (`outline_terminated` too when most of those outlines end their items with ';');
    `draft_tokens` when at least 90% of their promises carry one token count (the model will write it too: promise
    drafts propose it for a list's first promise, DecodeLimits.draft_tokens)."""
    forked = data_stats.get("examples_with_chunks", 0)
    outlined = data_stats.get("examples_with_outline", 0)
    conventions = {"outline_topics": forked > 0 and outlined * 2 >= forked}
    if conventions["outline_topics"] and data_stats.get("examples_with_terminated_outline", 0) * 2 > outlined:
        conventions["outline_terminated"] = True
    counts = data_stats.get("promise_tokens") or {}
    if counts:
        value, n = max(counts.items(), key=lambda item: item[1])
        if n >= 0.9 * sum(counts.values()) and 0 < int(value) <= 100000:
            conventions["draft_tokens"] = int(value)
    return conventions


_PROMISE_TOKENS = re.compile(r'<promise\b[^>]*?\btokens="(\d+)"')


def _has_fork(laid: LaidOut) -> bool:
    return bool((laid.position_ids[1:] - laid.position_ids[:-1] != 1).any())


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, items: list[LaidOut]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> LaidOut:
        return self.items[i]


def train_sft(config: SFTConfig, callbacks: list | None = None) -> Path:
    """Fine-tune; returns the folder holding the adapter (or full model), its layout and the training log.
    An interrupted run (Ctrl-C, a crash) resumes from its latest checkpoint with `resume=True`."""
    from transformers import Trainer, TrainingArguments, set_seed

    from ..models import load_model

    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    set_seed(config.seed)  # before the adapter's random init, so a resumed run rebuilds the same model
    loaded = load_model(config.model, dtype="float32", adapter=False)
    model, tokenizer = loaded.model, loaded.tokenizer
    model.train()
    if config.lora and config.init_adapter is not None:
        from peft import PeftModel

        folder = init_adapter_folder(config.init_adapter)
        recorded = folder / "pasta_layout.json"
        if recorded.is_file() and json.loads(recorded.read_text()) != asdict(config.layout):
            log.warning("%s was trained with layout %s; this run lays out examples with %s", folder,
                        recorded.read_text().strip(), asdict(config.layout))
        # The LoRA layers are built in the base model's fp32 and the saved weights (bf16 for the embedded adapter)
        # are copied into them: trainable fp32.
        model = PeftModel.from_pretrained(model, str(folder), is_trainable=True)
    elif config.lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
            target_modules="all-linear", task_type="CAUSAL_LM",
        ))
    rows = read_rows(config.data)
    plain_rows = read_rows(config.plain_data) if config.plain_data else None
    repeat_rows = read_repeat_rows(config.repeat_data) if config.repeat_data else None
    correction_rows = (read_correction_rows(config.correction_data, config.correction_kinds)
                       if config.correction_data else None)
    examples, data_stats = build_examples(config, tokenizer, rows, plain_rows, repeat_rows, correction_rows)
    if not examples:
        raise ValueError(f"no usable training example in {config.data} (all too long or invalid)")
    log.info("training data: %s", data_stats)
    (out / "data_stats.json").write_text(json.dumps(data_stats, indent=2))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    class PastaTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = causal_lm_loss(model, inputs, config.unlikelihood)
            return (loss, None) if return_outputs else loss

    args = TrainingArguments(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        lr_scheduler_type="linear",
        warmup_steps=max(1, int(0.03 * _total_steps(config, len(examples)))),
        logging_steps=config.logging_steps,
        save_steps=config.save_steps,
        save_total_limit=2,
        bf16=config.bf16,
        seed=config.seed,
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = PastaTrainer(
        model=model, args=args, train_dataset=_ListDataset(examples),
        data_collator=lambda batch: collate(batch, pad_id), callbacks=callbacks,
    )
    last = _last_checkpoint_step(out / "checkpoints")
    if config.resume and last >= _total_steps(config, len(examples)) and (out / "sft_config.json").is_file():
        # Finished before (its final files are written after the last step): resuming would train one more step
        # (the Trainer does so when max_steps ends mid-epoch), so leave everything as it is.
        log.info("%s: already trained for %d steps; nothing to do", out, last)
        return out
    trainer.train(resume_from_checkpoint=bool(config.resume and last) or None)
    model.save_pretrained(out)
    if not config.lora:
        tokenizer.save_pretrained(out)
    (out / "pasta_layout.json").write_text(json.dumps(asdict(config.layout)))
    (out / "pasta_decoding.json").write_text(json.dumps(decoding_conventions(data_stats)))
    (out / "sft_config.json").write_text(json.dumps(asdict(config), indent=2))
    write_loss_log(trainer.state.log_history, out)
    return out


def _last_checkpoint_step(folder: Path) -> int:
    """The step of the newest Trainer checkpoint in `folder` (checkpoint-N), 0 without any."""
    steps = [int(p.name.split("-")[-1]) for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return max(steps, default=0)


def _total_steps(config: SFTConfig, n: int) -> int:
    if config.max_steps > 0:
        return config.max_steps
    return math.ceil(n / (config.batch_size * config.grad_accum) * config.epochs)


def write_loss_log(history: list[dict], out: Path) -> None:
    """training_log.csv and loss.png from the Trainer's log history."""
    points = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    with open(out / "training_log.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "loss"])
        writer.writerows(points)
    if not points:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([p[0] for p in points], [p[1] for p in points], marker=".")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (layout-exact)")
    ax.set_title("pasta train sft")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=120)
    plt.close(fig)
