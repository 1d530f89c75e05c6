"""Training: the recipe (setup -> train -> finish -> cleanup, recipe.py) and what it is built from:
state (where training stands), optim (optimizer, schedules), checkpoint (resume), evaluation
(validation and the best k), final_epoch (train+val), header (the run's first files), switches
(which speed paths a run installs), and the runs of many configs: seeds, sweep.
"""
from .recipe import Recipe
from .run import run_training

__all__ = ["Recipe", "run_training"]
