"""A finished run, loaded for inference: the model and what decoding its logits needs (task, labels,
temperature, thresholds), the tokenizer and the run's encoding settings (max_length, truncation), and
the backend that turns one padded batch into logits (the torch model, an ONNX Runtime session of
its export, or a slot of a base shared with other runs in mixed batches: infer/mixed.py). Built by one loader, `load_run`, from a run folder, optionally over a shared base's
tensors (infer/pool.py)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..data.encoding import Encoding

# one padded batch (input_ids, attention_mask and, for a pair on a BERT-style model, token_type_ids:
# int64 CPU tensors, as data.batches.Collator pads) -> float32 logits, one row per text
Backend = Callable[[dict], np.ndarray]


def torch_backend(model: torch.nn.Module, device: Optional[torch.device] = None) -> Backend:
    device = device or next(model.parameters()).device

    @torch.inference_mode()
    def forward(batch: dict) -> np.ndarray:
        return model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu().numpy()

    return forward


def ort_backend(session) -> Backend:
    """An ONNX Runtime session of an export (export/onnx.py): fed the graph's own inputs of the batch."""
    names = [i.name for i in session.get_inputs()]

    def forward(batch: dict) -> np.ndarray:
        feed = {k: batch[k].numpy().astype(np.int64) for k in names}
        return np.asarray(session.run(["logits"], feed)[0], dtype=np.float32)

    return forward


@dataclass
class LoadedRun:
    model: Optional[torch.nn.Module]
    tokenizer: object
    encoding: Encoding
    backend: Backend
    cfg: object = None
    labels: list = dataclasses.field(default_factory=list)
    task: str = "single_label"
    temperature: Optional[float] = None   # calibration.json's (single_label runs), None when missing
    thresholds: Optional[dict] = None     # thresholds.json's (multi_label runs)
    device: Optional[torch.device] = None
    run_dir: Optional[Path] = None
    mixed: Optional[tuple] = None         # (infer.mixed.MixedBase, slot): a slot of a mixed base (model is None)

    @property
    def max_length(self) -> int:
        return self.encoding.max_length

    def with_model(self, model: torch.nn.Module, device: Optional[torch.device] = None) -> "LoadedRun":
        """The same run (tokenizer, encoding, labels) computed by another torch model (export's reloaded one)."""
        device = device or next(model.parameters()).device
        return dataclasses.replace(self, model=model, device=device, backend=torch_backend(model, device))

    def with_session(self, session) -> "LoadedRun":
        """The same run computed by an ONNX Runtime session of its export."""
        return dataclasses.replace(self, model=None, backend=ort_backend(session))


def from_model(model: torch.nn.Module, tokenizer, encoding: Encoding, device: Optional[torch.device] = None) -> LoadedRun:
    """A model in memory (tests, benchmarks, a training run's own model) as a run the engine computes."""
    device = device or next(model.parameters()).device
    return LoadedRun(model, tokenizer, encoding, torch_backend(model, device), device=device)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_run(run_dir: str | Path, device: str | torch.device | None = None, merge: bool = True,
             base_state: Optional[dict] = None, *, first_token: Optional[bool] = None,
             packed: Optional[bool] = None) -> LoadedRun:
    """A run folder loaded as `lorafit predict` loads it (runs/weights.load_trained: the same head surgery
    and speed paths; merge=True folds LoRA into the base), with its temperature and thresholds.
    device: None for the GPU when there is one; base_state: a shared base's tensors (serve; unmerged only);
    first_token / packed: the speed paths, None following the run's settings (export: False, False)."""
    from .. import tasks
    from ..runs.compat import read_run_folder
    from ..runs.weights import load_trained

    run_dir = Path(run_dir)
    device = torch.device(device) if device is not None else default_device()
    folder = read_run_folder(run_dir)  # the one reader of run folders (older layouts included)
    task = tasks.task_of(folder.cfg)
    thresholds = task.read_thresholds(run_dir)  # refuses a tuned task's run without its thresholds
    model, tokenizer, cfg, names = load_trained(run_dir, merge=merge, device=device, base_state=base_state,
                                                first_token=first_token, packed=packed)
    return LoadedRun(model, tokenizer, Encoding.of(cfg.data), torch_backend(model, device), cfg=cfg, labels=names,
                     task=cfg.data.task, temperature=folder.temperature, thresholds=thresholds, device=device,
                     run_dir=run_dir)
