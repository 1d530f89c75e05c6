"""The `data:` section: where the rows come from, which columns, the split, the cut to max_length."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from .base import _one_as_list, _Section


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
