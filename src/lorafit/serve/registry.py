"""The served runs: names, specs and the Registry. Each run is built as `lorafit predict` builds it,
over one copy of its base's weights per base (infer/pool.py), so N adapters over one base hold the
base once.

Why not PEFT's multi-adapter model (one PeftModel, `load_adapter` per run, `set_adapter` or
`adapter_names=` per batch): every lorafit run has its own head, and runs over one base may differ
in head type (`cls_linear` replaces the classifier module, `model` keeps it), in label count (head
shapes), in trained LayerNorms (modules_to_save) and in attention settings. One PeftModel holds one
module tree, so those would have to be swapped per batch. Here each run keeps its own module tree,
built by `load_trained` exactly as for `lorafit predict` (same head surgery, same first-token speed
path), and only the frozen base tensors are shared.

How the base is shared (one copy per base, keyed by its weight files' identity; LoRA left unmerged
over a shared base) is infer/pool.py's BasePool: its docstring says how and why."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import LorafitError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # a URL path segment without quoting
if TYPE_CHECKING:
    import torch

    from ..infer.loaded import LoadedRun


@dataclass
class ServedRun:
    """A served run: infer.loaded.LoadedRun (what the engine computes with: tokenizer, encoding, backend)
    under a name, with what /v1/models reports."""
    name: str
    run_dir: Path
    loaded: LoadedRun
    own_parameters: int = 0      # parameters this run holds alone (adapter, head, trained norms)
    shared_parameters: int = 0   # parameters it reads from the shared base copy
    trainable: int = 0           # eval.json's count of trained parameters

    # the engine reads these of any run it computes (infer/engine.py)
    model = property(lambda self: self.loaded.model)
    tokenizer = property(lambda self: self.loaded.tokenizer)
    encoding = property(lambda self: self.loaded.encoding)
    backend = property(lambda self: self.loaded.backend)
    cfg = property(lambda self: self.loaded.cfg)
    labels = property(lambda self: self.loaded.labels)
    device = property(lambda self: self.loaded.device)
    max_length = property(lambda self: self.loaded.max_length)

    @property
    def temperature(self) -> float:
        """calibration.json's, as `lorafit predict --probs` applies it (1 when the run has none)."""
        return self.loaded.temperature or 1.0

    def describe(self) -> dict:
        return {"name": self.name, "labels": self.labels, "base": self.cfg.model.name,
                "method": self.cfg.adapter.method, "head": self.cfg.head.type,
                "trainable_parameters": self.trainable, "own_parameters": self.own_parameters,
                "shared_parameters": self.shared_parameters,
                "max_length": self.max_length}


def parse_specs(specs: list[str]) -> list[tuple[str, Path]]:
    """RUN_DIR or NAME=RUN_DIR -> (name, folder); the name defaults to the folder's name."""
    out: list[tuple[str, Path]] = []
    seen: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not NAME.match(name):
            if sep and not Path(spec).exists():
                raise LorafitError(f"{spec}: '{name}' is not a valid model name (letters, digits, . _ -, at most 64, "
                                   "starting with a letter or digit)")
            name, path = Path(spec).resolve().name, spec
        folder = Path(path)
        if not folder.is_dir():
            raise LorafitError(f"{path}: no such run directory; give a folder written by lorafit train")
        if not NAME.match(name):
            raise LorafitError(f"{path}: folder name '{name}' is not a valid model name; serve it as NAME={path}")
        if name in seen:
            raise LorafitError(f"two runs are named '{name}' ({seen[name]} and {path}); name one with NAME={path}")
        seen[name] = path
        out.append((name, folder))
    if not out:
        raise LorafitError("serve: give at least one RUN_DIR")
    return out


def check_run(folder: Path):
    """A finished run's config, checked without loading weights (what predict checks, before anything is bound)."""
    from ..runs.directory import read_run
    from ..runs.weights import weights_folder
    from ..tasks import task_of

    cfg, _ = read_run(folder)
    weights = folder / weights_folder(cfg)
    if not weights.is_dir():
        raise LorafitError(f"{folder}: no trained weights ({weights.name}/ missing); did training finish?")
    # the API answers one label per text; other runs would get argmax answers that mean nothing
    if not task_of(cfg).served:
        raise LorafitError(f"{folder}: a {cfg.data.task} run; lorafit serve answers single_label runs only so far "
                           f"(use lorafit predict {folder} for it)")
    if cfg.data.text_pair_column:
        raise LorafitError(f"{folder}: trained on text pairs (data.text_pair_column); lorafit serve takes single "
                           f"texts only so far (use lorafit predict {folder} for it)")
    return cfg


class Registry:
    """name -> ServedRun, loaded once at start-up; read-only afterwards (safe to read from any thread)."""

    def __init__(self, runs: dict[str, ServedRun]):
        self.runs = runs

    def names(self) -> list[str]:
        return list(self.runs)

    @classmethod
    def load(cls, specs: list[tuple[str, Path]], device: torch.device | None = None, log=lambda line: None,
             packed: bool | None = None, mixed: bool = True) -> "Registry":
        from ..infer.pool import BasePool
        from ..runs.compat import read_run_folder

        cfgs = [check_run(folder) for _, folder in specs]
        pool, runs = BasePool(device, expected=cfgs, mixed=mixed), {}
        for (name, folder), run_cfg in zip(specs, cfgs):
            loaded, own, shared = pool.load(folder, run_cfg, packed=packed)
            trainable = read_run_folder(folder).trainable or 0  # an old run without the count: 0, not a failed start
            runs[name] = ServedRun(name, Path(folder), loaded, own, shared, trainable)
            cfg = loaded.cfg
            log(f"loaded {name} ({folder}): {cfg.adapter.method} over {cfg.model.name}, {own:,} own parameters, "
                f"{shared:,} shared")
        return cls(runs)

