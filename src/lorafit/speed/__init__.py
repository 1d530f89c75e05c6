"""Switches that change nothing but speed (and memory).

Each module keeps one contract, so a reader can check one switch at a time:

- a reason it is off: `why_off(...)` / `why_not(...)` returns None when it applies, else the
  sentence the run log prints ("prefix cache: off (adapter.layers trains layer 0)");
- `install(model, ...)` puts it in place and `remove(model)` takes it out (or `apply`, install
  where it applies, returning the reason when it does not);
- a test that it changes nothing but speed: the same logits / losses / gradients to tolerance
  with it on and off (tests/test_speed.py, test_prefix..., test_dropout.py, test_first_token.py,
  test_packed.py, test_memory.py).

Modules: prefix (frozen layers computed once), dropout (cheaper CPU masks), first_token (last
layer on the first token only), packed (prepacked oneDNN weights for prediction), memory (heap
trimming, huge pages). The training recipe decides which to install (train/switches.py) and
`runs.load_trained` which apply when predicting.
"""
