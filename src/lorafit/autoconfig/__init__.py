"""Zero-config training: every setting of a run chosen from the data, each with its reason.

columns.py: text, pair and label columns, and the task; rules.py: the size rules (split, max_length,
batch, epochs, learning rate, warm-up, evaluation, metric); build.py: the whole config, the solver's
layout within the budget and the user's --set values on top."""
from .build import DEFAULT_BUDGET, DEFAULT_MODEL, auto_config

__all__ = ["DEFAULT_BUDGET", "DEFAULT_MODEL", "auto_config"]
