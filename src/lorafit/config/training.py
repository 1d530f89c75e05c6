"""The `optim:`, `train:` and `budget:` sections: how the adapter learns and for how long."""
from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import Field, field_validator

from .base import METRIC, _one_as_list, _Section


class LayerLR(_Section):
    layers: list[int] = Field(..., min_length=2, max_length=2, description="[first, last] encoder layer, inclusive.")
    lr: float = Field(..., gt=0)


class OptimConfig(_Section):
    name: Literal["adamw", "sgd", "rmsprop"] = "adamw"
    lr: float = Field(5e-4, gt=0, description="Learning rate for adapter weights (and the head unless head_lr is set).")
    head_lr: Optional[float] = Field(None, gt=0, description="Learning rate of the classification head.")
    layer_lrs: list[LayerLR] = Field([], description="Tiered layer-wise learning rates, e.g. [{layers: [0, 3], lr: 1e-5}].")
    loraplus_ratio: Optional[float] = Field(
        None, gt=0, description="LoRA+ (peft's create_loraplus_optimizer): lr of B matrices and of 1-D parameters "
        "(biases, norms) = ratio * lr; typical 16.")
    weight_decay: float = Field(0.01, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD / RMSprop momentum.")
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    schedule: Literal["cosine", "linear", "constant", "step"] = Field(
        "cosine", description="After warmup. step: the lr times step_factor every step_size steps (torch's StepLR).")
    warmup: float = Field(0.06, ge=0, description="Linear warmup: a fraction of total steps (<1) or a number of steps (>=1).")
    step_size: Union[Literal["epoch"], int] = Field(
        "epoch", description="schedule step: optimizer steps between decays, counted from the first step (warmup "
        "included), or 'epoch': at each epoch's start.")
    step_factor: float = Field(0.1, gt=0, le=1, description="schedule step: what each decay multiplies the lr by (StepLR's gamma).")

    _lists = field_validator("layer_lrs", mode="before")(_one_as_list)

    @field_validator("step_size", mode="before")
    @classmethod
    def _step_size(cls, v):
        # before: one message, not one per member of the union
        if v != "epoch" and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{v!r}: must be 'epoch' or a positive number of optimizer steps")
        return v


class TrainConfig(_Section):
    epochs: float = Field(3, gt=0)
    max_steps: Optional[int] = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = Field(32, ge=1, description="Global batch size (split across processes under DDP).")
    eval_batch_size: int = Field(128, ge=1)
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")
    max_grad_norm: Optional[float] = Field(1.0, gt=0, description="Gradient clipping; null disables.")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    precision: Literal["auto", "no", "fp16", "bf16"] = Field("auto", description="auto: bf16 on GPUs that have it, else fp16 on GPU, none on CPU.")
    eval_every: Union[Literal["epoch"], int] = Field("epoch", description="'epoch' or a number of optimizer steps.")
    log_every: Union[Literal["auto"], int] = Field(
        "auto", description="Log the training loss (metrics.jsonl, curves.png) every N optimizer steps; auto: "
        "min(20, max(1, total steps // 50)), so a short run's curve still has 50 points or every step.")
    metric: METRIC = Field("accuracy", description="Selects the best checkpoint (per data.task: TASK_METRICS; "
                           "its first is the default for multi_label and regression).")
    class_weights: Union[Literal["none", "balanced"], dict[str, float]] = Field(
        "none", description="Cross-entropy class weights: none; balanced (n / (K * count), scikit-learn's "
        "compute_class_weight); or {label: weight} by label value (labels not named weigh 1).")
    sampler: Literal["shuffle", "balanced"] = Field(
        "shuffle", description="Training order: shuffle (every item once per epoch); balanced (each epoch draws as "
        "many items with replacement, every class equally likely; seeded, restored on resume).")
    save_top_k: int = Field(1, ge=1, description="Keep this many best checkpoints.")
    early_stopping: Optional[int] = Field(None, ge=1, description="Stop after N evaluations without improvement.")
    final_on_val: bool = Field(False, description="After training, one more epoch on train+validation (no selection after it).")
    checkpoint_every: Optional[int] = Field(None, ge=1, description="Also write a resumable checkpoint every N optimizer steps.")
    deterministic: bool = Field(True, description="Deterministic kernels and seeded data order.")
    num_workers: int = Field(0, ge=0)
    report_to: list[Literal["tensorboard", "mlflow"]] = Field(
        [], description="Experiment trackers (through accelerate): tensorboard writes RUN_DIR/tensorboard/; mlflow logs "
        "to train.tracking_uri (train/tracking.py).")
    tracking_uri: Optional[str] = Field(
        None, description="MLflow tracking URI; default: $MLFLOW_TRACKING_URI, else a local SQLite store "
        "(sqlite:///RUN_DIR/mlflow.db; OUT/mlflow.db for --seeds and sweeps).")

    _lists = field_validator("report_to", mode="before")(_one_as_list)

    @field_validator("eval_every")
    @classmethod
    def _eval_every(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError("must be 'epoch' or a positive number of steps")
        return v

    @field_validator("log_every")
    @classmethod
    def _log_every(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError("must be 'auto' or a positive number of steps")
        return v

    @field_validator("class_weights", mode="before")
    @classmethod
    def _class_weights_keys(cls, v):
        # YAML reads `{1: 2.0}` with integer keys; labels are matched by value later (train/imbalance.py)
        if v is None:
            return "none"
        return {str(k): w for k, w in v.items()} if isinstance(v, dict) else v

    @field_validator("class_weights")
    @classmethod
    def _class_weights(cls, v):
        if isinstance(v, dict):
            if not v:
                raise ValueError("an empty mapping; give {label: weight, ...}, balanced or none")
            bad = [k for k, w in v.items() if not (w > 0 and w < float("inf"))]
            if bad:
                raise ValueError(f"the weight of label {bad[0]!r} must be a positive finite number")
        return v



class BudgetConfig(_Section):
    max_trainable: Optional[int] = Field(None, ge=1, description="Refuse setups with more trainable parameters.")
