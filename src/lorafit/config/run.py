"""RunConfig: the sections together, the checks across them, and the YAML a run records."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import yaml
from pydantic import BaseModel, Field, model_validator

from .annotated import annotated_yaml
from .base import TASK_METRICS, _Section
from .data import DataConfig
from .errors_text import suggest
from .model import AdapterConfig, HeadConfig, ModelConfig
from .speed import SpeedConfig
from .sweep import SweepConfig
from .training import BudgetConfig, OptimConfig, TrainConfig


class RunConfig(_Section):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    adapter: AdapterConfig = AdapterConfig()
    head: HeadConfig = HeadConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    speed: SpeedConfig = SpeedConfig()
    budget: BudgetConfig = BudgetConfig()
    sweep: SweepConfig = SweepConfig()
    seed: int = Field(42, description="Seeds python, numpy, torch, the split and the data order.")

    @model_validator(mode="after")
    def _task_metrics(self) -> "RunConfig":
        """train.metric (and a sweep's metric) must be one of data.task's; left at its default it becomes
        the task's first (micro_f1, pearson), which config.yaml then records."""
        from ..tasks import get  # here: tasks read label cells with pandas, which config alone does not need

        problems = [p for key, spec in self.sweep.space.items() for p in [check_space_key(key) or _check_space_spec(key, spec)] if p]
        if problems:
            raise ValueError("'sweep.space': " + "; ".join(problems))
        task, allowed = self.data.task, TASK_METRICS[self.data.task]
        if not get(task).weighs_classes and self.train.class_weights != "none":
            raise ValueError("train.class_weights: a regression has no classes to weigh; remove it (or use data.task: "
                             "single_label / multi_label)")
        if not get(task).samples_by_class and self.train.sampler == "balanced":
            raise ValueError(f"train.sampler: balanced draws by class and needs data.task: single_label (this is {task}); "
                             "use train.class_weights for multi_label")
        for section, used in (("train", True), ("sweep", bool(self.sweep.space))):
            node = getattr(self, section)
            if node.metric in allowed or not used:
                continue
            if "metric" in node.model_fields_set:
                raise ValueError(f"{section}.metric: {node.metric} is not a {task} metric; use one of {', '.join(allowed)}")
            node.metric = allowed[0]
        return self

    def to_yaml(self, notes: Optional[dict[str, str]] = None, header: Sequence[str] = ()) -> str:
        """The config as YAML; with notes ({dotted key: why}, from a zero-config run), each noted key
        carries its reason as a comment, after the header's comment lines."""
        raw = self.model_dump(mode="json")
        if raw["sweep"] == SweepConfig().model_dump(mode="json"):
            del raw["sweep"]  # a run's config.yaml says how it trained; an unused sweep section is noise there
        if notes is not None:
            return annotated_yaml(raw, notes, header)
        return yaml.safe_dump(raw, sort_keys=False)


def field_at(key: str):
    """The pydantic field of a dotted key ('optim.lr'), or an error naming the closest key."""
    cls: type[BaseModel] = RunConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = cls.model_fields
        if part not in fields:
            guess = suggest(part, list(fields))
            where = ".".join(parts[:i] + [guess] + parts[i + 1:]) if guess else None
            return None, f"unknown key '{key}'" + (f" (did you mean '{where}'?)" if where else f" (known: {', '.join(fields)})")
        field = fields[part]
        if i == len(parts) - 1:
            return field, None
        sub = field.annotation
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return None, f"unknown key '{key}' ('{'.'.join(parts[:i + 1])}' is not a section)"
        cls = sub
    return None, f"unknown key '{key}'"


def check_space_key(key: str) -> str | None:
    if key.split(".")[0] in ("sweep", "budget"):
        return f"'{key}': the sweep cannot change its own settings or the budget"
    field, problem = field_at(key)
    if problem is None and isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
        return f"'{key}' is a section; name a key inside it"
    return problem


def _check_space_spec(key: str, spec: Any) -> str | None:
    if isinstance(spec, list):
        return None if spec else f"'{key}': an empty list of choices"
    if isinstance(spec, dict):
        extra = set(spec) - {"low", "high", "log", "step"}
        if extra or not {"low", "high"} <= set(spec):
            return f"'{key}': a range is {{low, high}} with optional log, step (got {sorted(spec)})"
        try:
            low, high = float(spec["low"]), float(spec["high"])
        except (TypeError, ValueError):
            return f"'{key}': low and high must be numbers"
        if not low < high or (spec.get("log") and low <= 0):
            return f"'{key}': need low < high (and low > 0 with log)"
        return None
    return f"'{key}': expected a list of choices or {{low, high}}"
