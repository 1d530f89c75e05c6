"""Switches that change nothing but speed (and memory): one module each, one contract for all.

Every module has the same three functions, and `apply` below uses them alike:

- `why_off(model, where) -> str | None`: None when the switch applies to this model here, else the
  reason the run log prints ("prefix cache: off (layer 0 or the embeddings have trainable ...)");
- `install(model, where) -> str` puts it in place and says what changed, for the run log;
- `remove(model) -> None` takes it out again;
- a test that it changes nothing but speed: the same logits, losses and gradients with it on and
  off (tests/test_speed.py for the prefix cache, test_dropout.py, test_first_token.py,
  test_packed.py, test_memory.py); tests/test_layout.py checks every module has these signatures.

`where` (Where) is what a switch may look at besides the model: the device, the run's config (None
when there is none) and the dtype of the weights it would see. Whether the user asked for a switch
(speed.fast_dropout, speed.cache_prefix: false, ...) is the caller's policy, except where noted.

| module | what | install / remove |
|---|---|---|
| prefix | layers below the lowest trainable one computed once (why_off reads speed.cache_prefix); the PrefixCache is kept on the model (`cache_of`) | `install` / `remove` |
| dropout | dropout masks from 16-bit uniforms on CPU | `install` / `remove` (before saving) |
| first_token | last encoder layer on the first token only (head type: where.cfg.head.type) | `install` / `remove` |
| packed | Linear weights prepacked for oneDNN (prediction) | `install` / `remove` |
| memory | heap trimming after each step (install keeps the trimmer on the model: `after_step`); huge pages are asked for before torch loads (`request_huge_pages`, a process setting outside the contract) | `install` / `remove` |

model.dtype: nf4 (model/nf4.py) is not a speed switch: 4-bit weights change the model's numbers, not
only its speed. Its availability check has the same `why_off(model, where)` signature all the same.

Which switches a training run installs is decided in `lorafit.train.switches`; which apply when a
finished run predicts, in `lorafit.runs.weights.load_trained`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

# No torch import here: speed.memory.request_huge_pages must run before torch loads.


@dataclass(frozen=True)
class Where:
    """Where a switch would run: device (a torch.device or its name), the run's config (a RunConfig, or
    None), and the dtype of the weights it would see (a torch.dtype or its name). shared: a pool that
    runs over one base pass to every install, so a switch that copies base weights (packed) makes one
    copy per shared weight rather than one per run (serve/registry)."""
    device: Any = "cpu"
    cfg: Optional[Any] = None
    dtype: Any = "float32"
    shared: Optional[dict] = field(default=None, compare=False, hash=False)

    @property
    def device_type(self) -> str:
        return str(getattr(self.device, "type", self.device)).split(":")[0]

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def apply(switch, model, where: Where) -> Optional[str]:
    """Install `switch` (a lorafit.speed module) where it applies; returns why it did not (None when installed)."""
    reason = switch.why_off(model, where)
    if reason is None:
        switch.install(model, where)
    return reason
