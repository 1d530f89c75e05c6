"""What a served run is (ServedRun) and the one seam through which the registry loads and unloads
runs: a RunLoader turns a run folder into a ServedRun (`load`) and lets it go (`unload`).

PoolLoader is today's: each run is built as `lorafit predict` builds it, over infer/pool.py's BasePool,
which holds one copy of each base's weights. Runs named at start-up are loaded as the pool decides
from all of them (a lone run over its base merged: predict's fast path); runs loaded on demand are
built unmerged over the shared base (`share=True`), since which runs will share it is not known in
advance. Another way of computing runs (several adapters in one forward over their base) plugs in
here as another RunLoader: the registry only calls `load`, `unload` and reads ServedRun.

Why not PEFT's multi-adapter model (one PeftModel, `load_adapter` per run, `set_adapter` or
`adapter_names=` per batch): every lorafit run has its own head, and runs over one base may differ
in head type (`cls_linear` replaces the classifier module, `model` keeps it), in label count (head
shapes), in trained LayerNorms (modules_to_save) and in attention settings. One PeftModel holds one
module tree, so those would have to be swapped per batch. Here each run keeps its own module tree,
built by `load_trained` exactly as for `lorafit predict`, and only the frozen base tensors are shared."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Protocol

from ..errors import LorafitError

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
    own_bytes: int = 0           # memory of its own parameters: what --max-adapter-memory counts

    # the engine reads these of any run it computes (infer/engine.py)
    model = property(lambda self: self.loaded.model)
    tokenizer = property(lambda self: self.loaded.tokenizer)
    encoding = property(lambda self: self.loaded.encoding)
    backend = property(lambda self: self.loaded.backend)
    cfg = property(lambda self: self.loaded.cfg)
    labels = property(lambda self: self.loaded.labels)
    device = property(lambda self: self.loaded.device)
    max_length = property(lambda self: self.loaded.max_length)
    thresholds = property(lambda self: self.loaded.thresholds)  # multi_label: thresholds.json's

    @property
    def temperature(self) -> float:
        """calibration.json's, as `lorafit predict --probs` applies it (1 when the run has none)."""
        return self.loaded.temperature or 1.0

    @property
    def pairs(self) -> bool:
        """Trained on text pairs (data.text_pair_column): a request gives text_pairs too."""
        return self.cfg.data.text_pair_column is not None

    def describe(self) -> dict:
        return {"name": self.name, "task": self.cfg.data.task, "labels": self.labels, "text_pairs": self.pairs,
                "base": self.cfg.model.name, "method": self.cfg.adapter.method, "head": self.cfg.head.type,
                "trainable_parameters": self.trainable, "own_parameters": self.own_parameters,
                "shared_parameters": self.shared_parameters, "own_bytes": self.own_bytes,
                "max_length": self.max_length}


def check_run(folder: Path):
    """A finished run (runs/compat.RunFolder: config, labels, trained-parameter count), checked without
    loading weights (what predict checks, before anything is bound)."""
    from ..runs.compat import read_run_folder
    from ..runs.weights import weights_folder

    run = read_run_folder(folder)
    weights = Path(folder) / weights_folder(run.cfg)
    if not weights.is_dir():
        raise LorafitError(f"{folder}: no trained weights ({weights.name}/ missing); did training finish?")
    return run


class RunLoader(Protocol):
    """The registry's seam: how a run folder becomes a ServedRun, and how one is let go."""

    def load(self, name: str, folder: Path, *, on_demand: bool, checked=None) -> ServedRun:
        """The run at folder under name (checked: check_run's when already read; on_demand: loaded for a
        request, not at start-up); a bad folder raises LorafitError (its line is the client's 4xx)."""

    def unload(self, run: ServedRun) -> None:
        """`run` is no longer served and nothing computes with it: free what it holds alone."""


class PoolLoader:
    """Runs over infer/pool.py's BasePool. expected: the start-up runs' configs (the pool merges a lone
    one); on_demand loads share the base whatever else is loaded. Not thread-safe: the registry calls
    it from one thread at a time."""

    def __init__(self, device: Optional[torch.device] = None, expected=(), packed: Optional[bool] = None,
                 mixed: bool = True):
        from ..infer.pool import BasePool

        self.pool, self.packed = BasePool(device, expected=expected, mixed=mixed), packed

    @property
    def device(self):
        return self.pool.device

    def load(self, name: str, folder: Path, *, on_demand: bool, checked=None) -> ServedRun:
        from ..infer.pool import owned

        checked = checked if checked is not None else check_run(folder)
        loaded, own, shared = self.pool.load(folder, checked.cfg, packed=self.packed, share=True if on_demand else None)
        trainable = checked.trainable or 0  # an old run without the count: 0, not a failed start
        if loaded.mixed is not None:  # a slot of a mixed base (infer/mixed.py): its A/B, norms and head, float32
            own_bytes = own * 4
        else:  # merged (shared 0): the whole model is its own
            own_bytes = sum(p.numel() * p.element_size() for n, p in loaded.model.named_parameters()
                            if shared == 0 or owned(n))
        return ServedRun(name, Path(folder), loaded, own, shared, trainable, own_bytes)

    def unload(self, run: ServedRun) -> None:
        loaded, run.loaded = run.loaded, None  # the ServedRun may outlive this call (a log line): it holds nothing
        slot = loaded.mixed is not None
        self.pool.unload(loaded)
        del loaded
        if not slot:
            # a module tree's reference cycles need a collection; a mixed slot's tensors went with the slot, and
            # a gc.collect per eviction (seconds on a busy machine, in the one loader thread) stalled every load
            # behind it: 1,000 runs at --max-loaded 100 under Zipf traffic, 3 texts/s (bench/serve_many.py)
            self.pool.free()
