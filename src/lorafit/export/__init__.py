"""`lorafit export`: a finished run as a folder that runs without lorafit — an ONNX graph for ONNX
Runtime (optionally int8) or a standalone transformers model — checked against lorafit's own
predictions before anything is written (export/run.py)."""
from ..lazy import exports

__getattr__, __all__ = exports(__name__, {'export_run': '.run', 'ExportSettings': '.settings'})
