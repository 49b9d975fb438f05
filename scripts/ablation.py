"""The Stage-1 ablation behind docs/training.md: what makes the default model loop, and what fixes it.

Each run fine-tunes SmolLM2-135M-Instruct (resumable, 1 CPU thread) and is measured on the development set,
AlpacaEval instructions 100-139 (never trained on; the README's figures use 0-99), by asynchronous decoding only,
greedy, 512 tokens: the structure of the answers (complete, promises, sync, repeated topics, guards) is what the
ablation is about; wall-clock speed is measured on the final model only.

    python scripts/ablation.py --run r1-sharegpt-v2      # train (or resume) and evaluate one run
    python scripts/ablation.py --table                   # the Markdown table from the committed summaries

Data files come from `pasta annotate` / `pasta distill` (see scripts/build_default_model.sh):
data/sft-sharegpt-v2.jsonl (ShareGPT, annotator v2), data/sft-distill-v2.jsonl (the base model's own answers to
ShareGPT instructions, annotated: mostly plain). Version N of the structural annotator writes data/sft-*-vN.jsonl
(`pasta annotate --annotator structural --structural-version N --tokenizer default`, --source sharegpt or the kept
distilled answers). Distilled answers: `pasta distill --source sharegpt --instructions-only --shuffle-seed 0
--list-share 0.5 --max-new-tokens 400 --max-batch 32 --max-repetition 0.25` with --limit 368 (--out
data/distill-instr.jsonl --kept data/distill-kept.jsonl: r13, r15) or --limit 736 (--out data/distill736-instr.jsonl
--kept data/distill736-kept.jsonl: r16; the first 368 prompts are the same, so it can start from a copy of the 368).

    python scripts/ablation.py --run r16-v5-outline-plain736 --threads 2 --eval-workers 2   # 2 cores: ~1 h + 10 min
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results" / "ablation"
PY = sys.executable
COMMON = ["--batch-size", "4", "--save-steps", "20", "--bf16", "--resume"]

# name -> (what it changes, data files, extra `pasta train sft` arguments). r0 is the first default model.
SHAREGPT_V2 = ["data/sft-sharegpt-v2.jsonl"]
DISTILL_PLAIN = ["--plain-data", "data/sft-distill-v2.jsonl"]
BASE = ["--max-length", "448", "--max-examples", "1200"]
RUNS: dict[str, tuple[str, list[str], list[str]]] = {
    "base": ("reference: SmolLM2-135M-Instruct itself, no Pasta training", [], []),
    "r0-first-default": ("the first default model: ShareGPT, annotator v1, 120 steps", [], []),
    "r1-sharegpt-v2": ("annotator v2 (<= 6 chunks, markers in main, distinct topics), else as r0",
                       SHAREGPT_V2, ["--max-steps", "120", *BASE]),
    "r2-plain-self": ("r1, plain examples from the base model's own answers (self-distilled)",
                      SHAREGPT_V2, ["--max-steps", "120", *BASE, *DISTILL_PLAIN]),
    "r3-plain-self-long": ("r2 trained 3x longer (360 steps)",
                           SHAREGPT_V2, ["--max-steps", "360", *BASE, *DISTILL_PLAIN]),
    # r1, not r2: r2's 82 distilled plain answers cannot make half of 1200 examples (r2 itself got 78 of 960, 8%)
    "r4-plain50": ("r1 with 50% plain examples (r1: 20%; plain answers from ShareGPT, as r1's)",
                   SHAREGPT_V2, ["--max-steps", "120", *BASE, "--annotated-fraction", "0.5"]),
    "r5-reserve10": ("r2 with 10x reservation (r2: 2x)",
                     SHAREGPT_V2, ["--max-steps", "120", *BASE, *DISTILL_PLAIN, "--reserve-factor", "10"]),
    "r6-reserve-fixed": ("r2 with a fixed reservation of 64 positions per chunk",
                         SHAREGPT_V2, ["--max-steps", "120", *BASE, *DISTILL_PLAIN, "--fixed-reserve", "64"]),
    "r7-reserve1": ("r2 with 1x reservation", SHAREGPT_V2,
                    ["--max-steps", "120", *BASE, *DISTILL_PLAIN, "--reserve-factor", "1"]),
    "r9-v3": ("r2 with annotator v3 (items grouped into ~60-token chunks, short topics)",
              ["data/sft-sharegpt-v3.jsonl"], ["--max-steps", "120", *BASE, *DISTILL_PLAIN]),
    "r10-v3-3chunks": ("r9 with at most 3 chunks per answer (74% of lists get exactly 3)",
                       ["data/sft-sharegpt-v3c3.jsonl"],
                       ["--max-steps", "120", *BASE, "--plain-data", "data/sft-distill-v3c3.jsonl"]),
    "r11-main-weight4": ("r10 with the main thread's loss weighted 4x (topics, markers, sync decisions)",
                         ["data/sft-sharegpt-v3c3.jsonl"],
                         ["--max-steps", "120", *BASE, "--plain-data", "data/sft-distill-v3c3.jsonl",
                          "--main-loss-weight", "4"]),
    "r12-v3-long": ("r9 trained 6x longer (720 steps)",
                    ["data/sft-sharegpt-v3.jsonl"], ["--max-steps", "720", *BASE, *DISTILL_PLAIN]),
    "r13-v4-counted": ("r3 with annotator v4: counted topics ('2/3 Exercise'), 360 steps; plain examples from 368 "
                       "distilled prompts (r3: 736)",
                       ["data/sft-sharegpt-v4.jsonl"],
                       ["--max-steps", "360", *BASE, "--plain-data", "data/sft-distill-v4.jsonl"]),
    "r14-v3-counted": ("r13 with annotator v3's grouping (~60-token chunks, short topics) and counted topics",
                       ["data/sft-sharegpt-v3c.jsonl"],
                       ["--max-steps", "360", *BASE, "--plain-data", "data/sft-distill-v3c.jsonl"]),
    "r15-v5-outline": ("r13 with annotator v5: an outline line ('Overview: Diet; Sleep; Walk.') before each list, so "
                       "the main thread copies each topic from text in view",
                       ["data/sft-sharegpt-v5.jsonl"],
                       ["--max-steps", "360", *BASE, "--plain-data", "data/sft-distill-v5.jsonl"]),
    "r16-v5-outline-plain736": ("r15 with plain examples from 736 distilled prompts, as r3 (r15: 368)",
                                ["data/sft-sharegpt-v5.jsonl"],
                                ["--max-steps", "360", *BASE, "--plain-data", "data/sft-distill736-v5.jsonl"]),
    "r8-full-ft": ("r2 as a full fine-tune (lr 5e-5) instead of LoRA", SHAREGPT_V2,
                   ["--max-steps", "120", *BASE, *DISTILL_PLAIN, "--full", "--lr", "5e-5"]),
}
# Stage 2 rows: name -> (what it changes, `pasta train pref` arguments, bench decoding arguments); evaluated like the
# Stage-1 rows. An argument naming a SHIPPED adapter ("shipped-r17") is its restored folder.
# One round on r17 from correction pairs (scripts/correction_pairs.py), decoded as r17 is (outline topics).
CORRECTIONS_ON_R17 = ["--adapter", "shipped-r17", "--epochs", "2", "--lr", "1e-4", "--alpha", "0.5", "--beta", "0.1",
                      "--threads", "2"]
STAGE2: dict[str, tuple[str, list[str], list[str]]] = {
    "s2-pref-r3": ("one Stage-2 round (BoNBoN, speed only: 48 ShareGPT prompts x 4 samples at T=0.8, 44 pairs, "
                   "lr 5e-5) on r3",
                   ["--prompts", "data/pref-prompts.jsonl", "--num-prompts", "48", "--adapter",
                    "runs/abl/r3-plain-self-long", "--n", "4", "--temperature", "0.8", "--top-p", "0.95",
                    "--max-new-tokens", "384", "--max-thread-tokens", "256", "--judge", "none", "--threads", "1",
                    "--lr", "5e-5", "--alpha", "0.5"], ["--no-outline-topics"]),
    "r21-pref-corrections": ("one Stage-2 round on r17 from its guard corrections: 197 pairs of a corrected answer "
                             "(chosen) against the model's own continuation where the outline guard stepped in "
                             "(rejected, cut off: a repeated outline item, or a promise past the outline), from "
                             "r17's greedy and sampled round-2 answers (scripts/correction_pairs.py --kinds "
                             "outline_repeat,outline_done); BoNBoN, 2 epochs at lr 1e-4",
                             ["--pairs", "data/pairs-r17.jsonl", *CORRECTIONS_ON_R17], ["--outline-topics"]),
    "r22-pref-corrections-one-item": ("r21 plus 176 pairs for forks of one chunk (an outline of one idea): the same "
                                      "answer in plain text (chosen) against the answer cut after 'Overview:' "
                                      "(rejected); 373 pairs, 2 epochs at lr 1e-4",
                                      ["--pairs", "data/pairs-r17-all.jsonl", *CORRECTIONS_ON_R17],
                                      ["--outline-topics"]),
    "r23-pref-corrections-cut": ("r22 with the chosen side cut at the end of the line where the two sides part "
                                 "(scripts/correction_pairs.py --cut-chosen): r22 met its margins by raising whole "
                                 "answers a little while p('Overview') barely moved (0.997 -> 0.991, "
                                 "scripts/pair_margins.py)",
                                 ["--pairs", "data/pairs-r17-cut.jsonl", *CORRECTIONS_ON_R17], ["--outline-topics"]),
}
# Decoding rows: name -> (what changes, the trained run whose adapter is decoded, extra bench arguments).
DECODING: dict[str, tuple[str, str, list[str]]] = {
    "r15-outline-fed": ("r15 decoded with DecodeLimits.outline_topics (each topic fed from the outline line)",
                        "r15-v5-outline", ["--outline-topics"]),
    "r16-outline-fed": ("r16 decoded with outline topics and the outline guard (a repeated or ninth item ends the "
                        "outline)", "r16-v5-outline-plain736", ["--outline-topics"]),
    "r16-shipped": ("the shipped r16 adapter (bf16) decoded as shipped: r16-outline-fed plus the outline-done guard "
                    "(a promise past the outline is refused as it opens)", "shipped-r16", ["--outline-topics"]),
    **{f"r17-presence-{p}": (f"the shipped r17 decoded with a presence penalty of {p} on each thread's own words "
                             "(pasta.penalties)", "shipped-r17", ["--outline-topics", "--presence-penalty", p])
       for p in ("0.3", "0.5", "0.8", "1.2")},
    "r17-presence-0.5-frequency-0.3": ("r17-presence-0.5 plus a frequency penalty of 0.3", "shipped-r17",
                                       ["--outline-topics", "--presence-penalty", "0.5", "--frequency-penalty", "0.3"]),
    "r20-presence-0.5": ("r20-onpolicy-best-of-4 decoded with a presence penalty of 0.5", "r20-onpolicy-best-of-4",
                         ["--outline-topics", "--presence-penalty", "0.5"]),
    "r21-presence-0.5": ("r21-pref-corrections decoded with a presence penalty of 0.5",
                         "r21-pref-corrections/round-1/adapter", ["--outline-topics", "--presence-penalty", "0.5"]),
    "r17-presence-0.5-drafts": ("r17-presence-0.5 with promise drafts (DecodeLimits.draft_promises): each next promise "
                                "line of a counted list drafted from the previous one, and the first after an "
                                "outline with the count 30 the model always writes, each checked in one pass",
                                "shipped-r17", ["--outline-topics", "--presence-penalty", "0.5", "--draft-promises",
                                                "--draft-tokens", "30"]),
    "r17-no-repeat": ("r17-presence-0.5-drafts (r17 as shipped) with outline items that cannot copy an earlier one "
                      "(DecodeLimits.outline_no_repeat, pasta.outline_bans: the token that would complete a copy is "
                      "banned, the outline's own no_repeat_ngram_size)", "shipped-r17",
                      ["--outline-topics", "--presence-penalty", "0.5", "--draft-promises", "--draft-tokens", "30",
                       "--outline-no-repeat"]),
}
# On-policy rows: name -> (what changes, adapter to continue from, data, extra `pasta train sft` arguments, bench
# decoding arguments: as its starting point was when its data was generated). The data
# is the starting model's own greedy answers to ShareGPT instructions with its guards on, filtered
# (scripts/onpolicy_distill.py, pasta.data.onpolicy).
R25_DATA = "results/candidates/r25-unlikelihood/data"  # committed: the data of rows r25-r29
R17_PAIRS = "results/candidates/r21-pref-corrections/pairs-r17-all.jsonl"  # r17's correction pairs, all kinds
# rows r25-r29: one round on r17 with the same data, schedule and unlikelihood on r17's repeats; they differ after it
R25_ROUND_DATA = [f"{R25_DATA}/sft-onpolicy-r17p.jsonl",
                  "results/candidates/r20-onpolicy-best-of-4/data/sft-sampled-r17.jsonl"]
R25_SCHEDULE = ["--epochs", "2", "--lr", "1e-4", "--annotated-fraction", "data", "--max-length", "640",
                "--unlikelihood", "1.0"]
R25_ROUND = [*R25_SCHEDULE, "--repeat-data", R17_PAIRS]
# row r30: the same data and pairs with terminated outlines (scripts/terminate_outlines.py), committed
R30_DATA = "results/candidates/r30-terminated-outlines/data"
R30_ROUND_DATA = [f"{R30_DATA}/sft-onpolicy-r17p-terminated.jsonl", f"{R30_DATA}/sft-sampled-r17-terminated.jsonl"]
R30_PAIRS = f"{R30_DATA}/pairs-r17-all-terminated.jsonl"
# row r32: r17's answers to the guarded-fork prompts of r24's data, decoded with the outline ban, committed
R32_BANNED = "results/candidates/r32-unlikelihood-banned/data/sft-banned-r17.jsonl"
OUTLINED = ["--outline-topics"]  # decoded with outline topics and their guards, as r16 and r17 record
PENALISED = [*OUTLINED, "--presence-penalty", "0.5"]  # ... and r17's presence penalty (its default since r24)
ONPOLICY: dict[str, tuple[str, str, list[str], list[str], list[str]]] = {
    "r17-onpolicy": ("one round of on-policy self-distillation on the shipped r16: its own answers to 640 ShareGPT "
                     "instructions, decoded with its guards, kept when clean (guard-corrected outlines included), "
                     "2 epochs at lr 2e-4", "shipped-r16", ["data/sft-onpolicy-r16.jsonl"],
                     ["--epochs", "2", "--lr", "2e-4", "--annotated-fraction", "data", "--max-length", "640"], OUTLINED),
    "r18-onpolicy-strict": ("a second round on r17, rejection sampling: r17's own answers to 640 other ShareGPT "
                            "instructions (shuffle seed 2), kept only when no guard touched them, the fork saves "
                            ">= 1.3x and no chunk runs on into the next item",
                            "shipped-r17", ["data/sft-onpolicy-r17.jsonl"],
                            ["--epochs", "2", "--lr", "2e-4", "--annotated-fraction", "data", "--max-length", "640"], OUTLINED),
    "r19-onpolicy-fallback": ("r18 plus a plain target for every prompt on which r17 forked and a guard stepped in: "
                              "the base model's own plain answer to it, kept when it ends by EOS and repeats little "
                              "(scripts/onpolicy_distill.py --fallback-out/--fallback-kept)",
                              "shipped-r17", ["data/sft-onpolicy-r17.jsonl", "data/sft-fallback-r17.jsonl"],
                              ["--epochs", "2", "--lr", "2e-4", "--annotated-fraction", "data", "--max-length", "640"], OUTLINED),
    "r20-onpolicy-best-of-4": ("r18 without refusals (--drop-evasive) plus, for each prompt on which r17 forked and a "
                               "guard stepped in, the fastest clean fork among 4 answers sampled at temperature 0.7, "
                               "top-p 0.9 (--guarded-prompts-of --samples 4 --best-per-prompt --forked-only)",
                               "shipped-r17", ["data/sft-onpolicy-r17-noevasive.jsonl", "data/sft-sampled-r17.jsonl"],
                               ["--epochs", "2", "--lr", "2e-4", "--annotated-fraction", "data", "--max-length", "640"], OUTLINED),
    "r24-onpolicy-presence": ("r18 with its data decoded with the presence penalty 0.5 (r17's default since 2026-12-06): "
                              "r17's own answers to the same 640 ShareGPT instructions, kept only when no guard "
                              "touched them, the fork saves >= 1.3x, no chunk runs on and no refusal "
                              "(--clean-only --one-item-per-chunk --min-fork-speedup 1.3 --drop-evasive); decoded "
                              "with the penalty", "shipped-r17", ["data/sft-onpolicy-r17p.jsonl"],
                              ["--epochs", "2", "--lr", "2e-4", "--annotated-fraction", "data", "--max-length", "640"],
                              PENALISED),
    "r25-unlikelihood": ("one round on r17 with unlikelihood on repeated outline items (pasta.train.unlikelihood, "
                         "weight 1): cross-entropy on r24's data and r20's best-of-4 forks for the guarded prompts, "
                         "where each token that would copy an earlier outline item is pushed down, plus the 130 "
                         "repeated outlines r17 wrote itself (the rejected side of its outline_repeat correction "
                         "pairs) on unlikelihood alone; 2 epochs at lr 1e-4; decoded with the presence penalty 0.5",
                         "shipped-r17", R25_ROUND_DATA,
                         [*R25_ROUND, "--no-unlikelihood-empty-items"],
                         PENALISED),
    "r26-unlikelihood-empty": ("r25 where each outline item's first token also pushes down the separators ';' and '.' "
                               "(an empty item, where r25 escaped to: 'Grill;; Store')", "shipped-r17",
                               R25_ROUND_DATA, R25_ROUND, PENALISED),
    "r27-token-corrections": ("r26 plus token-level corrections from all 373 of r17's correction pairs "
                              "(--correction-data, weight 10): at the one token where the corrected answer parts from "
                              "r17's own, cross-entropy on the correction ('.' ending the outline, '<sync/>' ending "
                              "the list, the plain list instead of a one-item 'Overview') and unlikelihood on r17's "
                              "token (';', '4.', 'Overview')", "shipped-r17",
                              R25_ROUND_DATA,
                              [*R25_ROUND, "--correction-data", R17_PAIRS],
                              PENALISED),
    "r28-token-corrections-lists": ("r27 with the list decisions alone (--correction-kinds outline_repeat "
                                    "outline_done: 197 pairs, '.' ending the outline and '<sync/>' ending the list): "
                                    "r27 learned from the one_item pairs to skip the outline, not the fork", "shipped-r17",
                              R25_ROUND_DATA,
                              [*R25_ROUND, "--correction-data", R17_PAIRS,
                               "--correction-kinds", "outline_repeat", "outline_done"],
                              PENALISED),
    "r29-token-corrections-weight1": ("r28 with the corrections' cross-entropy at weight 1 (--correction-weight 1), "
                                      "as any answer token: r28 learned to end every outline after one or two items", "shipped-r17",
                              R25_ROUND_DATA,
                              [*R25_ROUND, "--correction-data", R17_PAIRS,
                               "--correction-kinds", "outline_repeat", "outline_done", "--correction-weight", "1"],
                              PENALISED),
    "r32-unlikelihood-banned": ("r25 plus r17's own greedy answers to the 211 ShareGPT prompts of r24's data on which "
                                "it forked and a guard stepped in, decoded again with the outline ban "
                                "(DecodeLimits.outline_no_repeat) and kept when no guard touched them: where the ban "
                                "acted, the target is the model's own next choice instead of the copy, beside "
                                "unlikelihood on the copy", "shipped-r17",
                                [*R25_ROUND_DATA, R32_BANNED],
                                [*R25_ROUND, "--no-unlikelihood-empty-items"],
                                PENALISED),
    "r30-terminated-outlines": ("r26 with terminated outlines ('Overview: Diet; Sleep;': scripts/terminate_outlines.py on "
                                "its data and r17's pairs), so the decision to end falls on the next item's first token "
                                "(a newline against the item, a copy included), plus r17's repeats as token corrections "
                                "there (a newline against the copy, --correction-kinds outline_repeat, weight 1)",
                                "shipped-r17", R30_ROUND_DATA,
                                [*R25_SCHEDULE, "--repeat-data", R30_PAIRS, "--correction-data", R30_PAIRS,
                                 "--correction-kinds", "outline_repeat", "--correction-weight", "1"],
                                [*PENALISED, "--outline-terminated"]),
    "r31-terminated-no-corrections": ("r30 without the corrections (r26 on terminated data): is the early end the "
                                      "form's or the corrections'", "shipped-r17", R30_ROUND_DATA,
                                      [*R25_SCHEDULE, "--repeat-data", R30_PAIRS], [*PENALISED, "--outline-terminated"]),
}
DEV = ["--offset", "100", "--limit", "40", "--max-new-tokens", "512", "--no-sequential", "--no-original"]
# --dev100: AlpacaEval 100-199, for gaps the 40 prompts cannot tell apart (a row's 20-odd forks give a guard rate
# +-0.2; r25's 0.08 there was 0.20 on the report set). Rows go to results/ablation/dev100/.
DEV100 = ["--offset", "100", "--limit", "100", *DEV[4:]]


def run(name: str, threads: int = 1, workers: int = 1, dev100: bool = False) -> None:
    if name in DECODING:
        trained = DECODING[name][1]  # "shipped-r16": the embedded r16 adapter, from git history
        folder = _shipped(trained) if trained in SHIPPED else str(ROOT / "runs" / "abl" / trained)
        _evaluate(name, ["--adapter", folder, *DECODING[name][2]], workers, dev100)
        return
    if name in ONPOLICY:
        _, init, data, extra, decoding = ONPOLICY[name]
        init = _shipped(init) if init in SHIPPED else init
        out = ROOT / "runs" / "abl" / name
        subprocess.run([PY, "-m", "pasta.cli", "train", "sft", "--init-adapter", init, "--data", *data, "--out",
                        str(out), *COMMON, *extra, "--threads", str(threads)], check=True, cwd=ROOT)
        _evaluate(name, ["--adapter", str(out), *decoding], workers, dev100)
        return
    if name in STAGE2:
        out = ROOT / "runs" / "abl" / name
        _, pref_args, decoding = STAGE2[name]
        args = [_shipped(a) if a in SHIPPED else a for a in pref_args]
        subprocess.run([PY, "-m", "pasta.cli", "train", "pref", "--out", str(out), *args], check=True, cwd=ROOT)
        _evaluate(name, ["--adapter", str(out / "round-1" / "adapter"), *decoding], workers, dev100)
        return
    what, data, extra = RUNS[name]
    out = ROOT / "runs" / "abl" / name
    if data:
        lr = [] if "--lr" in extra else ["--lr", "5e-4"]
        subprocess.run([PY, "-m", "pasta.cli", "train", "sft", "--data", *data, "--out", str(out), *COMMON, *lr, *extra,
                        "--threads", str(threads)],
                       check=True, cwd=ROOT)
    folder = _r0_adapter() if name.startswith("r0") else out
    if name == "base":
        adapter = ["--no-adapter"]
    elif (folder / "adapter_config.json").is_file():
        adapter = ["--adapter", str(folder)]
    else:  # a full fine-tune (--full) saves the whole model, its layout records beside the weights
        adapter = ["--model", str(folder), "--no-adapter"]
    # A training row measures the adapter alone: no decoding aid, even one its pasta_decoding.json asks for (r16's
    # does; the DECODING rows add them).
    _evaluate(name, [*adapter, "--no-outline-topics"], workers, dev100)


R0_COMMIT = "e86f3e8^"  # the last commit whose embedded default adapter was r0 (r3 replaced it, then r16, r17)
R16_COMMIT = "504deb8b6d"  # the last commit whose embedded default adapter was r16 (bf16; r17 replaced it)
R17_COMMIT = "c7a9a97"  # a commit whose embedded default adapter was r17
# Adapters the rows name by what was shipped: name -> (folder under runs/abl, commit it is restored from).
SHIPPED = {"shipped-r16": ("r16-shipped-adapter", R16_COMMIT), "shipped-r17": ("r17-shipped-adapter", R17_COMMIT)}


def _r0_adapter() -> Path:
    """The first default model's adapter, restored from git history into runs/abl/r0-first-default."""
    return _historic_adapter("r0-first-default", R0_COMMIT)


def _historic_adapter(name: str, commit: str) -> Path:
    """An embedded default adapter of an earlier commit, restored from git history into runs/abl/NAME."""
    out = ROOT / "runs" / "abl" / name
    if not (out / "adapter_model.safetensors").is_file():
        out.mkdir(parents=True, exist_ok=True)
        listed = subprocess.run(["git", "ls-tree", "--name-only", commit, "src/pasta/assets/default-adapter/"],
                                capture_output=True, text=True, check=True, cwd=ROOT).stdout.split()
        for path in listed:
            blob = subprocess.run(["git", "show", f"{commit}:{path}"], capture_output=True, check=True, cwd=ROOT)
            (out / Path(path).name).write_bytes(blob.stdout)
    return out


def _shipped(name: str) -> str:
    """An adapter of SHIPPED, restored from git history."""
    return str(_historic_adapter(*SHIPPED[name]))


def _evaluate(name: str, adapter: list[str], workers: int = 1, dev100: bool = False) -> None:
    folder = RESULTS / "dev100" if dev100 else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{name}.jsonl"
    if dev100 and not out.exists() and (RESULTS / f"{name}.jsonl").exists():
        shutil.copyfile(RESULTS / f"{name}.jsonl", out)  # its answers to 100-139: the same decoding, not redone
    # Rows decode without promise drafts unless they ask for them: the rows before drafts existed were made so.
    drafts = [] if "--draft-promises" in adapter else ["--no-draft-promises"]
    subprocess.run([PY, "bench/default_model.py", *(DEV100 if dev100 else DEV), *adapter, *drafts,
                    "--workers", str(workers), "--out", str(out), "--summary", str(folder / f"{name}.summary.json"),
                    "--json"], check=True, cwd=ROOT)


def restat(name: str) -> None:
    """Recompute a run's per-answer statistics and summary from its committed per-answer rows (after a fix in
    pasta.eval.answer_stats), without decoding again."""
    from types import SimpleNamespace

    from pasta.eval.answer_stats import aggregate, answer_stats
    from pasta.jsonl import append_jsonl, jsonl_lines
    from pasta.models import load_tokenizer

    tok = load_tokenizer(None)
    path = RESULTS / f"{name}.jsonl"
    rows = [row for _, row in jsonl_lines(path)]
    for row in rows:
        timeline = [SimpleNamespace(close_reason=None)] + [SimpleNamespace(close_reason=c["close"]) for c in row["chunks"]]
        stats = SimpleNamespace(timeline=timeline, finish_reason=row["pasta"]["finish_reason"], warnings=row["warnings"],
                                guards=row["pasta"]["guards"], steps=row["pasta"]["steps"])
        result = SimpleNamespace(text=row["output"], annotated=row["annotated"], stats=stats)
        row["pasta"] = answer_stats(result, tok).to_dict()
    path.unlink()
    for row in rows:
        append_jsonl(path, row)
    summary_path = RESULTS / f"{name}.summary.json"
    summary = json.loads(summary_path.read_text())
    bench = _bench_module()
    summary.update(aggregate(rows))
    summary["targets"] = bench.targets(summary)
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")


def _bench_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_default_model", ROOT / "bench" / "default_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _f(x, digits=2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _guards(p: dict, summary: dict | None = None) -> str:
    """The share of forking answers a guard touched, with its 95% Wilson interval: on ~20 forks a couple of answers
    either way is chance, and the interval says how much. Where outline bans were on (outline_no_repeat), the forks
    a guard or a ban touched follow: a ban acts where the model would have repeated itself."""
    from pasta.eval.stats import wilson_interval

    if p["guards_fired"] is None or not p["n"]:
        return "-"
    k = round(p["guards_fired"] * p["n"])
    lo, hi = wilson_interval(k, p["n"])
    text = f"{p['guards_fired']:.2f} ({k}/{p['n']}; {lo:.2f}-{hi:.2f})"
    if (summary or {}).get("outline_no_repeat"):
        either = round(p["guards_or_outline_blocked"] * p["n"])
        text += f"; guard or ban {p['guards_or_outline_blocked']:.2f} ({either}/{p['n']})"
    return text


def table() -> str:
    lines = ["| run | what changes | complete | uses promise | promises / answer | reaches sync | repeated topics "
             "| duplicate chunks | guards fired (forks; 95% interval) | theoretical speedup (complete / complete promise-using) | repetition |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = [(name, what) for name, (what, _, _) in RUNS.items()] + [(name, what) for name, (what, _, _) in STAGE2.items()]
    rows += [(name, what) for name, (what, _, _) in DECODING.items()]
    rows += [(name, what) for name, (what, *_) in ONPOLICY.items()]
    for name, what in rows:
        path = RESULTS / f"{name}.summary.json"
        if not path.is_file():
            continue
        s = json.loads(path.read_text())
        p = s["promise_answers"]
        lines.append(
            f"| {name} | {what} | {_f(s['complete'])} | {_f(s['uses_promise'])} | {_f(p['mean_promises'], 1)} | "
            f"{_f(p['reaches_sync'])} | {_f(p['repeated_topics_share'])} | {_f(p['duplicate_chunks_share'])} | "
            f"{_guards(p, s)} | {_f(s['speedup']['theoretical_geomean_complete'])} / "
            f"{_f(s['speedup']['theoretical_geomean_complete_promise'])} | "
            f"{_f(s['repetition']['pasta_mean'], 3)} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", choices=sorted([*RUNS, *STAGE2, *DECODING, *ONPOLICY]), action="append", default=[])
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for training (results do not depend on it; time does)")
    parser.add_argument("--eval-workers", type=int, default=1,
                        help="decode the development set in this many processes (1 thread each)")
    parser.add_argument("--dev100", action="store_true",
                        help="evaluate on AlpacaEval 100-199 (results/ablation/dev100/; the row's answers to 100-139 "
                             "reused)")
    parser.add_argument("--restat", choices=sorted(RUNS), action="append", default=[],
                        help="recompute a run's statistics from its per-answer rows")
    args = parser.parse_args()
    for name in args.run:
        run(name, args.threads, args.eval_workers, args.dev100)
    for name in args.restat:
        restat(name)
    if args.table:
        print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
