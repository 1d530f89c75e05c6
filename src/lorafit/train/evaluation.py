"""Validation during training: logits of every item exactly once (DDP included), the metrics,
and keeping the best k checkpoints by the selection metric (early stopping counts from it)."""
from __future__ import annotations

import shutil

import numpy as np
import torch

from .. import tasks
from ..io import save_tensors_durably
from ..metrics import higher_is_better
from ..model.budget import trainable_state
from ..progress import progress
from ..thresholds import below_untuned, choose_thresholds, describe


@torch.inference_mode()
def validation_logits(recipe, loader) -> tuple[np.ndarray, np.ndarray, float]:
    """Logits and labels of every item exactly once (duplicates from DDP padding dropped).

    Not infer/engine.py's forward: these batches come from accelerate's DataLoader (padded, sharded
    over DDP ranks, already on the device), may carry the prefix cache's hidden states in place of the
    frozen layers (recipe.forward feeds them), and stay tensors for gather_for_metrics; the engine
    pads token ids itself and gives numpy."""
    recipe.model.eval()
    outs, labs = [], []
    for batch in progress(loader, desc="evaluating", unit=" batches", leave=False, disable=not recipe.acc.is_main_process):
        labels = batch.pop("labels")
        logits = recipe.forward(batch).float()
        logits, labels = recipe.acc.gather_for_metrics((logits, labels))
        outs.append(logits.cpu())
        labs.append(labels.cpu())
    recipe.model.train()
    logits, labels = torch.cat(outs), torch.cat(labs)
    loss = tasks.task_of(recipe.cfg).loss(logits, labels).item()  # unweighted: the validation loss is comparable
    return logits.numpy(), labels.numpy(), loss


def final_validation_logits(recipe, before_final_epoch: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    """validation_logits of the weights the run ends with, on the full model's own path. The last evaluation
    during training computed exactly these when it was of the same weights (the best step, and no final
    epoch on train+validation after it) on the same path (no prefix cache standing in for the frozen
    layers): then they are reused, not computed a second time (a whole pass over the validation split:
    about a sixth of a 1-epoch run's training time). before_final_epoch: called before train.final_on_val's epoch,
    when the best weights are still the ones the run ends with so far."""
    last = recipe.last_eval
    if (last is not None and last["step"] == recipe.state.best_step and not last["prefix"]
            and (before_final_epoch or not recipe.cfg.train.final_on_val)):
        return last["logits"], last["labels"], last["loss"]
    return validation_logits(recipe, recipe.final_val_loader)


def metrics_of(recipe, logits: np.ndarray, labels: np.ndarray, loss: float) -> dict:
    out = tasks.task_of(recipe.cfg).metrics(labels, logits, recipe.data.label_names, recipe.thresholds)
    out["loss"] = loss
    return out


def evaluate_with_logits(recipe, loader) -> tuple[dict, np.ndarray, np.ndarray]:
    """The metrics, and the logits and labels they came from (the final evaluation fits the temperature on them)."""
    logits, labels, loss = validation_logits(recipe, loader)
    return metrics_of(recipe, logits, labels, loss), logits, labels


def tuned_thresholds(recipe, held_out: list | None = None) -> tuple[dict | None, dict | None]:
    """multi_label: per-label thresholds (0.5 unless a cross-fitted tuning on the validation split beats it:
    thresholds.py) and the record of that choice; (None, None) for other tasks. held_out: [logits, labels] of
    the validation split to tune on (the best checkpoint's, before train.final_on_val trains on them)."""
    if not tasks.task_of(recipe.cfg).tuned:
        return None, None
    logits, labels = held_out if held_out is not None else final_validation_logits(recipe)[:2]
    thresholds, record = choose_thresholds(logits, labels, recipe.data.label_names, recipe.cfg.train.metric,
                                           recipe.cfg.seed)
    if recipe.acc.is_main_process:
        recipe.log(describe(record))
    return thresholds, record


def untuned_warnings(recipe, result: dict, val: list, test: list | None) -> list[str]:
    """multi_label: each split's scores at 0.5 into result[split]['untuned'], and a warning for every split whose
    scores with the tuned thresholds are below them. val, test: [logits, labels]."""
    if recipe.thresholds is None:
        return []
    out = []
    for split, (logits, labels) in (("validation", val), ("test", test)) if test else (("validation", val),):
        result[split]["untuned"], warning = below_untuned(split, result[split], labels, logits, recipe.data.label_names)
        out += [warning] if warning else []
    return out


def evaluate_and_keep(recipe) -> bool:
    """Evaluate, keep the top-k checkpoints by the chosen metric; True when early stopping fires."""
    cfg, st = recipe.cfg.train, recipe.state
    recipe._clock(running=False)  # evaluations are not training time
    logits, labels, loss = validation_logits(recipe, recipe.val_loader)
    m = metrics_of(recipe, logits, labels, loss)
    # the final evaluation reuses these when this step's weights are the ones the run ends with
    recipe.last_eval = {"step": st.step, "logits": logits, "labels": labels, "loss": loss,
                        "prefix": recipe.prefix is not None}
    recipe.record(type="eval", step=st.step, epoch=round(st.step / recipe.steps_per_epoch, 4), loss=m["loss"],
                  **tasks.scores(m), n=m["n"], train_seconds=round(recipe.train_seconds, 3))
    recipe.log(f"step {st.step}: val loss {m['loss']:.4f} {tasks.describe(m)}")
    recipe.evals += 1
    if recipe.on_eval is not None:
        recipe.on_eval(recipe.evals, m)
    value = m[cfg.metric]
    sign = 1 if higher_is_better(cfg.metric) else -1
    improved = st.best is None or sign * value > sign * st.best
    if improved:
        st.best, st.best_step, st.bad_evals = value, st.step, 0
    else:
        st.bad_evals += 1
    keep_top_k(recipe, value, sign)
    return cfg.early_stopping is not None and st.bad_evals >= cfg.early_stopping


def keep_top_k(recipe, value: float, sign: int) -> None:
    st = recipe.state
    ranked = sorted(st.kept + [(value, st.step)], key=lambda x: (-sign * x[0], x[1]))
    keep, drop = ranked[: recipe.cfg.train.save_top_k], ranked[recipe.cfg.train.save_top_k:]
    if (value, st.step) in keep and recipe.acc.is_main_process:
        d = recipe.run_dir / "checkpoints" / f"step-{st.step}"
        d.mkdir(parents=True, exist_ok=True)
        save_tensors_durably(trainable_state(recipe.acc.unwrap_model(recipe.model)), d / "trainable.safetensors")
    if recipe.acc.is_main_process:
        for _, step in drop:
            if step not in recipe._saved_kept:  # else the last resumable checkpoint still needs it
                shutil.rmtree(recipe.run_dir / "checkpoints" / f"step-{step}", ignore_errors=True)
    st.kept = keep


def load_best(recipe) -> None:
    from safetensors.torch import load_file

    recipe.acc.wait_for_everyone()
    path = recipe.run_dir / "checkpoints" / f"step-{recipe.state.best_step}" / "trainable.safetensors"
    state = load_file(str(path))
    missing = recipe.acc.unwrap_model(recipe.model).load_state_dict(state, strict=False).unexpected_keys
    if missing:
        raise RuntimeError(f"checkpoint {path} has unknown keys {missing[:3]}")
