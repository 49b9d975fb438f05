"""The Markdown report and the two plots (matplotlib, Agg backend: no display needed).

- `speedup_distribution.png`: per-prompt wall-clock and theoretical speedups of every system (log scale).
- `pareto.png`: quality (LC win rate against the baseline, +- SE) against speed (geometric-mean wall-clock
  speedup, with its bootstrap 95% interval; hollow markers: theoretical speedup). Points of other runs
  (`compare`, e.g. the model before a preference round) are drawn too, so a move is visible.
"""

from __future__ import annotations

import math
from pathlib import Path

__all__ = ["write_report", "markdown_report", "pareto_front"]


def _fmt(x, digits=2, pct=False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.1f}" if pct else f"{x:.{digits}f}"


def pareto_front(points: list[tuple[str, float, float]]) -> list[str]:
    """Names of the points no other point beats on both speed (x) and quality (y), ties allowed."""
    front = []
    for name, x, y in points:
        dominated = any((x2 >= x and y2 >= y) and (x2 > x or y2 > y) for n2, x2, y2 in points if n2 != name)
        if not dominated:
            front.append(name)
    return front


def _points(summary: dict, prefix: str = "") -> list[tuple[str, float, float]]:
    pts = []
    for system, s in summary["systems"].items():
        x, y = s.get("wall_speedup_geomean"), s.get("lc_win_rate")
        if x is not None and y is not None:
            pts.append((prefix + system, x, y))
    return pts


def markdown_report(summary: dict, rows: list[dict], compare: list[tuple[str, dict]] | None = None) -> str:
    lines = ["# PASTA evaluation", ""]
    cfg = summary["config"]
    if cfg.get("backend", "local") == "local":
        models = f"model `{cfg['model'] or 'default'}`, adapter `{cfg['adapter']}`, dtype {cfg['dtype']}"
    else:  # served: the ids on the server (the notes say where), the local tokenizer
        models = (f"served models `{cfg['remote_model'] or 'first listed'}` (pasta, sequential) and "
                  f"`{cfg['remote_original_model'] or '-'}` (original, sot), tokenizer `{cfg['tokenizer']}`")
    lines += [
        f"- Prompts: `{cfg['prompts']}` ({summary['n_prompts']} evaluated), {models}",
        f"- Decoding: temperature {cfg['temperature']}, top-p {cfg['top_p']}, max_new_tokens {cfg['max_new_tokens']}, "
        f"max_thread_tokens {cfg['max_thread_tokens']}, max_threads {cfg['max_threads']}",
        f"- Speed reference: `{summary['speed_reference']}`; quality baseline: `{summary['baseline']}`; "
        f"judge: `{summary['judge'] or 'none'}`",
        "",
    ]
    for note in summary.get("notes", []):
        lines.append(f"> Note: {note}")
    if summary.get("notes"):
        lines.append("")
    sanity = summary.get("judge_sanity")
    if sanity:
        lines += [f"> **Judge sanity**: {sanity['verdict']} (by kind: "
                  + ", ".join(f"{k} {100 * v:.0f}%" for k, v in sanity.get("by_kind", {}).items()) + ").", ""]
    elif summary.get("judge"):
        lines += ["> **Judge sanity**: not measured for this judge.", ""]
    lines += [
        "| system | n | complete | wall speedup (geomean, 95% CI) | theoretical speedup (geomean, 95% CI) | "
        "win rate % (SE) | LC win rate % (SE) | mean tokens | mean chunks |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for system, s in summary["systems"].items():
        def ci(name):
            g, c = s.get(f"{name}_geomean"), s.get(f"{name}_ci95")
            return "n/a" if g is None else f"{g:.2f}x [{c[0]:.2f}, {c[1]:.2f}]"

        lines.append(
            f"| {system} | {s['n_prompts']} | {_fmt(s.get('complete'))} | {ci('wall_speedup')} | {ci('theoretical_speedup')} | "
            f"{_fmt(s.get('win_rate'), pct=True)} ({_fmt(s.get('win_rate_se'), pct=True)}) | "
            f"{_fmt(s.get('lc_win_rate'), pct=True)} ({_fmt(s.get('lc_win_rate_se'), pct=True)}) | "
            f"{_fmt(s.get('mean_tokens'), 1)} | {_fmt(s.get('mean_threads'), 2)} |"
        )
    pts = _points(summary)
    if pts:
        lines += ["", f"Pareto front (wall speedup vs LC win rate): {', '.join(pareto_front(pts))}"]
    for label, other in compare or []:
        lines += ["", f"Compared run `{label}`:", ""]
        for system, s in other["systems"].items():
            lines.append(f"- {system}: wall {_fmt(s.get('wall_speedup_geomean'))}x, theoretical "
                         f"{_fmt(s.get('theoretical_speedup_geomean'))}x, LC win rate {_fmt(s.get('lc_win_rate'), pct=True)}")
    answers = summary.get("answers")
    if answers:
        p, sp = answers["promise_answers"], answers["speedup"]
        lines += [
            "", "## What the Pasta answers did", "",
            f"- complete (EOS before the cap): {_fmt(answers['complete'])} async, "
            f"{_fmt(answers.get('complete_sequential'))} sequential, {_fmt(answers.get('complete_original'))} original; "
            f"truncated: {answers['truncated']['n']}",
            f"- uses a promise: {_fmt(answers['uses_promise'])}; well formed: {_fmt(answers['well_formed'])}; "
            f"guards fired: {_fmt(answers['guards_fired'])}",
            f"- answers with promises ({p['n']}): reaches sync {_fmt(p['reaches_sync'])}, repeated topics "
            f"{_fmt(p['repeated_topics_share'])} of promises, near-duplicate chunks {_fmt(p['duplicate_chunks_share'])}, "
            f"mean promises {_fmt(p['mean_promises'], 1)}, guards fired {_fmt(p['guards_fired'])}, a guard or an outline "
            f"ban {_fmt(p.get('guards_or_outline_blocked'))}",
            f"- speedups over complete answers only: theoretical {_fmt(sp['theoretical_geomean_complete'])}x "
            f"(promise-using: {_fmt(sp['theoretical_geomean_complete_promise'])}x), wall "
            f"{_fmt(sp['wall_geomean_complete'])}x (n = {sp['n_complete']})",
            f"- repetition rate (repeated word 4-grams): pasta {_fmt(answers['repetition']['pasta_mean'], 3)}, "
            f"original {_fmt(answers['repetition'].get('original_mean'), 3)}",
        ]
    lines += [
        "",
        "Definitions: wall speedup = decode wall time of `sequential` / of the system, per prompt; theoretical "
        "speedup = (plain-text tokens of the system's answer + 1) / its critical path (tags are not counted); both "
        "over complete answers only (EOS before the cap in the system and in `sequential`), aggregated by "
        "geometric mean, 95% percentile-bootstrap intervals over prompts. Win rate = mean judge preference for the "
        "system over the baseline (both presentation orders averaged; identical answers are ties). LC win rate = "
        "100 * sigmoid(theta_0) of the logistic fit P(win) = sigmoid(theta_0 + theta_1 * tanh(len_diff / sd)) "
        "(see docs/eval.md).",
        "",
        "![speedups](speedup_distribution.png)",
        "",
        "![pareto](pareto.png)",
        "",
    ]
    examples = [r for r in rows if r["system"] == "pasta" and (r.get("threads") or 0) > 0][:2]
    if examples:
        lines += ["## Examples with parallel chunks", ""]
        for r in examples:
            lines += [f"**{r['id']}** ({r['threads']} chunks, theoretical {_fmt(r['theoretical_speedup'])}x): "
                      f"{r['instruction'][:200]}", "", "```", r["output"][:1500], "```", ""]
    return "\n".join(lines)


def write_plots(out: Path, summary: dict, rows: list[dict], compare: list[tuple[str, dict]] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    systems = list(summary["systems"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, key, title in ((axes[0], "wall_speedup", "wall-clock speedup"),
                           (axes[1], "theoretical_speedup", "theoretical speedup")):
        data = [[r[key] for r in rows if r["system"] == s and r[key]] or [float("nan")] for s in systems]
        for i, vals in enumerate(data):
            ax.scatter(vals, [i + (j % 7 - 3) * 0.03 for j in range(len(vals))], s=10, alpha=0.5)
            g = summary["systems"][systems[i]].get(f"{key}_geomean")
            if g:
                ax.plot([g, g], [i - 0.3, i + 0.3], color="k", lw=2)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.xaxis.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}" if round(v * 10) % 5 == 0 else ""))
        ax.axvline(1.0, color="grey", ls=":")
        ax.set_title(f"{title} per prompt (bar: geomean)")
        ax.set_xlabel("speedup vs sequential")
    axes[0].set_yticks(range(len(systems)), systems)
    fig.tight_layout()
    fig.savefig(out / "speedup_distribution.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 5))
    labelled: list[tuple[float, float]] = []
    runs = [("", summary)] + [(f"{label}: ", other) for label, other in (compare or [])]
    for k, (prefix, summ) in enumerate(runs):
        for system, s in summ["systems"].items():
            x, y = s.get("wall_speedup_geomean"), s.get("lc_win_rate")
            if x is None or y is None:
                continue
            ci = s.get("wall_speedup_ci95") or [x, x]
            color = f"C{systems.index(system) if system in systems else len(systems)}"
            ax.errorbar([x], [y], xerr=[[x - ci[0]], [ci[1] - x]], yerr=[[s.get("lc_win_rate_se") or 0]] * 2,
                        fmt="o" if k == 0 else "s", color=color, alpha=1.0 if k == 0 else 0.5, capsize=3)
            t = s.get("theoretical_speedup_geomean")
            if t is not None:
                ax.scatter([t], [y], facecolors="none", edgecolors=color, alpha=1.0 if k == 0 else 0.5)
            placed = sum(1 for (px, py) in labelled if abs(px - x) < 0.03 * max(x, 1) and abs(py - y) < 0.5)
            labelled.append((x, y))
            ax.annotate(prefix + system, (x, y), textcoords="offset points", xytext=(5, 5 + 11 * placed), fontsize=8)
    ax.axhline(50, color="grey", ls=":")
    ax.axvline(1, color="grey", ls=":")
    ax.set_xlabel("geometric-mean speedup vs sequential (filled: wall-clock, hollow: theoretical)")
    ax.set_ylabel(f"LC win rate vs {summary['baseline']} (%)")
    ax.set_title("quality vs speed")
    fig.tight_layout()
    fig.savefig(out / "pareto.png", dpi=110)
    plt.close(fig)


def write_report(out: Path, summary: dict, rows: list[dict], *, plots: bool = True,
                 compare: list[tuple[str, dict]] | None = None) -> None:
    out = Path(out)
    if plots:
        write_plots(out, summary, rows, compare)
    (out / "report.md").write_text(markdown_report(summary, rows, compare), encoding="utf-8")
