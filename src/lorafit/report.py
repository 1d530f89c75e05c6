"""What a person reads after a run: curves.png, confusion.png and report.md linking them."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_confusion(confusion: list[list[int]], names: list[str], path: Path, title: str) -> None:
    cm = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2.5, 1.0 * len(names) + 2))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _class_table(m: dict) -> list[str]:
    lines = ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for name, c in m["per_class"].items():
        lines.append(f"| {name} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1-score']:.4f} | {int(c['support'])} |")
    return lines


def _mcc(m: dict) -> str:
    return f", MCC {m['mcc']:.4f}" if "mcc" in m else ""  # eval.json of runs before MCC was measured


def _calibration_section(c: dict | None) -> list[str]:
    """Temperature and expected calibration error before/after (calibration.py), with the reliability diagram."""
    if not c:
        return []
    how = (f"fitted on the validation split ({c['method']})" if c.get("fitted_on") else "not fitted")
    lines = ["", "## Calibration", "", f"- temperature **{c['temperature']:.4g}**, {how}"]
    for split in ("validation", "test"):
        if split in c:
            s = c[split]
            lines.append(f"- {split} (n={s['n']:,}): ECE {s['ece_before']:.4f} → **{s['ece_after']:.4f}**, NLL "
                         f"{s['nll_before']:.4f} → {s['nll_after']:.4f}"
                         + (" (in-sample: the items the temperature was fitted on)" if split == "validation"
                            and c.get("fitted_on") == "validation" else ""))
    if c.get("note"):
        lines.append(f"- note: {c['note']}")
    lines += [f"- ECE: {c['bins']} equal-width bins of the top-class probability", "",
              "![reliability diagram before and after temperature scaling](calibration.png)"]
    return lines


def write_report(run_dir: Path, result: dict, names: list[str]) -> None:
    from .io import atomic_write_text

    from .curves import plot_step_curves

    rows = read_metrics(run_dir)
    if result.get("task") is not None:  # multi_label, regression: their own report
        return write_task_report(run_dir, result, names, rows)
    plot_step_curves(rows, run_dir / "curves.png")  # per logged step (curves.py)
    main = result.get("test") or result["validation"]
    which = "test" if "test" in result else "validation"
    plot_confusion(main["confusion"], names, run_dir / "confusion.png", f"{which} (n={main['n']:,})")
    v = result["validation"]
    params = (run_dir / "params.txt").read_text(encoding="utf-8").strip().splitlines()
    md = ["# lorafit run report", "",
          f"- trainable parameters: {result['trainable']:,} ({params[-1].split(' / ')[-1]}); {params[-2]}",
          f"- best checkpoint: step {result['best_step']} by {result['metric']}",
          f"- validation: accuracy **{v['accuracy']:.4f}**, macro-F1 {v['macro_f1']:.4f}{_mcc(v)}, loss {v['loss']:.4f} (n={v['n']:,})"
          + (" — note: validation items were also trained on (train.final_on_val)" if v.get("seen_in_training") else "")]
    if "test" in result:
        t = result["test"]
        md.append(f"- test: accuracy **{t['accuracy']:.4f}**, macro-F1 {t['macro_f1']:.4f}{_mcc(t)} (n={t['n']:,})")
    md += [f"- **warning**: {w}" for w in result.get("warnings", [])]
    md += _calibration_section(result.get("calibration"))
    md += ["", "## Curves", "", "![training loss at every logged step, learning rate, validation metrics at every evaluation](curves.png)", "",
           f"## {which.capitalize()} per class", ""] + _class_table(main)
    md += ["", "![confusion matrix](confusion.png)", "", "## Files", "",
           "- [config.yaml](config.yaml): the resolved config (`lorafit train --config config.yaml` reproduces the run)",
           "- [params.txt](params.txt): trainable parameters per module",
           "- [metrics.jsonl](metrics.jsonl): one line per log step, epoch and evaluation",
           "- [eval.json](eval.json): final metrics",
           "- [calibration.json](calibration.json): the temperature `lorafit predict --probs` applies",
           "- adapter/ (PEFT format) or model/ (full fine-tuning), with the tokenizer", "",
           "## Parameter table", "", "```", *params, "```", ""]
    atomic_write_text(run_dir / "report.md", "\n".join(md))


def write_task_report(run_dir: Path, result: dict, names: list[str], rows: list[dict]) -> None:
    """report.md of a multi_label or regression run: its scores, per label (with thresholds) for multi_label."""
    from . import tasks
    from .io import atomic_write_text

    from .config import TASK_METRICS
    from .curves import plot_step_curves

    task = result["task"]
    plot_step_curves(rows, run_dir / "curves.png", metrics=tuple(m for m in TASK_METRICS[task] if m != "loss"))
    v = result["validation"]
    params = (run_dir / "params.txt").read_text(encoding="utf-8").strip().splitlines()
    md = ["# lorafit run report", "", f"- task: {task}",
          f"- trainable parameters: {result['trainable']:,} ({params[-1].split(' / ')[-1]}); {params[-2]}",
          f"- best checkpoint: step {result['best_step']} by {result['metric']}",
          f"- validation: {tasks.describe(v, ',')}, loss {v['loss']:.4f} (n={v['n']:,})"
          + (" — note: validation items were also trained on (train.final_on_val)" if v.get("seen_in_training") else "")]
    if "test" in result:
        md.append(f"- test: {tasks.describe(result['test'], ',')} (n={result['test']['n']:,})")
    if "threshold_tuning" in result:  # multi_label's
        from .thresholds import describe

        tuned = bool(result["threshold_tuning"]["tuned_labels"])
        md.append(f"- {describe(result['threshold_tuning'])}"
                  + ("; the validation scores use thresholds tuned on those rows, so they are optimistic (the test "
                     "scores are not)" if tuned else ""))
    md += [f"- **warning**: {w}" for w in result.get("warnings", [])]
    md += ["", "## Curves", "", "![loss and score per epoch](curves.png)", ""]
    md += tasks.get(task).report_lines(result)
    md += ["", "## Parameter table", "", "```", *params, "```", ""]
    atomic_write_text(run_dir / "report.md", "\n".join(md))
