"""The end of a run, after the training loop: the best weights back (or one more epoch on train +
validation), the final validation and test metrics, calibration, warnings, and the run's files
(weights, eval.json, report.md); a failure while writing leaves no half-finished run behind.

Kept apart from the recipe's setup and loop (train/recipe.py): it reads the recipe's state and writes
the result, and `lorafit train --resume` of a run that stopped here runs only this part again."""
from __future__ import annotations

import json
import shutil

from .. import calibration, tasks
from ..io import atomic_write_text
from ..metrics import never_predicted
from ..runs.weights import save_weights, weights_folder
from . import checkpoint, evaluation, final_epoch


def finish_run(recipe) -> dict:
    """The final result (also eval.json); the main process writes the run's files."""
    from ..report import write_report

    cfg = recipe.cfg
    evaluation.load_best(recipe)
    recipe.cleanup()  # drop the prefix cache: the full model from here on (final epoch, final metrics, saving)
    held_out, task = None, tasks.task_of(cfg)
    if cfg.train.final_on_val and (task.calibrated or task.tuned):
        # the best checkpoint's logits on the validation rows, the last rows it has not trained on: the
        # thresholds and the temperature are fitted on them (fitted after the final epoch they would be too
        # sharp); a task with neither (regression) needs no pass for them
        held_out = list(evaluation.final_validation_logits(recipe, before_final_epoch=True)[:2])
    recipe.thresholds, tuning = evaluation.tuned_thresholds(recipe, held_out)  # multi_label only; the metrics below use them
    if cfg.train.final_on_val:
        final_epoch.train_on_all(recipe)
    logits, labels, loss = evaluation.final_validation_logits(recipe)
    val, val_logits = evaluation.metrics_of(recipe, logits, labels, loss), [logits, labels]
    result = {"best_step": recipe.state.best_step, "metric": cfg.train.metric,
              "trainable": sum(r.total for r in recipe.rows), "validation": val}
    result["validation"]["seen_in_training"] = cfg.train.final_on_val
    test_logits = None
    if recipe.test is not None:
        loader = recipe.acc.prepare(recipe._loader(recipe.test_ds, cfg.train.eval_batch_size, shuffle=False))
        result["test"], *test_logits = evaluation.evaluate_with_logits(recipe, loader)
    calibrated = None  # a temperature scales softmax classes: single_label only
    if task.calibrated:
        calibrated = calibration.fit(val_logits, test_logits, seen_in_training=cfg.train.final_on_val, held_out=held_out)
        result["calibration"] = calibrated.summary
    warnings = [w for split in ("validation", "test") if split in result
                for w in [never_predicted(result[split], recipe.data.label_names, split)] if w]
    warnings += evaluation.untuned_warnings(recipe, result, val_logits, test_logits)  # multi_label: tuned below 0.5
    if not task.is_default:
        result["task"] = cfg.data.task
    if recipe.thresholds is not None:
        result["thresholds"], result["threshold_tuning"] = recipe.thresholds, tuning
    if warnings or recipe.data.warnings:  # in eval.json and report.md too: a good accuracy can hide them
        result["warnings"] = recipe.data.warnings + warnings  # the data's (logged at the start) first
    if recipe.acc.is_main_process:
        model = recipe.acc.unwrap_model(recipe.model)
        if recipe.fast_dropout:
            from ..speed.dropout import remove
            remove(model)  # torch's modules and SDPA again: nothing of ours reaches saved configs
        try:
            save_weights(model, recipe.tokenizer, recipe.run_dir, cfg, recipe.lora_init)
            if calibrated is not None:
                calibrated.write(recipe.run_dir)
            task.save_thresholds(recipe.run_dir, recipe.thresholds)
            atomic_write_text(recipe.run_dir / "eval.json", json.dumps(result, indent=2))
            write_report(recipe.run_dir, result, recipe.data.label_names)
        except BaseException:
            unfinish(recipe)
            raise
        shutil.rmtree(recipe.run_dir / checkpoint.RESUME, ignore_errors=True)  # finished: nothing left to resume
        for w in warnings:
            recipe.log(f"warning: {w}")
        for split in ("validation", "test"):
            if split in result:
                m = result[split]
                recipe.log(f"{split} {tasks.describe(m, ',')} (n={m['n']:,})")
        recipe.log(f"run saved in {recipe.run_dir}")
        if recipe.tracking is not None:
            recipe.tracking.finish(result, weights_folder(cfg))  # the run's files as MLflow artefacts
    recipe.acc.wait_for_everyone()
    return result


def unfinish(recipe) -> None:
    """A failed finish (full disk, Ctrl-C) leaves no half-written finished run: the final outputs
    go, and resume/ (its loop-ended checkpoint) finishes the run again with --resume."""
    name = weights_folder(recipe.cfg)
    for d in (name, f".{name}.tmp"):
        shutil.rmtree(recipe.run_dir / d, ignore_errors=True)
    for f in ("eval.json", "report.md", "curves.png", "confusion.png", tasks.THRESHOLDS_FILE, *calibration.FILES):
        (recipe.run_dir / f).unlink(missing_ok=True)
