"""The run-folder format: the run directory (directory), the one reader of it, older runs included
(compat), and its weights saved and loaded back exactly (weights). What is computed from a run lives
outside: infer/ (loading, the engine, the shared-base pool) and the predict / evaluate drivers.

`lorafit.runs.load_trained(run_dir, merge=True)` is the documented way to get a run's model back.
"""
from .weights import load_trained

__all__ = ["load_trained"]
