"""`ExportSettings`: every `lorafit export` option with its default, checked when built.

The library exports with `export_run(ExportSettings(run_dir=..., format="onnx", out=...))`; the CLI
only parses argv into one (its argparse defaults are read from these fields). A bad value raises the
one-line LorafitError the command prints, naming the command-line flag; the checks that read the run
folder and the check file run in export_run, before anything is written."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ..errors import LorafitError

FORMATS = ("onnx", "merged")
QUANTIZE = ("int8",)


@dataclass(frozen=True)
class ExportSettings:
    run_dir: Path
    format: str                          # onnx | merged
    out: Path                            # refused if it exists, unless overwrite
    check: Optional[str] = None          # texts to check on; None: the run's validation texts
    quantize: Optional[str] = None       # int8: also model.int8.onnx
    min_agreement: float = 99.5          # % of int8 labels that must equal fp32's
    overwrite: bool = False
    allow_pickle: bool = False
    text_columns: Optional[Sequence[str]] = None
    delimiter: Optional[str] = None
    input_format: Optional[str] = None
    batch_size: int = 64

    def __post_init__(self):
        object.__setattr__(self, "run_dir", Path(self.run_dir))
        object.__setattr__(self, "out", Path(self.out))
        if isinstance(self.text_columns, str):  # one column name, not its letters
            object.__setattr__(self, "text_columns", (self.text_columns,))
        if self.format not in FORMATS:
            raise LorafitError(f"--format: unknown format '{self.format}'; use onnx (ONNX Runtime) or merged "
                               "(a transformers folder)")
        if self.quantize is not None and self.quantize not in QUANTIZE:
            raise LorafitError(f"--quantize: unknown scheme '{self.quantize}'; use int8")
        if self.quantize is not None and self.format != "onnx":
            raise LorafitError("--quantize: int8 quantisation is for --format onnx (ONNX Runtime's dynamic quantisation)")
        m = self.min_agreement
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 < m <= 100:
            raise LorafitError(f"--min-agreement: {m} is a percentage of labels; give a value in (0, 100]")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise LorafitError(f"batch_size: {self.batch_size!r} is not a whole number >= 1")


def defaults() -> dict:
    """The default of each field that has one, by name: what the CLI's parser offers."""
    return {f.name: f.default for f in dataclasses.fields(ExportSettings) if f.default is not dataclasses.MISSING}
