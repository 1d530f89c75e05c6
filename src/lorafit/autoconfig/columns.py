"""Which columns hold the text, the second text of a pair and the label, and which task the labels make.

By name first (the names datasets use: text, sentence, review...; label, target, class...; pairs such as
premise/hypothesis), else by content (text: strings of several words, mostly distinct; label: few distinct
values, numbers or lists). Every choice comes with its reason, which the run log prints."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Optional

import pandas as pd

from ..errors import LorafitError

LABEL_NAMES = ("label", "labels", "target", "targets", "class", "category", "categories", "y", "sentiment", "score",
               "rating", "stars", "tag", "tags", "intent", "topic", "emotion", "gold_label", "polarity")
TEXT_NAMES = ("text", "sentence", "review", "content", "document", "body", "comment", "message", "tweet", "utterance",
              "title", "description", "abstract", "headline", "summary", "statement", "phrase", "question", "query")
PAIRS = (("premise", "hypothesis"), ("sentence1", "sentence2"), ("sentence_a", "sentence_b"), ("text_a", "text_b"),
         ("text1", "text2"), ("question1", "question2"), ("question", "answer"), ("question", "passage"),
         ("question", "context"), ("question", "sentence"), ("query", "passage"), ("query", "document"),
         ("claim", "evidence"), ("anchor", "positive"))
ID_NAMES = ("id", "idx", "index", "uid", "guid", "unnamed: 0", "")
SAMPLE = 2000           # rows looked at to judge a column's content
MANY_NUMBERS = 10       # more distinct non-integer numbers than this: a regression target
LIST_SHARE = 0.5        # rows whose label is a list (or a JSON list, or has '|'): multi_label above this share


@dataclass
class Columns:
    text_columns: list[str]
    label_column: str
    text_pair_column: Optional[str]
    task: str
    label_delimiter: Optional[str] = None
    reasons: dict[str, str] = field(default_factory=dict)  # dotted config key -> why


def _lower(df: pd.DataFrame) -> dict[str, str]:
    return {str(c).strip().lower(): c for c in df.columns}


def _sample(s: pd.Series) -> pd.Series:
    s = s.dropna()
    return s.iloc[:SAMPLE]


def text_like(s: pd.Series) -> bool:
    """Strings of several words, or mostly distinct strings: what a text column holds (not a label)."""
    v = _sample(s)
    if len(v) == 0 or v.map(lambda x: isinstance(x, str)).mean() < 0.9:
        return False
    v = v.astype(str)
    words = v.str.split().str.len().mean()
    distinct = v.nunique() / len(v)
    return (words >= 2.5 and distinct > 0.2) or (distinct >= 0.5 and v.str.len().mean() >= 8)


def _is_list(x) -> bool:
    if isinstance(x, (list, tuple)) or (hasattr(x, "tolist") and not isinstance(x, str) and getattr(x, "ndim", 0) == 1):
        return True
    if isinstance(x, str) and x.strip().startswith("["):
        try:
            return isinstance(json.loads(x), list)
        except ValueError:
            return False
    return False


def _id_like(name: str, s: pd.Series) -> bool:
    if str(name).strip().lower() in ID_NAMES:
        return True
    v = _sample(s)
    return len(v) > 20 and pd.api.types.is_integer_dtype(v) and v.is_unique and v.is_monotonic_increasing


def label_like(s: pd.Series) -> bool:
    """Few distinct values (classes), lists (label sets) or numbers: what a label column holds."""
    v = _sample(s)
    if len(v) == 0:
        return False
    if v.map(_is_list).mean() > LIST_SHARE or pd.to_numeric(v, errors="coerce").notna().all():
        return True
    return v.astype(str).nunique() <= max(2, min(100, len(v) // 5))


def task_of(s: pd.Series) -> tuple[str, Optional[str], str]:
    """(data.task, data.label_delimiter, why) from a label column's values."""
    v = _sample(s)
    lists = v.map(_is_list).mean()
    if lists > LIST_SHARE:
        return "multi_label", None, f"{lists:.0%} of the labels are lists"
    if v.map(lambda x: isinstance(x, str)).all():
        piped = v.str.contains("|", regex=False).mean()
        if piped > LIST_SHARE / 5 and v.nunique() > 2:
            return "multi_label", "|", f"{piped:.0%} of the labels are sets written a|b"
    numbers = pd.to_numeric(v, errors="coerce")
    if numbers.notna().all():
        fractional = (numbers != numbers.round()).any()
        distinct = numbers.nunique()
        if fractional and distinct > MANY_NUMBERS:
            return "regression", None, f"{distinct} distinct numbers, not all whole"
        return "single_label", None, f"{distinct} distinct whole numbers: classes"
    return "single_label", None, f"{v.astype(str).nunique()} distinct names: one class per row"


def detect(df: pd.DataFrame, source: str, given: dict) -> Columns:
    """The columns and task of a table; `given` holds the data.* keys the user set (kept as set)."""
    lower, reasons = _lower(df), {}
    columns = [c for c in df.columns if not _id_like(c, df[c])]
    label = given.get("label_column")
    if label is not None:
        reasons["data.label_column"] = "set by --set"
    else:
        label = next((lower[n] for n in LABEL_NAMES if n in lower and lower[n] in columns), None)
        if label is not None:
            reasons["data.label_column"] = f"a column named '{label}'"
        else:
            found = [c for c in columns if label_like(df[c]) and not text_like(df[c])]
            if not found:
                raise LorafitError(f"{source}: no label column found among {', '.join(map(str, df.columns))} (none is "
                                   "named label/target/class/... or holds few distinct values); name it with "
                                   "--set data.label_column=NAME")
            label = min(found, key=lambda c: df[c].astype(str).nunique())
            reasons["data.label_column"] = (f"by content: '{label}' holds {df[label].astype(str).nunique()} distinct "
                                            "values (no column is named label/target/class/...)")
    if label not in df.columns:
        raise LorafitError(f"{source}: no column '{label}' (columns: {', '.join(map(str, df.columns))})")
    rest = [c for c in columns if c != label]
    texts, pair = given.get("text_columns"), given.get("text_pair_column")
    if texts is not None:
        texts = [texts] if isinstance(texts, str) else list(texts)
        reasons["data.text_columns"] = "set by --set"
    else:
        texts, pair = _texts(df, rest, lower, source, reasons, pair)
    if given.get("task") is not None:
        task, delimiter, why = given["task"], given.get("label_delimiter"), "set by --set"
    else:
        task, delimiter, why = task_of(df[label])
    reasons["data.task"] = why + (f"; text pairs ('{texts[0]}', '{pair}')" if pair else "")
    if delimiter:
        reasons["data.label_delimiter"] = "labels written a|b"
    return Columns(texts, label, pair, task, delimiter, reasons)


def _texts(df: pd.DataFrame, rest: list, lower: dict, source: str, reasons: dict, pair):
    """(text columns, pair column) among the columns that are not the label's."""
    if pair is None:
        for a, b in PAIRS:
            if a in lower and b in lower and lower[a] in rest and lower[b] in rest:
                first, second = lower[a], lower[b]
                reasons["data.text_columns"] = f"the first of a pair named '{first}'/'{second}'"
                reasons["data.text_pair_column"] = f"the second of a pair named '{first}'/'{second}'"
                return [first], second
    named = [c for c in rest if str(c).strip().lower() in TEXT_NAMES and c != pair]
    if named:
        reasons["data.text_columns"] = f"column{'s' * (len(named) > 1)} named {', '.join(map(repr, named))}" + (
            " (joined in this order)" if len(named) > 1 else "")
        return named, pair
    found = [c for c in rest if c != pair and text_like(df[c])]
    if not found:
        raise LorafitError(f"{source}: no text-like column among {', '.join(map(str, df.columns))} (none is named "
                           "text/sentence/review/... or holds strings of several words); name it with "
                           "--set data.text_columns=[NAME]")
    best = max(found, key=lambda c: _sample(df[c]).astype(str).str.len().mean())
    others = [c for c in found if c != best]
    reasons["data.text_columns"] = (f"by content: '{best}' holds the longest strings" +
                                    (f" (also text-like: {', '.join(map(repr, others))})" if others else ""))
    return [best], pair
