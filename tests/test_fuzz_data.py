"""Fuzzing the data loader: any bytes in a .csv/.tsv/.jsonl either load as valid examples or fail
with the project's own LorafitError (one clear line), never another exception."""
import json
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorafit.config import DataConfig
from lorafit.data.examples import load_labelled, load_split
from lorafit.errors import LorafitError

# Pieces that break parsers: separators, quotes, line ends, NUL, BOM, non-ASCII, numbers, JSON syntax
PIECES = [",", "\t", '"', "'", "\n", "\r\n", "\r", " ", "\x00", "\ufeff", "é", "😀", "0", "1", "2", "-1", "1e9",
          "99999999999999999999", "nan", "text", "label", "goal match", "war vote", "{", "}", "[", "]", ":", "null"]
HEADERS = ["text,label\n", "text\tlabel\n", "label,text\n", "text,label,text\n", "text,\n", ""]


LABELS = ["0", "1", "2", "3", "-1", "7", "1.0", "World", "Sports", "", " ", "1e9", "99999999999999999999", "nan"]


@st.composite
def table_file(draw) -> tuple[str, bytes]:
    """(suffix, content)"""
    suffix = draw(st.sampled_from([".csv", ".tsv", ".jsonl"]))
    kind = draw(st.sampled_from(["bytes", "pieces", "rows", "rows", "json"]))
    if kind == "bytes":
        return suffix, draw(st.binary(max_size=400))  # anything at all, invalid UTF-8 included
    body = draw(st.lists(st.sampled_from(PIECES), max_size=60))
    if kind == "rows":  # mostly well-formed rows: reaches the label and text checks
        suffix = draw(st.sampled_from([".csv", ".tsv"]))
        sep = "\t" if suffix == ".tsv" else ","
        texts = st.one_of(st.sampled_from(PIECES[-9:]), st.text(max_size=15))
        rows = draw(st.lists(st.tuples(texts, st.sampled_from(LABELS)), min_size=1, max_size=12))
        lines = [f"text{sep}label"] + [f"{t}{sep}{lab}" for t, lab in rows]
        trash = "".join(body[:2]) if draw(st.booleans()) else ""
        return suffix, ("\n".join(lines) + "\n" + trash).encode("utf-8", "surrogatepass")
    if kind == "json":  # JSON-lines-ish
        rows = draw(st.lists(st.fixed_dictionaries({"text": st.one_of(st.text(max_size=20), st.none(), st.integers()),
                                                     "label": st.one_of(st.integers(-3, 10**12), st.text(max_size=5),
                                                                        st.none(), st.floats())}), max_size=8))
        trash = "".join(body) if draw(st.booleans()) else ""
        return ".jsonl", ("\n".join(json.dumps(r) for r in rows) + trash).encode("utf-8", "surrogatepass")
    return suffix, (draw(st.sampled_from(HEADERS)) + "".join(body)).encode("utf-8", "surrogatepass")


FOLDER = Path(tempfile.mkdtemp(prefix="lorafit-fuzz-"))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(file=table_file(), empty=st.sampled_from(["drop", "error"]))
def test_random_bytes_load_or_raise_lorafit_error(file, empty):
    suffix, raw = file
    path = FOLDER / f"fuzz{suffix}"
    path.write_bytes(raw)
    cfg = DataConfig(train=str(path), empty_texts=empty, val_size=0.3)
    try:
        ex, names, _ = load_labelled(str(path), cfg, "train", None, "data.train")
    except LorafitError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert len(ex) > 0 and len(names) >= 2
    assert all(isinstance(t, str) and t.strip() for t in ex.texts)
    assert ex.labels.dtype == np.int64 and 0 <= ex.labels.min() and ex.labels.max() < len(names)
    try:
        split = load_split(cfg, seed=0)
    except LorafitError:
        return
    assert len(split.train) + len(split.val) == len(ex)
