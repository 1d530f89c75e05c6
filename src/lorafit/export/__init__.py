"""`lorafit export`: a finished run as a folder that runs without lorafit — an ONNX graph for ONNX
Runtime (optionally int8) or a standalone transformers model — checked against lorafit's own
predictions before anything is written (export/run.py)."""
from .run import export_run
from .settings import ExportSettings

__all__ = ["export_run", "ExportSettings"]
