"""A run's first files (config.yaml, labels.json, params.txt, an empty metrics.jsonl), written once
every check has passed, and the run log's opening lines."""
from __future__ import annotations

import json

from ..io import atomic_write_text
from ..metrics import imbalance_note
from ..model import format_table
from ..runs.directory import prepare_run_dir


def log_interval(log_every, total_steps: int) -> int:
    """train.log_every as a number of steps. auto: 50 points or more on the loss curve (every step of a run
    under 100 steps: a 90-step run logged every 20 drew 4 points), at most every 20 steps, so a long run
    writes no more lines than it did at the former fixed 20."""
    if log_every != "auto":
        return log_every
    return min(20, max(1, total_steps // 50))


def write_run_header(recipe) -> None:
    if not recipe.acc.is_main_process:
        return
    table = format_table(recipe.rows, recipe.n_params, recipe.cfg.budget.max_trainable)
    if not recipe.resume:  # a resumed run keeps its files; checkpoint.restore truncates metrics.jsonl
        recipe._new_dir = prepare_run_dir(recipe.run_dir, overwrite=recipe.overwrite, resume=False)
        atomic_write_text(recipe.run_dir / "config.yaml", recipe.cfg.to_yaml(recipe.config_notes, recipe.config_header))
        atomic_write_text(recipe.run_dir / "labels.json", json.dumps(recipe.data.label_names))
        atomic_write_text(recipe.run_dir / "params.txt", table + "\n")
        (recipe.run_dir / "metrics.jsonl").write_text("", encoding="utf-8")
    imbalance = imbalance_note(recipe.data.train.labels, recipe.data.label_names, recipe.cfg.train.metric)
    for note in recipe.data.notes + ([imbalance] if imbalance else []):
        recipe.log(f"data: {note}")
    for w in recipe.data.warnings:
        recipe.log(f"warning: {w}")
    recipe.log(f"train {len(recipe.train_ds):,} / val {len(recipe.val_ds):,} items, {len(recipe.data.label_names)} labels; "
               f"{recipe.total_steps:,} optimizer steps ({recipe.steps_per_epoch:,}/epoch) on {recipe.acc.device} "
               f"x{recipe.acc.num_processes}, precision {recipe.acc.mixed_precision}; training loss logged every "
               f"{recipe.log_every:,} step{'s' * (recipe.log_every != 1)}")
    recipe.log(table.splitlines()[-1])
