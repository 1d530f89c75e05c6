"""Switches that change nothing but speed (and memory): one module each, one contract each.

- `why_off(...) -> str | None`: None when the switch applies here, else the reason the run log
  prints ("prefix cache: off (adapter.layers trains layer 0)");
- `install(...)` puts it in place, `remove(...)` takes it out again (`apply(...)` = install where it
  applies, returning why_off's reason otherwise);
- a test that it changes nothing but speed: the same logits, losses and gradients with it on and
  off (tests/test_speed.py for the prefix cache, test_dropout.py, test_first_token.py,
  test_packed.py, test_memory.py).

| module | what | install / remove |
|---|---|---|
| prefix | layers below the lowest trainable one computed once | `PrefixCache.install` / `close` |
| dropout | dropout masks from 16-bit uniforms on CPU | `install` / `remove` (before saving) |
| first_token | last encoder layer on the first token only | `apply`, `install` / `remove` |
| packed | Linear weights prepacked for oneDNN (prediction) | `apply`, `install` / `remove` |
| memory | heap trimming, huge pages | `heap_trimmer` / `trim_when_grown` (run after each step); `request_huge_pages` before torch loads; a process setting, nothing to remove |

Which switches a training run installs is decided in `lorafit.train.switches`; which apply when a
finished run predicts, in `lorafit.runs.weights.load_trained`.
"""
