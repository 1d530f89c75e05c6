"""The run's accelerate Accelerator: mixed precision, gradient accumulation, the global batch split over
processes, the seed and deterministic kernels. One per recipe; several recipes may share a process."""
from __future__ import annotations

import torch

from ..config import RunConfig
from ..errors import LorafitError


def resolve_precision(choice: str) -> str:
    if choice != "auto":
        if choice != "no" and not torch.cuda.is_available() and choice == "fp16":
            raise LorafitError("train.precision: fp16 needs a GPU; use bf16 or no on CPU")
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def make_accelerator(cfg: RunConfig):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DataLoaderConfiguration, set_seed

    # Several recipes may run in one process (seeds, sweeps, tests) with different precisions:
    # forget the previous one's settings, but keep the process group (reset_partial_state=False).
    AcceleratorState._reset_state(reset_partial_state=False)

    # split_batches: train.batch_size is the global batch, cut across processes, so a config
    # trains the same way on 1 or N processes (same steps, same effective batch).
    acc = Accelerator(mixed_precision=resolve_precision(cfg.train.precision),
                      gradient_accumulation_steps=cfg.train.grad_accum,
                      dataloader_config=DataLoaderConfiguration(split_batches=True))
    for name, bs in (("train.batch_size", cfg.train.batch_size), ("train.eval_batch_size", cfg.train.eval_batch_size)):
        if bs % acc.num_processes:
            raise LorafitError(f"{name}: {bs} is the global batch and must divide by the "
                               f"{acc.num_processes} processes")
    set_seed(cfg.seed)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        # ...without its debugging aid of NaN-filling every new tensor (6% of a CPU LoRA step in
        # fill_): results do not depend on it, as every kernel here writes what it allocates
        torch.utils.deterministic.fill_uninitialized_memory = False
    return acc
