"""The run folder's format version, and the one place that reads runs written by older lorafits.

Every new run's marker file (`.lorafit-run`, written first) is JSON: `{"format": RUN_FORMAT,
"lorafit": "<version that wrote it>", "note": ...}`. `read_run_folder(run_dir)` is how every reader
(predict, evaluate, serve, export, load_trained) gets a run: it checks the format and returns one
normalised view (RunFolder), so the rules for older runs live here and nowhere else:

| written before | what such a run looks like | read as |
|---|---|---|
| the marker | config.yaml + labels.json, no `.lorafit-run` | a run of format 0 |
| the format version | a plain-text `.lorafit-run` | a run of format 0 |
| paths were recorded absolute | relative `model.name` / `data.*` in config.yaml | against the run folder, then the working directory (config.load_config) |
| calibration.json | no calibration.json | temperature None, with `temperature_note` saying why |
| eval.json's `trainable` | no count | `trainable` None |
| the data.max_length check | a max_length the model cannot read | capped at the model's limit, with a note (cap_max_length) |

A run of a newer format than RUN_FORMAT is refused with one error line naming both versions: this
lorafit cannot know what the newer one changed. Bump RUN_FORMAT when a change to the layout would
make an older lorafit misread a new run, and add the rule for reading the previous format here.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .. import __version__
from ..config import RunConfig, load_config
from ..errors import LorafitError

RUN_FORMAT = 1  # the run-folder format this lorafit writes (and the newest it reads)
RUN_MARKER = ".lorafit-run"  # written first into every new run: what --overwrite is allowed to replace
UNVERSIONED = 0  # runs written before the format version (no marker, or a plain-text one)
CALIBRATION, EVAL = "calibration.json", "eval.json"


def marker_text() -> str:
    """The marker every new run gets: its format, the lorafit that wrote it, and what the file is for."""
    return json.dumps({"format": RUN_FORMAT, "lorafit": __version__,
                       "note": "lorafit run directory: `lorafit train --overwrite` may replace it"}) + "\n"


def is_run_dir(folder: Path) -> bool:
    """A lorafit run: the marker, or (runs written before it) config.yaml + labels.json."""
    folder = Path(folder)
    return (folder / RUN_MARKER).is_file() or ((folder / "config.yaml").is_file() and (folder / "labels.json").is_file())


def run_format(run_dir: Path) -> tuple[int, Optional[str]]:
    """(format, lorafit version that wrote it) from the marker; (UNVERSIONED, None) for older runs.
    A run newer than this lorafit reads is refused here."""
    path = Path(run_dir) / RUN_MARKER
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # no marker, or the plain-text one of runs before the format version
        return UNVERSIONED, None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if isinstance(fmt, bool) or not isinstance(fmt, int) or fmt < 0:
        raise LorafitError(f"{path}: format {fmt!r} is not a run-folder format number; the marker is damaged "
                           f"(write {{\"format\": {RUN_FORMAT}}} into it if the run is this lorafit's)")
    if fmt > RUN_FORMAT:
        wrote = f" by lorafit {meta['lorafit']}" if isinstance(meta.get("lorafit"), str) else ""
        raise LorafitError(f"{run_dir}: run folder format {fmt} (written{wrote}) is newer than this lorafit "
                           f"{__version__} reads (format {RUN_FORMAT}); upgrade lorafit to use this run")
    return fmt, meta.get("lorafit") if isinstance(meta.get("lorafit"), str) else None


@dataclass(frozen=True)
class RunFolder:
    """A finished run's files, read and normalised (see the module's table)."""
    path: Path
    format: int
    lorafit: Optional[str]  # the version that wrote it; None before the format version
    cfg: RunConfig
    labels: list
    temperature: Optional[float]  # calibration.json's; None when there is none
    temperature_note: Optional[str]  # why temperature is None
    trainable: Optional[int]  # eval.json's count of trained parameters; None when unknown


def read_run_folder(run_dir: str | Path) -> RunFolder:
    """The run at run_dir, in this lorafit's terms; a LorafitError naming the file when it cannot be read."""
    from ..calibration import read_temperature

    run_dir = Path(run_dir)
    cfg_path, labels_path = run_dir / "config.yaml", run_dir / "labels.json"
    if not cfg_path.is_file() or not labels_path.is_file():
        raise LorafitError(f"{run_dir}: not a finished lorafit run (config.yaml / labels.json missing)")
    fmt, version = run_format(run_dir)
    cfg = load_config(cfg_path, warn=None)  # relative paths of older runs: against the run folder, then the working directory
    labels = _json(labels_path)
    if not isinstance(labels, list) or not labels:
        raise LorafitError(f"{labels_path}: not a list of label names; train the run again")
    temperature = read_temperature(run_dir)
    note = None if temperature is not None else (
        f"{run_dir / CALIBRATION} is missing (single_label runs have saved one since temperatures were fitted: "
        "this run is older, another task, or the file was removed)")
    return RunFolder(run_dir, fmt, version, cfg, labels, temperature, note, _trainable(run_dir))


def _json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LorafitError(f"{path}: unreadable ({e}); train the run again") from None


def _trainable(run_dir: Path) -> Optional[int]:
    try:
        n = json.loads((run_dir / EVAL).read_text(encoding="utf-8"))["trainable"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a run before the count (or without eval.json)
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def cap_max_length(cfg: RunConfig, mcfg, tokenizer) -> RunConfig:
    """A run trained before check_max_length may record a data.max_length its model cannot read; predicting
    with it would crash on the first long input, so truncate at the model's limit instead, and say so."""
    from ..model.load import model_token_limit

    limit = model_token_limit(mcfg, tokenizer)
    if limit is None or cfg.data.max_length <= limit:
        return cfg
    print(f"note: data.max_length {cfg.data.max_length} exceeds what {cfg.model.name} can read; inputs are "
          f"truncated at {limit} tokens", file=sys.stderr)
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"max_length": limit})})
