"""Batch prediction at any size: an input read in chunks (chunks.py), each chunk's rows computed by
one RowPredictor for one or several runs (rows.py), the finished rows appended to a resumable output
(parts.py). `lorafit predict` drives them (predict.py); a Ray Data pipeline maps RowPredictor."""
from .rows import ON_BAD_ROW, PredictOptions, RowPredictor

__all__ = ["ON_BAD_ROW", "PredictOptions", "RowPredictor"]
