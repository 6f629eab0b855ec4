"""The experiment report: ``results.json``, ``results.md`` and PNGs from the stage results.

Usage (the last step of :func:`longqa.experiment.run.run_experiment`)::

    report = write_report(out, exp, "cpu", plan=plan, stages=stages, train=..., effective=...,
                          evals={"base": {...}, "paraphrase": {...}}, command="longqa experiment …")

Every accuracy is a share of n binary outcomes with its 95% Wilson interval; fuzzy quote recall
and the LongBench score (a mean of fractional scores) carry a seeded bootstrap interval. Depth
curves bin the relevant document's relative depth in fifths; the chosen-position histograms count
which paragraph each arm picked (form-aware) beside where the gold paragraphs were.
"""

from __future__ import annotations

import os
import platform
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from longqa.core.paths import atomic_write_json, atomic_write_text
from longqa.experiment.stats import fmt, mean_interval, proportion

BINS = 5


def _bin(depth: float) -> str:
    k = min(BINS - 1, int(depth * BINS))
    return f"{k / BINS:.1f}-{(k + 1) / BINS:.1f}"


def summarize_arm(res: dict[str, Any]) -> dict[str, Any]:
    """Headline cells and depth curves of one arm's eval rows."""
    cells: dict[str, Any] = {}
    depth: dict[str, Any] = {}
    hist: dict[str, Any] = {}
    for key, rows in res.items():
        if key.startswith("pr-"):
            cells[f"{key} longbench"] = proportion([r["longbench_hit"] for r in rows])
            cells[f"{key} longbench score"] = mean_interval([r["longbench_score"] for r in rows])
            cells[f"{key} form-aware"] = proportion([r["form_hit"] for r in rows])
            hist[key] = {
                "chosen": dict(Counter(str(r["choice"]) for r in rows)),
                "gold": dict(Counter(str(r["gold"]) for r in rows)),
                "how": dict(Counter(r["choice_how"] for r in rows)),
            }
        elif key == "mdqa":
            cells["mdqa answer"] = proportion([r["answer_hit"] for r in rows])
            cells["mdqa right doc"] = proportion([r["doc_hit"] for r in rows])
            cells["mdqa quote exact"] = proportion([r["quote_exact"] for r in rows])
            cells["mdqa quote fuzzy"] = mean_interval([r["quote_fuzzy"] for r in rows])
            for metric in ("doc_hit", "answer_hit"):
                groups: dict[str, list[bool]] = defaultdict(list)
                for r in rows:
                    groups[_bin(r["depth"])].append(r[metric])
                depth[f"mdqa {metric}"] = {b: proportion(v) for b, v in sorted(groups.items())}
            hist["mdqa"] = {
                "chosen_depth": dict(
                    Counter(
                        _bin((r["choice"] - 1) / max(1, r["num_docs"] - 1))
                        if r["choice"]
                        else "none"
                        for r in rows
                    )
                ),
            }
        else:  # needle, passkey
            cells[key] = proportion([r["correct"] for r in rows])
            groups = defaultdict(list)
            for r in rows:
                groups[f"{r['depth']:g}"].append(r["correct"])
            depth[key] = {
                d: proportion(v) for d, v in sorted(groups.items(), key=lambda x: float(x[0]))
            }
    return {"cells": cells, "by_depth": depth, "histograms": hist}


def machine() -> dict[str, Any]:
    import torch

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }
    return info


def write_report(
    out: Path, exp: Any, profile: str, *, plan: dict, stages: Any, train: dict,
    effective: dict | None, evals: dict[str, Any], command: str,
) -> dict[str, Any]:  # fmt: skip
    """Write results.json / results.md / PNGs under ``out``; returns the results dict."""
    arms = {name: summarize_arm(res) for name, res in evals.items()}
    seconds = {}
    for name in stages.fingerprints:
        rec = stages.record(name)
        if rec:
            seconds[name] = rec.get("seconds")
    results = {
        "experiment": exp.name,
        "profile": profile,
        "command": command,
        "plan": plan,
        "machine": machine(),
        "arms": {a.name: a.form for a in exp.arms},
        "train": train,
        "effective_tokens": effective,
        "results": arms,
        "stage_seconds": seconds,
        "stage_commands": stage_commands(out, exp, plan),
    }
    atomic_write_json(out / "results.json", results)
    plot_depth(arms, out / "accuracy_by_depth.png")
    plot_histograms(arms, out / "chosen_positions.png")
    atomic_write_text(out / "results.md", render_md(results))
    return results


def stage_commands(out: Path, exp: Any, plan: dict) -> list[str]:
    """Equivalent standalone commands of the stages (the experiment runs them in-process)."""
    cmds = []
    for arm in exp.arms:
        if arm.form == "none":
            continue
        cmds.append(
            f"longqa build-data --task paraphrase-mdqa --generator extractive --corpus "
            f"{out}/split/train --out {out}/data/{arm.name} --answer-style {arm.form} "
            f"--opt neutral_questions=true  # sizes: see plan.json"
        )
        cmds.append(
            f"longqa train --recipe {out}/train/{arm.name}/recipe.yaml --data {out}/data/{arm.name}"
            f" --out {out}/train/{arm.name} --resume"
        )
    cmds.append(
        f"longqa build-data --task passage-retrieval --corpus {out}/split/eval "
        f"--out {out}/evaldata/pr-verbatim"
    )
    cmds.append(f"longqa analyze effective-tokens --model {plan['model']} --data {out}/data/<arm>")
    cmds.append(f"longqa eval needle --haystack {out}/split/eval … / longqa eval passkey …")
    cmds.append(
        f"longqa eval compare {out}/eval/base/passkey {out}/eval/<arm>/passkey  # or needle"
    )
    return cmds


def render_md(r: dict[str, Any]) -> str:
    arms = r["results"]
    cols = list(dict.fromkeys(c for a in arms.values() for c in a["cells"]))
    lines = [
        f"# {r['experiment']} — profile `{r['profile']}`",
        "",
        f"Command: `{r['command']}`  ",
        f"Model: {r['plan']['model']}, RoPE `{r['plan']['rope']['method']}`; machine: "
        f"{r['machine']['device']}, {r['machine']['cpus']} CPUs, torch {r['machine']['torch']}, "
        f"load average at report {r['machine']['load_avg']}.",
        "",
        "Cells: value [95% interval]; binary outcomes use the Wilson interval, `longbench score` "
        "and `quote fuzzy` (means of fractional scores) a seeded bootstrap.",
        "",
    ]
    for group in _column_groups(cols):
        n = {
            c: next((a["cells"][c]["n"] for a in arms.values() if c in a["cells"]), 0)
            for c in group
        }
        lines.append("| arm | " + " | ".join(f"{c} (n={n[c]})" for c in group) + " |")
        lines.append("|---" * (len(group) + 1) + "|")
        for name, a in arms.items():
            row = [fmt(a["cells"].get(c)) for c in group]
            lines.append(f"| {name} ({r['arms'][name]}) | " + " | ".join(row) + " |")
        lines.append("")
    lines += ["## Accuracy by depth of the relevant text", ""]
    curves = list(dict.fromkeys(c for a in arms.values() for c in a["by_depth"]))
    for c in curves:
        bins = list(dict.fromkeys(b for a in arms.values() for b in a["by_depth"].get(c, {})))
        lines.append(f"| {c} | " + " | ".join(bins) + " |")
        lines.append("|---" * (len(bins) + 1) + "|")
        for name, a in arms.items():
            cell = a["by_depth"].get(c, {})
            vals = [f"{cell[b]['value']:.2f} ({cell[b]['n']})" if b in cell else "—" for b in bins]
            lines.append(f"| {name} | " + " | ".join(vals) + " |")
        lines.append("")
    lines += ["## Chosen positions (form-aware choice; `None` = no number and no quote)", ""]
    for name, a in arms.items():
        for key, h in a["histograms"].items():
            chosen = h.get("chosen") or h.get("chosen_depth")
            items = sorted(chosen.items(), key=lambda kv: (kv[0] == "None", kv[0]))
            lines.append(f"- {name} / {key}: " + ", ".join(f"{k}: {v}" for k, v in items))
            if "gold" in h:
                lines.append(f"  (gold: {', '.join(f'{k}: {v}' for k, v in sorted(h['gold'].items()))};"
                             f" read from {h['how']})")  # fmt: skip
    lines += ["", "## Training (same recipe, steps and seed for every trained arm)", ""]
    lines.append("| arm | steps | first loss | final loss (mean of last 5) | tokens/s |")
    lines.append("|---|---|---|---|---|")
    for name, t in r["train"].items():
        lines.append(f"| {name} | {t['steps']} | {t['first_loss']} | {_r(t['final_loss'])} | "
                     f"{t['tokens_per_s']} |")  # fmt: skip
    if r["effective_tokens"]:
        lines += ["", "## Effective-token share of each arm's data (base model)", ""]
        lines.append("| arm | samples | assistant tokens | effective share | in quotes |")
        lines.append("|---|---|---|---|---|")
        for name, e in r["effective_tokens"].items():
            lines.append(f"| {name} | {e['samples']} | {e['tokens']} | {_r(e['effective_share'])}"
                         f" | {_r(e['effective_in_quote'])} |")  # fmt: skip
    lines += ["", "## Stages", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in r["stage_seconds"].items()]
    lines += ["", "Equivalent standalone commands:", "", "```"]
    lines += r["stage_commands"] + ["```", ""]
    return "\n".join(lines)


def _r(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def _column_groups(cols: list[str]) -> list[list[str]]:
    pr = [c for c in cols if c.startswith("pr-")]
    md = [c for c in cols if c.startswith("mdqa")]
    rest = [c for c in cols if c not in pr and c not in md]
    return [g for g in (pr, md, rest) if g]


def plot_depth(arms: dict[str, Any], path: Path) -> None:
    from longqa.core.plotting import pyplot, save_figure

    curves = list(dict.fromkeys(c for a in arms.values() for c in a["by_depth"]))
    if not curves:
        return
    plt = pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.4), squeeze=False)
    for ax, c in zip(axes[0], curves, strict=True):
        for name, a in arms.items():
            cell = a["by_depth"].get(c, {})
            xs = list(cell)
            ax.errorbar(range(len(xs)), [cell[x]["value"] for x in xs],
                        yerr=[[max(0.0, cell[x]["value"] - cell[x]["lo"]) for x in xs],
                              [max(0.0, cell[x]["hi"] - cell[x]["value"]) for x in xs]],
                        marker="o", capsize=3, label=name, alpha=0.8)  # fmt: skip
            ax.set_xticks(range(len(xs)), xs, rotation=30, fontsize=7)
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(c, fontsize=9)
        ax.set_xlabel("depth")
    axes[0][0].set_ylabel("accuracy (95% Wilson)")
    axes[0][-1].legend(fontsize=7)
    save_figure(fig, path)
    plt.close(fig)


def plot_histograms(arms: dict[str, Any], path: Path) -> None:
    from longqa.core.plotting import pyplot, save_figure

    keys = list(dict.fromkeys(k for a in arms.values() for k in a["histograms"] if k != "mdqa"))
    if not keys:
        return
    plt = pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.4), squeeze=False)
    width = 0.8 / (len(arms) + 1)
    for ax, key in zip(axes[0], keys, strict=True):
        labels = sorted(
            {k for a in arms.values() for k in a["histograms"].get(key, {}).get("chosen", {})}
            | {k for a in arms.values() for k in a["histograms"].get(key, {}).get("gold", {})},
            key=lambda s: (s == "None", int(s) if s.isdigit() else 0),
        )
        gold = next(a["histograms"][key]["gold"] for a in arms.values() if key in a["histograms"])
        ax.bar([i for i in range(len(labels))], [gold.get(x, 0) for x in labels], width,
               label="gold", color="lightgray")  # fmt: skip
        for j, (name, a) in enumerate(arms.items(), 1):
            h = a["histograms"].get(key, {}).get("chosen", {})
            ax.bar([i + j * width for i in range(len(labels))], [h.get(x, 0) for x in labels],
                   width, label=name)  # fmt: skip
        ax.set_xticks([i + width * len(arms) / 2 for i in range(len(labels))], labels, fontsize=7)
        ax.set_title(f"{key}: chosen paragraph", fontsize=9)
    axes[0][-1].legend(fontsize=7)
    save_figure(fig, path)
    plt.close(fig)
