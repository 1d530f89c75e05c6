"""Resumable state: what a run needs to continue after a crash exactly as if it never stopped.

RUN/resume/LATEST names the newest complete checkpoint, a folder RUN/resume/<name>/ holding
  trainable.safetensors   the trainable weights, by parameter name
  optimizer.pt            optimizer and scheduler state dicts (tensors and plain numbers only:
  scheduler.pt              read back with torch.load(weights_only=True), which runs no code)
  tensors.safetensors     torch RNG states of every process and device, the epoch's running loss
                          sums, AdaLoRA importance scores
  state.json              step, epoch, batches consumed in the epoch, best metric, top-k list,
                          early-stopping counter, metrics.jsonl length, python/numpy RNG, grad scaler
A new checkpoint goes to a temporary folder, every file and the folder are fsynced, the folder is
renamed, and only then is LATEST replaced (atomically) to point at it; older folders are deleted
after that. A crash at any moment leaves the previous complete checkpoint in place.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import LorafitError, TrainingDiverged
from ..io import atomic_write_text, fsync_path, io_failure, save_tensors_durably
from ..model.budget import trainable_state
from ..runs.directory import FORMAT, LATEST, RESUME, latest, read_meta
from .state import Position

DEVICES = ("cuda", "xpu", "mps")  # accelerators whose RNG (one state per device) is saved when present


def _rng_capture() -> dict:
    out = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    for dev in DEVICES:
        mod = getattr(torch, dev, None)
        if mod is not None and mod.is_available():
            out[dev] = mod.get_rng_state_all() if hasattr(mod, "get_rng_state_all") else [mod.get_rng_state()]
    return out


def _rng_split(rank: int, rng: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """One process's RNG as (JSON part, tensor part)."""
    version, keys, gauss = rng["python"]
    name, np_keys, pos, has_gauss, cached = rng["numpy"]
    meta = {"python": [version, list(keys), gauss],
            "numpy": [name, np_keys.tolist(), int(pos), int(has_gauss), float(cached)], "devices": {}}
    tensors = {f"rng.{rank}.torch": rng["torch"]}
    for dev in DEVICES:
        if dev in rng:
            meta["devices"][dev] = len(rng[dev])
            tensors.update({f"rng.{rank}.{dev}.{i}": s for i, s in enumerate(rng[dev])})
    return meta, tensors


def _rng_restore(meta: dict, tensors: dict[str, torch.Tensor], rank: int) -> None:
    version, keys, gauss = meta["python"]
    random.setstate((version, tuple(keys), gauss))
    name, np_keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.asarray(np_keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors[f"rng.{rank}.torch"])
    for dev, n in meta["devices"].items():
        mod = getattr(torch, dev, None)
        if mod is None or not mod.is_available():
            continue
        states = [tensors[f"rng.{rank}.{dev}.{i}"] for i in range(n)]
        if hasattr(mod, "set_rng_state_all") and len(states) == mod.device_count():
            mod.set_rng_state_all(states)
        else:
            mod.set_rng_state(states[0])


def _adalora(model) -> tuple[object, object] | None:
    base = getattr(model, "base_model", None)
    alloc = getattr(base, "rankallocator", None)
    return (alloc, base.peft_config[base.trainable_adapter_name]) if alloc is not None else None


def save(recipe, pos: Position) -> Path | None:
    """Write a resumable checkpoint of `recipe` at `pos` (every process calls this; the main one writes)."""
    from accelerate.utils import gather_object

    acc, st = recipe.acc, recipe.state
    model = acc.unwrap_model(recipe.model)
    weights = trainable_state(model)
    bad = [n for n, t in weights.items() if not torch.isfinite(t).all()]
    if bad:
        raise TrainingDiverged(f"weights became non-finite ({bad[0]}) by step {st.step}; {recipe.divergence_hint()}")
    rngs = gather_object([_rng_capture()])
    sums = acc.reduce(pos.sums.clone(), reduction="sum").cpu() if pos.sums is not None else torch.zeros(3)
    if not acc.is_main_process:
        acc.wait_for_everyone()
        return None

    tensors = {"sums": sums.float()}
    rng_meta = []
    for rank, rng in enumerate(rngs):
        m, t = _rng_split(rank, rng)
        rng_meta.append(m)
        tensors.update(t)
    ada = _adalora(model)
    if ada is not None:
        alloc, pc = ada
        for kind in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
            tensors.update({f"adalora.{kind}.{n}": v.detach().cpu() for n, v in getattr(alloc, kind).items()})
    scaler = getattr(acc, "scaler", None)
    metrics = recipe.run_dir / "metrics.jsonl"
    fsync_path(metrics)  # the length recorded below must survive a power cut too
    meta = {"format": FORMAT, "state": asdict(st), "position": {"epoch": pos.epoch, "batches": pos.batches, "seen": pos.seen},
            "metrics_bytes": metrics.stat().st_size, "train_seconds": recipe.train_seconds,
            "scaler": scaler.state_dict() if scaler is not None else None, "rng": rng_meta, "num_processes": acc.num_processes,
            "adalora_rank_pattern": ada[1].rank_pattern if ada is not None else None,
            "config": recipe.cfg.model_dump(mode="json"), "labels": recipe.data.label_names,
            "base_dtype": recipe.base_dtype}

    root = recipe.run_dir / RESUME
    root.mkdir(exist_ok=True)
    name = f"step-{st.step:07d}-e{pos.epoch}-b{pos.batches}"
    final, tmp = root / name, root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if final.exists() and latest(recipe.run_dir) != final:
        shutil.rmtree(final)  # left by a crash between its rename and LATEST: never pointed at, so written anew
    if not final.exists():  # the same position saved twice holds the same state
        try:
            _write_folder(tmp, weights, tensors, meta, recipe)
        except Exception as e:
            if io_failure(e, tmp) is not None:  # a full disk: free what the partial checkpoint took
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        os.replace(tmp, final)
        fsync_path(root)
    atomic_write_text(root / LATEST, name + "\n")
    fsync_path(root)
    for old in root.iterdir():  # only now: the new checkpoint is complete and LATEST points at it
        if old.name not in (name, LATEST):
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
    acc.wait_for_everyone()
    return final


def _write_folder(tmp: Path, weights: dict, tensors: dict, meta: dict, recipe) -> None:
    tmp.mkdir()
    save_tensors_durably(weights, tmp / "trainable.safetensors")
    save_tensors_durably(tensors, tmp / "tensors.safetensors")
    for fname, obj in (("optimizer.pt", recipe.optimizer.state_dict()), ("scheduler.pt", recipe.scheduler.state_dict())):
        with open(tmp / fname, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    with open(tmp / "state.json", "w", encoding="utf-8") as f:
        json.dump(meta, f)
        f.flush()
        os.fsync(f.fileno())
    fsync_path(tmp)


@dataclass
class Saved:
    """A checkpoint read from disk and checked, not yet applied."""
    folder: Path
    meta: dict
    weights: dict
    optimizer: dict
    scheduler: dict
    tensors: dict


def _torch_file(path: Path) -> dict:
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise LorafitError(f"{path}: not a readable checkpoint file: it holds Python objects besides tensors and "
                           "numbers, which are refused because loading them could run code") from None
    except Exception as e:  # truncated or otherwise corrupt
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise LorafitError(f"{path}: not a readable checkpoint file ({first})") from None


def _safetensors_file(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:
        raise LorafitError(f"{path}: not a readable checkpoint file ({type(e).__name__}: {str(e)[:200]})") from None


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def load(run_dir: Path, cfg) -> Saved:
    """Read every file of the latest checkpoint (no code runs: safetensors, JSON, weights-only torch
    files) and check it was written with this config; before any heavy work."""
    from pydantic import ValidationError

    from ..config import RunConfig, move_keys, resolve_paths

    folder, meta = read_meta(run_dir)
    # runs written before paths were recorded absolute: read their relative paths as config.yaml's are
    raw = resolve_paths(meta["config"], [Path(run_dir), Path.cwd()])
    try:  # keys added to lorafit since the checkpoint was written take their defaults, as config.yaml's do
        raw = RunConfig.model_validate(move_keys(raw)).model_dump(mode="json")
    except ValidationError:
        pass  # compared as written: the difference names the key
    saved = _flat(raw)
    now = _flat(cfg.model_dump(mode="json"))
    diff = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
    if diff:
        raise LorafitError(f"{Path(run_dir) / 'config.yaml'}: differs from the config the checkpoint was written with "
                           f"({', '.join(diff[:5])}); restore it to resume")
    return Saved(folder, meta, _safetensors_file(folder / "trainable.safetensors"), _torch_file(folder / "optimizer.pt"),
                 _torch_file(folder / "scheduler.pt"), _safetensors_file(folder / "tensors.safetensors"))


def check_labels(saved: Saved, label_names: list[str], source: str) -> None:
    if saved.meta["labels"] != label_names:
        raise LorafitError(f"{source}: labels {label_names} differ from the checkpoint's {saved.meta['labels']}; "
                           "the training data changed since the run started")


def restore(recipe, saved: Saved) -> Position:
    """Apply a checkpoint to a set-up recipe; returns where training continues."""
    from .state import State

    acc, meta, tensors = recipe.acc, saved.meta, saved.tensors
    model = acc.unwrap_model(recipe.model)
    result = model.load_state_dict(saved.weights, strict=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if result.unexpected_keys or trainable - set(saved.weights):
        raise LorafitError(f"{saved.folder}: weights do not match the model (unexpected {result.unexpected_keys[:3]}, "
                           f"missing {sorted(trainable - set(saved.weights))[:3]})")
    recipe.optimizer.load_state_dict(saved.optimizer)
    recipe.scheduler.load_state_dict(saved.scheduler)
    scaler = getattr(acc, "scaler", None)
    if scaler is not None and meta["scaler"]:
        scaler.load_state_dict(meta["scaler"])
    ada = _adalora(model)
    if ada is not None:
        alloc, pc = ada
        for kind in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
            prefix = f"adalora.{kind}."
            setattr(alloc, kind, {k[len(prefix):]: v.to(acc.device) for k, v in tensors.items() if k.startswith(prefix)})
        pc.rank_pattern = meta["adalora_rank_pattern"]

    st = State(**meta["state"])
    st.kept = [tuple(x) for x in st.kept]
    recipe.state, recipe.train_seconds = st, meta["train_seconds"]
    if acc.is_main_process:
        # lines written after the checkpoint (by the run that crashed) are written again from here
        metrics = recipe.run_dir / "metrics.jsonl"
        if metrics.stat().st_size < meta["metrics_bytes"]:
            raise LorafitError(f"{metrics}: shorter than when the checkpoint was written; it cannot be resumed exactly")
        os.truncate(metrics, meta["metrics_bytes"])
    p = meta["position"]
    # the summed train metrics of the epoch so far: all on the main process, so the epoch's total stays right
    sums = tensors["sums"].to(acc.device) if acc.is_main_process else torch.zeros(3, device=acc.device)
    rank = acc.process_index
    if rank >= len(meta["rng"]):
        recipe.log(f"resume: checkpoint written by {meta['num_processes']} process(es); process {rank} "
                   "starts from process 0's random state (not a bit-exact continuation)")
        rank = 0
    # last, right before training continues: nothing in setup may draw from the RNGs after this
    _rng_restore(meta["rng"][rank], tensors, rank)
    return Position(p["epoch"], p["batches"], p["seen"], sums)
