"""Run configuration: every setting, its default and its check, in one place.

A config is YAML validated by pydantic. Unknown keys are errors with a did-you-mean, all
problems are collected into one message, and the resolved config is written to the run
directory so that ``lorafit train --config RUN/config.yaml`` reproduces the run.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import LorafitError


# metrics each data.task can select on; the first is the default where `accuracy` does not apply
TASK_METRICS = {"single_label": ("accuracy", "macro_f1", "mcc", "loss"),
                "multi_label": ("micro_f1", "macro_f1", "subset_accuracy", "loss"),
                "regression": ("pearson", "spearman", "rmse", "loss")}
METRIC = Literal["accuracy", "macro_f1", "mcc", "loss", "micro_f1", "subset_accuracy", "pearson", "spearman", "rmse"]


class _Section(BaseModel):
    # forbid: a misspelt key must never be silently ignored (e.g. `lr_rate` would train at default lr)
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _one_as_list(v: Any) -> Any:
    """A single value where a list of names belongs is a list of one (`--set data.text_columns=review`,
    `targets: query`); used only for lists where one item is a complete setting."""
    return [v] if isinstance(v, (str, int, float, dict)) and not isinstance(v, bool) else v


class ModelConfig(_Section):
    name: str = Field("roberta-base", description="Hub model id or local folder with config.json and weights.")
    trust_remote_code: bool = Field(False, description="Run model code shipped with the checkpoint. Off: it executes arbitrary code.")
    attn_implementation: Literal["sdpa", "eager"] = Field("sdpa", description="Attention kernel; sdpa is PyTorch's fused attention.")
    allow_pickle_weights: bool = Field(
        False, description="Also accept pytorch_model.bin (loaded with torch.load weights_only=True). Default: safetensors only.")
    dtype: Literal["float32", "bfloat16", "float16", "auto", "nf4"] = Field(
        "float32", description="dtype the frozen base weights are kept in while training (adapter, head and optimizer "
        "state stay float32; the saved adapter is the same); auto: bfloat16 on GPUs with bf16 and CPUs with native "
        "bf16 dot products (avx512_bf16/amx_bf16), else float32; nf4: QLoRA, frozen Linear layers in 4 bits "
        "(bitsandbytes), the rest bfloat16.")


class DataConfig(_Section):
    train: str = Field("ag_news", description="Hub dataset name or local file (csv, tsv, jsonl, json, parquet).")
    train_split: str = Field("train", description="Split to read when `train` is a hub dataset.")
    test: Optional[str] = Field(None, description="Optional held-out set (hub name or file), evaluated after training.")
    test_split: str = Field("test", description="Split to read when `test` is a hub dataset.")
    text_columns: list[str] = Field(["text"], min_length=1, description="Columns joined (in order) to form the input text.")
    text_separator: str = Field(". ", description="Joiner between text columns (e.g. title. description).")
    label_column: str = Field("label", description="Column with labels: integers 0..K-1 or names.")
    label_names: Optional[list[str]] = Field(None, description="Names for integer labels 0..K-1 (id2label). Default: from the data.")
    val_size: float = Field(0.1, gt=0, description="Validation split: a fraction (<1) or a count of rows (>=1); stratified, seeded.")
    max_length: int = Field(128, ge=8, description="Truncate inputs to this many tokens (padding is dynamic).")
    limit: Optional[int] = Field(None, ge=1, description="Use only the first N training rows after shuffling (quick runs).")
    min_words: int = Field(0, ge=0, description="Drop items with fewer words (length filter; 0 keeps all).")
    max_words: Optional[int] = Field(None, ge=1, description="Drop items with more words (length filter).")
    min_class_rows: int = Field(
        2, ge=1, description="Refuse to train when a class has fewer training rows (after data.limit): with fewer than "
        "2 the stratified validation split cannot give it both a training and a validation row; 1 trains them as "
        "they are (the split is then not stratified).")
    empty_texts: Literal["drop", "error"] = Field("drop", description="Empty/whitespace-only texts: drop them (with a count) or stop.")
    empty_labels: Literal["drop", "error"] = Field(
        "error", description="Rows whose label is empty (blank, whitespace, null, NaN): stop, naming the rows, or drop "
        "them with a count. Applies to data.train, data.test and `evaluate --data`.")
    delimiter: str = Field(
        "auto", description="Field separator of .csv/.tsv files (data.train, data.test): one character ('tab' or '\\t' "
        "for a tab), or auto: a tab for .tsv; for .csv a comma, unless the header line has none, then sniffed among ; tab |.")
    shuffle_sentences_p: float = Field(0.0, ge=0, le=1, description="Augmentation: probability of shuffling an item's sentences each epoch.")
    allow_pickle: bool = Field(False, description="Accept pickled inputs (.pkl); unpickling runs code from the file.")
    split_seed: Optional[int] = Field(
        None, description="Seed of the shuffle, `limit` and the validation split (default: `seed`); `train --seeds` fixes "
        "it so that every seed is scored on the same validation set.")
    task: Literal["single_label", "multi_label", "regression"] = Field(
        "single_label", description="single_label: one class per row (cross-entropy); multi_label: a set of labels per "
        "row (a JSON list, or a string split on data.label_delimiter; BCE, per-label thresholds tuned on validation); "
        "regression: a number per row (MSE).")
    text_pair_column: Optional[str] = Field(
        None, description="Second text of a pair (e.g. the hypothesis of NLI), encoded as the tokenizer's pair: its own "
        "separator and segment ids, truncated longest_first.")
    label_delimiter: Optional[str] = Field(
        None, min_length=1, description="multi_label: split label strings on this (e.g. '|'); default: a JSON list, or one label.")
    truncation: Literal["head", "tail", "head_tail"] = Field(
        "head", description="Which tokens of a long text are kept: the first max_length (head), the last (tail), or "
        "the first head_tokens and the last max_length - head_tokens (head_tail; Sun et al. 2019).")
    head_tokens: Optional[int] = Field(
        None, ge=0, description="head_tail: tokens kept from the start (default: a quarter of what max_length leaves "
        "for text, as Sun et al.'s 128 of 512).")

    _lists = field_validator("text_columns", mode="before")(_one_as_list)

    @field_validator("val_size")
    @classmethod
    def _val_size_kind(cls, v: float) -> float:
        if v >= 1 and v != int(v):
            raise ValueError("a count of rows must be a whole number (or use a fraction < 1)")
        return v

    @model_validator(mode="after")
    def _pairs_and_truncation(self) -> "DataConfig":
        if self.text_pair_column is not None and self.truncation != "head":
            raise ValueError(f"data.truncation: {self.truncation} applies to single texts; text pairs "
                             "(data.text_pair_column) are truncated longest_first, as the tokenizer does")
        if self.text_pair_column is not None and self.text_pair_column in self.text_columns:
            raise ValueError(f"data.text_pair_column: '{self.text_pair_column}' is also in data.text_columns; "
                             "name the pair's second text")
        # head_tokens is read only by head_tail, and must leave room for the tail: refused rather than
        # silently ignored or clamped, so a run never trains on another cut than the config says
        if self.head_tokens is not None and self.truncation != "head_tail":
            raise ValueError(f"data.head_tokens: applies to data.truncation: head_tail (this is {self.truncation}); "
                             "set truncation: head_tail or remove head_tokens")
        if self.head_tokens is not None and self.head_tokens >= self.max_length:
            raise ValueError(f"data.head_tokens: {self.head_tokens} leaves no room for the tail within data.max_length "
                             f"{self.max_length}; set it below {self.max_length} (default: a quarter of the room)")
        return self

    @staticmethod
    def delimiter_char(v: str) -> str:
        """'auto' or the one character a delimiter setting or flag stands for (shells pass a tab as \\t)."""
        v = {"tab": "\t", "\\t": "\t"}.get(v, v)
        if v != "auto" and len(v) != 1:
            raise ValueError(f"{v!r} is not one character; give one, e.g. ';', or tab")
        if v in ('"', "\r", "\n"):
            raise ValueError(f"{v!r} cannot separate fields (it quotes them or ends a line); give another, e.g. ';'")
        return v

    @field_validator("delimiter")
    @classmethod
    def _delimiter(cls, v: str) -> str:
        return cls.delimiter_char(v)


class AdapterConfig(_Section):
    method: Literal["lora", "adalora", "full"] = Field("lora", description="lora | adalora | full (fine-tune everything: the baseline).")
    r: Union[int, Literal["auto"]] = Field(8, description="LoRA rank; 'auto' = the largest uniform rank within budget.max_trainable.")
    alpha: float = Field(16, gt=0, description="LoRA scaling numerator (scale = alpha / r, or alpha / sqrt(r) with rslora).")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout on the LoRA input.")
    targets: Optional[list[str]] = Field(None, description="Module names to adapt, e.g. [query, value]. Default: PEFT's table for the model type.")
    layers: Optional[list[int]] = Field(None, description="Only these encoder layers (layers_to_transform), e.g. [8, 9, 10, 11].")
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases train (PEFT semantics).")
    rslora: bool = Field(False, description="Rank-stabilised scaling alpha/sqrt(r).")
    dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA).")
    init: Literal["default", "gaussian", "pissa", "olora"] = Field(
        "default", description="LoRA weight init. pissa / olora start from the weights' principal (SVD) / QR part and "
        "move it out of the base weights; the saved adapter is converted to plain LoRA (rank 2r) so it loads on the "
        "unmodified base model.")
    train_layernorm: bool = Field(False, description="Also train every LayerNorm weight and bias (counted in the budget, "
                                  "saved with the adapter).")
    init_r: int = Field(12, ge=1, description="AdaLoRA: starting rank.")
    target_r: int = Field(8, ge=1, description="AdaLoRA: average rank after pruning.")
    tinit: float = Field(0.1, ge=0, lt=1, description="AdaLoRA: fraction of steps before rank pruning starts.")
    tfinal: float = Field(0.2, ge=0, lt=1, description="AdaLoRA: fraction of final steps with ranks fixed.")
    delta_t: int = Field(10, ge=1, description="AdaLoRA: steps between rank re-allocations.")

    _lists = field_validator("targets", "layers", mode="before")(_one_as_list)

    @model_validator(mode="after")
    def _check(self) -> "AdapterConfig":
        if isinstance(self.r, int) and self.r < 1:
            raise ValueError("adapter.r must be >= 1 or 'auto'")
        if self.method == "adalora" and self.target_r > self.init_r:
            raise ValueError("adapter.target_r must be <= adapter.init_r")
        if self.tinit + self.tfinal >= 1:
            raise ValueError("adapter.tinit + adapter.tfinal must be < 1")
        if self.init in ("pissa", "olora") and (self.dora or self.method == "adalora"):
            # their conversion to plain LoRA at save time (ΔW = BA - B0A0) has no DoRA/AdaLoRA counterpart
            raise ValueError(f"adapter.init: {self.init} works with method lora without dora")
        return self


class HeadConfig(_Section):
    type: Literal["model", "lora_dense", "cls_linear", "mean_linear"] = Field(
        "model",
        description="model: the model's own head trained in full (BERT-family: pooler + classifier, since a frozen "
        "pooler, random or trained for another objective, cripples a classifier); "
        "lora_dense: the head's dense layer (RoBERTa classifier.dense, BERT pooler) frozen with LoRA on it; "
        "cls_linear: one linear layer on the first token; mean_linear: mean pooling + linear.")


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
    group_by_length: bool = Field(True, description="Batches of similar length (shuffled order): less padding, same math.")
    cache_prefix: Union[bool, Literal["auto"]] = Field(
        "auto", description="Compute hidden states below the lowest trainable layer once and train only the layers above.")
    cache_dtype: Literal["float32", "float16"] = Field("float32", description="Storage dtype of cached hidden states (float16 halves memory).")
    fast_dropout: Union[bool, Literal["auto"]] = Field(
        "auto", description="Dropout masks from 16-bit uniforms (same distribution, ~3x cheaper than torch's on CPU); auto: on CPU only.")
    trim_heap: Union[bool, Literal["auto"], float] = Field(
        "auto", description="Return freed heap memory to the OS (glibc malloc_trim) after a step that leaves RSS more "
        "than this fraction above the first step's (e.g. 0.2); true: after every step (lowest peak, ~20% of the "
        "step time on CPU); false: never (fastest, highest peak); auto: 0.2 on CPU, off elsewhere.")
    last_layer_first_token: bool = Field(
        True, description="The last encoder layer computes keys/values for every token and the rest for the first token "
        "only, where the head reads nothing else (BERT/RoBERTa heads, cls_linear): same logits, ~1/6 less work on "
        "6 layers; also used by predict.")
    packed_inference: bool = Field(
        True, description="predict/evaluate run the Linear layers on weights prepacked once for oneDNN (CPU only): "
        "same fp32 math, 1.2-1.35x faster prediction on CPU.")
    compile: bool = Field(False, description="torch.compile the model (measure first: slower on small CPU runs).")
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

    @field_validator("trim_heap")
    @classmethod
    def _trim_heap(cls, v):
        if isinstance(v, float) and v <= 0:
            raise ValueError("a growth fraction must be above 0 (e.g. 0.2); true trims after every step")
        return v


class BudgetConfig(_Section):
    max_trainable: Optional[int] = Field(None, ge=1, description="Refuse setups with more trainable parameters.")


class SweepConfig(_Section):
    space: dict[str, Any] = Field(
        {}, description="Dotted config key -> a list of choices, or {low, high, log} for a number, e.g. "
        "{adapter.r: [4, 8, 16], optim.lr: {low: 1.0e-4, high: 3.0e-3, log: true}}.")
    metric: METRIC = Field("accuracy", description="Validation metric optimised (loss, rmse: minimised).")
    startup_trials: int = Field(3, ge=0, description="Median pruning starts after this many finished trials.")
    warmup_evals: int = Field(0, ge=0, description="Never prune a trial before this many evaluations.")

    @field_validator("space")
    @classmethod
    def _space(cls, space: dict) -> dict:
        problems = []
        for key, spec in space.items():
            problem = check_space_key(key) or _check_space_spec(key, spec)
            if problem:
                problems.append(problem)
        if problems:
            raise ValueError("; ".join(problems))
        return space


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


class RunConfig(_Section):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    adapter: AdapterConfig = AdapterConfig()
    head: HeadConfig = HeadConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    budget: BudgetConfig = BudgetConfig()
    sweep: SweepConfig = SweepConfig()
    seed: int = Field(42, description="Seeds python, numpy, torch, the split and the data order.")

    @model_validator(mode="after")
    def _task_metrics(self) -> "RunConfig":
        """train.metric (and a sweep's metric) must be one of data.task's; left at its default it becomes
        the task's first (micro_f1, pearson), which config.yaml then records."""
        from .tasks import get  # here: tasks read label cells with pandas, which config alone does not need

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

    def to_yaml(self) -> str:
        raw = self.model_dump(mode="json")
        if raw["sweep"] == SweepConfig().model_dump(mode="json"):
            del raw["sweep"]  # a run's config.yaml says how it trained; an unused sweep section is noise there
        return yaml.safe_dump(raw, sort_keys=False)


# ---------------------------------------------------------------- loading and overrides

def _known_keys(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _section_model(loc: tuple) -> type[BaseModel]:
    """The pydantic class at a location like ('optim', 'layer_lrs', 0)."""
    cls: type[BaseModel] = RunConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = cls.model_fields.get(part)
        if field is None:
            break
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        sub = next((a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if sub is None:
            break
        cls = sub
    return cls


def suggest(word: str, options: list[str]) -> str | None:
    """Closest known name: a known name that is the leading word (`lr_rate` → `lr`), else difflib's."""
    head = word.replace("-", "_").split("_")[0]
    if head != word and head in options:
        return head
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    return close[0] if close else None


def _format_errors(err: ValidationError, source: str, set_keys: Sequence[str] = ()) -> str:
    """One line: the config file's problems under its name, each `--set` flag's under that flag (so a
    bad `--set optim.lr=abc` is not blamed on the file)."""
    from_file, from_set = [], []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        key = ".".join(str(p) for p in loc)
        flag = max((k for k in set_keys if key == k or key.startswith(k + ".")), key=len, default=None)
        text = e["msg"].removeprefix("Value error, ")
        # a section's own check names its fields itself ("data.head_tokens: ..."): no "'data': " before it
        where = "" if not key or key == flag or text.startswith(key + ".") else f"'{key}': "
        if e["type"] == "extra_forbidden":
            parent = _section_model(loc[:-1])
            guess = suggest(str(loc[-1]), _known_keys(parent))
            hint = f" (did you mean '{'.'.join(map(str, loc[:-1] + (guess,)))}'?)" if guess else \
                f" (known: {', '.join(_known_keys(parent))})"
            msg = f"unknown key{'' if key == flag else f' {key!r}'}{hint}"
        else:
            msg = f"{where}{text}{_list_hint(e, key, flag)}"
        if flag is None:
            from_file.append(msg)
        else:
            from_set.append(f"--set {flag}: {msg}")
    return "; ".join(([f"{source}: " + "; ".join(from_file)] if from_file else []) + from_set)


def _list_hint(e: dict, key: str, flag: str | None) -> str:
    """A scalar where a list belongs is the usual slip (`--set adapter.targets=query`): show the list form."""
    value = e.get("input")
    if e["type"] != "list_type" or not isinstance(value, (str, int, float)) or isinstance(value, bool):
        return ""
    if flag == key:
        return f" (write a list: --set {key}=[{value}])"
    return f" (write a list: {key.rsplit('.', 1)[-1]}: [{value}])"


def parse_value(text: str) -> Any:
    """`--set` values are YAML scalars/lists: 3e-4, [query, value], null, true."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for item in overrides:
        if "=" not in item:
            raise LorafitError(f"--set {item!r}: expected key=value, e.g. --set optim.lr=3e-4")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise LorafitError(f"--set {key}: '{p}' is not a section")
            node = nxt
        node[parts[-1]] = parse_value(value)
    return raw


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read YAML (or start from defaults), apply dotted overrides, validate everything at once.
    Paths (PATH_FIELDS) come out absolute: the file's are read against its folder, `--set`'s against
    the working directory (resolve_paths)."""
    raw: dict = {}
    source = "config"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise LorafitError(f"{p}: config file not found")
        try:
            # libyaml's safe loader where there is one: the Python one took ~60 ms a run's config, most of
            # loading an adapter into a mixed base (serve loads them on demand)
            raw = yaml.load(p.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise LorafitError(f"{p}: not valid YAML ({first})") from None
        if not isinstance(raw, dict):
            raise LorafitError(f"{p}: the top level must be a mapping of sections (model:, data:, ...)")
        raw = resolve_paths(raw, [p.parent, Path.cwd()])
    raw = apply_overrides(raw, overrides or [])
    set_keys = [item.split("=", 1)[0].strip() for item in overrides or []]
    fields = [f for f in PATH_FIELDS if any(f == k or f.startswith(k + ".") for k in set_keys)]
    raw = resolve_paths(raw, [Path.cwd()], fields)
    return validate_config(raw, source, set_keys)


def validate_config(raw: dict, source: str = "config", set_keys: Sequence[str] = ()) -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        raise LorafitError(_format_errors(e, source, set_keys)) from None


# ---------------------------------------------------------------- paths

PATH_FIELDS = ("model.name", "data.train", "data.test")  # a local path or a hub id
DATA_FIELDS = ("data.train", "data.test")


def resolve_path(value: str, bases: Sequence[Path], data: bool = False) -> str:
    """Absolute form of a path in a config: the first base folder where it exists, else the first base
    when it looks like a path (so a missing file is reported where it was expected); a hub id unchanged."""
    from .data.tables import looks_like_path

    p = Path(value).expanduser()
    if p.is_absolute():
        return os.path.normpath(p)
    for base in bases:
        if (base / p).exists():
            return os.path.abspath(base / p)
    return os.path.abspath(bases[0] / p) if looks_like_path(value, data) else value


def resolve_paths(raw: dict, bases: Sequence[Path], fields: Sequence[str] = PATH_FIELDS) -> dict:
    """raw with the path fields absolute (see resolve_path). Relative paths in a config file are read
    against its folder first, then the working directory (where configs written before this rule, and
    the shipped ones, meant them); `--set` values against the working directory only. Also applied to
    an old run's recorded config, so that it compares equal to its config.yaml read today."""
    for dotted in fields:
        section, key = dotted.split(".")
        node = raw.get(section)
        if isinstance(node, dict) and isinstance(node.get(key), str):
            raw = {**raw, section: {**node, key: resolve_path(node[key], bases, dotted in DATA_FIELDS)}}
    return raw
