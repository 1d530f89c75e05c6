"""The `model:`, `adapter:` and `head:` sections: which encoder, which adapter on it, which head."""
from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from .base import _one_as_list, _Section


class ModelConfig(_Section):
    name: str = Field("roberta-base", description="Hub model id or local folder with config.json and weights.")
    trust_remote_code: bool = Field(False, description="Run model code shipped with the checkpoint. Off: it executes arbitrary code.")
    attn_implementation: Literal["sdpa", "eager"] = Field("sdpa", description="Attention kernel; sdpa is PyTorch's fused attention.")
    allow_pickle_weights: bool = Field(
        False, description="Also accept pytorch_model.bin (loaded with torch.load weights_only=True). Default: safetensors only.")
    dtype: Literal["float32", "bfloat16", "float16", "auto", "nf4"] = Field(
        "auto", description="dtype the frozen base weights are kept in while training (adapter, head and optimizer "
        "state stay float32; the saved adapter is the same); auto: bfloat16 on GPUs with bf16, and on CPUs with native "
        "bf16 dot products (avx512_bf16/amx_bf16) where a ~1 s probe of the model's matmuls finds it faster, else "
        "float32; nf4: QLoRA, frozen Linear layers in 4 bits "
        "(bitsandbytes), the rest bfloat16.")


class AdaLoraConfig(_Section):
    """AdaLoRA's schedule of ranks (read only with adapter.method: adalora)."""
    init_r: int = Field(12, ge=1, description="AdaLoRA: starting rank.")
    target_r: int = Field(8, ge=1, description="AdaLoRA: average rank after pruning.")
    tinit: float = Field(0.1, ge=0, lt=1, description="AdaLoRA: fraction of steps before rank pruning starts.")
    tfinal: float = Field(0.2, ge=0, lt=1, description="AdaLoRA: fraction of final steps with ranks fixed.")
    delta_t: int = Field(10, ge=1, description="AdaLoRA: steps between rank re-allocations.")

    @model_validator(mode="after")
    def _check(self) -> "AdaLoraConfig":
        if self.tinit + self.tfinal >= 1:
            raise ValueError("adapter.adalora.tinit + adapter.adalora.tfinal must be < 1")
        return self


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
    adalora: AdaLoraConfig = Field(AdaLoraConfig(), description="AdaLoRA's own settings (method: adalora).")

    _lists = field_validator("targets", "layers", mode="before")(_one_as_list)

    @model_validator(mode="after")
    def _check(self) -> "AdapterConfig":
        if isinstance(self.r, int) and self.r < 1:
            raise ValueError("adapter.r must be >= 1 or 'auto'")
        if self.method == "adalora" and self.adalora.target_r > self.adalora.init_r:
            raise ValueError("adapter.adalora.target_r must be <= adapter.adalora.init_r")
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
