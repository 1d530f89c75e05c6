"""Run configuration: every setting, its default and its check; one module per section.

A config is YAML validated by pydantic. Unknown keys are errors with a did-you-mean, all problems are
collected into one message, keys that moved are still read (legacy.py), and the resolved config is
written to the run directory so that ``lorafit train --config RUN/config.yaml`` reproduces the run.
"""
from .base import METRIC, TASK_METRICS
from .data import DataConfig
from .errors_text import suggest
from .legacy import MOVED, move_keys
from .loading import (DATA_FIELDS, PATH_FIELDS, apply_overrides, load_config, parse_value, resolve_path,
                      resolve_paths, validate_config)
from .model import AdaLoraConfig, AdapterConfig, HeadConfig, ModelConfig
from .run import RunConfig, check_space_key, field_at
from .speed import SpeedConfig
from .sweep import SweepConfig
from .training import BudgetConfig, LayerLR, OptimConfig, TrainConfig

__all__ = ["METRIC", "TASK_METRICS", "DataConfig", "suggest", "MOVED", "move_keys", "DATA_FIELDS", "PATH_FIELDS",
           "apply_overrides", "load_config", "parse_value", "resolve_path", "resolve_paths", "validate_config",
           "AdaLoraConfig", "AdapterConfig", "HeadConfig", "ModelConfig", "RunConfig", "SpeedConfig", "SweepConfig",
           "check_space_key", "field_at", "BudgetConfig", "LayerLR", "OptimConfig", "TrainConfig"]
