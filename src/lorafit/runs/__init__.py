"""Using a trained run: the run directory (directory), its weights saved and loaded back exactly
(weights), and what is computed from it (predict, evaluate).

`lorafit.runs.load_trained(run_dir, merge=True)` is the documented way to get a run's model back.
"""
from .weights import load_trained

__all__ = ["load_trained"]
