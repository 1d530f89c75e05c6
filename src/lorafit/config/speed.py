"""The `speed:` section: switches that change how fast a run is, never what it learns.

Every switch defaults to `auto`, which lorafit decides per run (train/switches.py says in the run log
what it decided and why); a user sets one only to measure it (bench/switches.py). They were keys of
`train:` before; loading.py still reads them there, with a deprecation line."""
from __future__ import annotations

from typing import Literal, Union

from pydantic import Field, field_validator

from .base import _Section

# what `auto` means for the switches whose choice does not depend on the machine or the model
AUTO = {"group_by_length": True, "last_layer_first_token": True, "packed_inference": True, "compile": False,
        "cache_dtype": "float32"}
Switch = Union[bool, Literal["auto"]]


class SpeedConfig(_Section):
    group_by_length: Switch = Field("auto", description="Batches of similar length (shuffled order): less padding, "
                                    "same math; auto: on.")
    cache_prefix: Switch = Field(
        "auto", description="Compute hidden states below the lowest trainable layer once and train only the layers "
        "above; auto: where some layers are frozen whole.")
    cache_dtype: Literal["auto", "float32", "float16"] = Field(
        "auto", description="Storage dtype of cached hidden states (float16 halves memory); auto: float32.")
    fast_dropout: Switch = Field(
        "auto", description="Dropout masks from 16-bit uniforms (same distribution, ~3x cheaper than torch's on CPU); "
        "auto: on CPU only.")
    trim_heap: Union[bool, Literal["auto"], float] = Field(
        "auto", description="Return freed heap memory to the OS (glibc malloc_trim) after a step that leaves RSS more "
        "than this fraction above the first step's (e.g. 0.2); true: after every step (lowest peak, ~20% of the "
        "step time on CPU); false: never (fastest, highest peak); auto: 0.2 on CPU, off elsewhere.")
    last_layer_first_token: Switch = Field(
        "auto", description="The last encoder layer computes keys/values for every token and the rest for the first "
        "token only, where the head reads nothing else (BERT/RoBERTa heads, cls_linear): same logits, ~1/6 less work "
        "on 6 layers; also used by predict; auto: on where it applies.")
    packed_inference: Switch = Field(
        "auto", description="predict/evaluate run the Linear layers on weights prepacked once for oneDNN (CPU only): "
        "same fp32 math, 1.2-1.35x faster prediction on CPU; auto: on.")
    compile: Switch = Field("auto", description="torch.compile the model (slower on small CPU runs); auto: off.")

    @field_validator("trim_heap")
    @classmethod
    def _trim_heap(cls, v):
        if isinstance(v, float) and v <= 0:
            raise ValueError("a growth fraction must be above 0 (e.g. 0.2); true trims after every step")
        return v

    def resolved(self, name: str):
        """The switch's value with `auto` replaced by what it means where that is fixed (AUTO); the
        switches decided per run (cache_prefix, fast_dropout, trim_heap) come back as set."""
        value = getattr(self, name)
        return AUTO[name] if value == "auto" and name in AUTO else value
