import pickle

import numpy as np
import pandas as pd
import pytest

from lorafit.config import DataConfig
from lorafit.data.batches import Collator, LengthGroupedBatches, TokenDataset, shuffle_sentences
from lorafit.data.examples import encode_labels, join_texts, load_labelled, load_split
from lorafit.errors import LorafitError
from lorafit.data.tables import read_table

FRAME = pd.DataFrame({"title": ["A", "B", "C", "D"], "text": ["one two", "three", "four five six", "seven"],
                      "label": [0, 1, 0, 1]})


@pytest.mark.parametrize("suffix", ["csv", "tsv", "jsonl", "json", "parquet"])
def test_formats_read_the_same(tmp_path, suffix):
    p = tmp_path / f"d.{suffix}"
    if suffix in ("csv", "tsv"):
        FRAME.to_csv(p, sep="," if suffix == "csv" else "\t", index=False)
    elif suffix == "jsonl":
        FRAME.to_json(p, orient="records", lines=True)
    elif suffix == "json":
        FRAME.to_json(p, orient="records")
    else:
        FRAME.to_parquet(p)
    df = read_table(str(p))
    assert df["text"].tolist() == FRAME["text"].tolist()
    assert [int(x) for x in df["label"]] == [0, 1, 0, 1]


def test_pickle_needs_opt_in(tmp_path):
    p = tmp_path / "d.pkl"
    with p.open("wb") as f:
        pickle.dump(FRAME, f)
    with pytest.raises(LorafitError, match="run arbitrary code.*set data.allow_pickle: true"):
        read_table(str(p))
    with pytest.raises(LorafitError, match="run arbitrary code.*pass --allow-pickle"):
        read_table(str(p), field="--input")
    assert read_table(str(p), allow_pickle=True)["text"].tolist() == FRAME["text"].tolist()


def test_hf_dataset_folder_and_pickled_dataset(tmp_path):
    import datasets

    ds = datasets.Dataset.from_pandas(FRAME)
    ds.save_to_disk(str(tmp_path / "saved"))
    assert read_table(str(tmp_path / "saved"))["text"].tolist() == FRAME["text"].tolist()
    with (tmp_path / "ds.pkl").open("wb") as f:
        pickle.dump(ds, f)
    assert read_table(str(tmp_path / "ds.pkl"), allow_pickle=True)["title"].tolist() == ["A", "B", "C", "D"]


def test_text_columns_joined():
    cfg = DataConfig(text_columns=["title", "text"], text_separator=". ")
    assert join_texts(FRAME, cfg, "x")[0] == "A. one two"


def test_label_names_and_ids():
    # integers are ids only where names for the ids were given (data.label_names, a hub ClassLabel)
    assert encode_labels(["Sports", "World", 1], ["World", "Sports"], "f", "label", ids=True).tolist() == [1, 0, 1]
    with pytest.raises(LorafitError, match=r"row 2: label 'Weather' .* not in the label set \['World', 'Sports'\]"):
        encode_labels(["World", "Weather"], ["World", "Sports"], "f", "label")
    with pytest.raises(LorafitError, match=r"row 1: label 7"):
        encode_labels([7], ["World", "Sports"], "f", "label")


def test_missing_column_lists_columns(tmp_path):
    p = tmp_path / "d.csv"
    FRAME.to_csv(p, index=False)
    with pytest.raises(LorafitError, match=r"column 'body' not found .*columns present: title, text, label"):
        load_labelled(str(p), DataConfig(text_columns=["body"]), "train", None, "data.train")


def test_every_missing_column_in_one_message(tmp_path):
    """They were reported one per run: the label column, then after fixing it the text column."""
    p = tmp_path / "d.csv"
    FRAME.to_csv(p, index=False)
    cfg = DataConfig(label_column="y", text_columns=["title", "body"], text_pair_column="hypothesis")
    with pytest.raises(LorafitError) as e:
        load_labelled(str(p), cfg, "train", None, "data.train")
    assert str(e.value) == (f"{p}: columns not found: 'y' (set data.label_column), 'body' (set data.text_columns), "
                            "'hypothesis' (set data.text_pair_column); columns present: title, text, label")
    with pytest.raises(LorafitError) as e:
        load_labelled(str(p), cfg, "train", None, "--data")
    assert str(e.value).startswith(f"{p}: columns not found: 'y' (set --label-column), 'body' (set --text-column), ")


def test_stratified_split_seeded_and_limited(synth1k_csv):
    a = load_split(DataConfig(train=str(synth1k_csv), val_size=200), seed=640)
    b = load_split(DataConfig(train=str(synth1k_csv), val_size=200), seed=640)
    c = load_split(DataConfig(train=str(synth1k_csv), val_size=0.1, limit=500), seed=1)
    assert a.val.texts == b.val.texts and len(a.val) == 200 and len(a.train) == 800
    assert np.bincount(a.val.labels).tolist() == [50, 50, 50, 50]
    assert len(c.train) + len(c.val) == 500 and len(c.val) == 50


def test_empty_texts_dropped_or_refused(tmp_path):
    p = tmp_path / "d.csv"
    pd.DataFrame({"text": ["ok text", "  ", "", "more"], "label": [0, 1, 0, 1]}).to_csv(p, index=False)
    ex, _, notes = load_labelled(str(p), DataConfig(), "train", None, "data.train")
    assert len(ex) == 2 and "dropped 2 empty" in notes[0]
    with pytest.raises(LorafitError, match="2 empty or whitespace-only text.*row 2"):
        load_labelled(str(p), DataConfig(empty_texts="error"), "train", None, "data.train")


def test_length_filter(tmp_path):
    p = tmp_path / "d.csv"
    pd.DataFrame({"text": ["a", "a b c", "a b c d e f"], "label": [0, 1, 0]}).to_csv(p, index=False)
    ex, _, notes = load_labelled(str(p), DataConfig(min_words=2, max_words=5), "train", None, "data.train")
    assert ex.texts == ["a b c"] and "length filter" in notes[0]


def test_length_grouped_batches_cover_all_once_and_group():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 200, size=1000)
    s = LengthGroupedBatches(lengths, 16, shuffle=True, seed=3)
    batches = s.batches()
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(1000))
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    random_spread = np.mean([lengths[b].max() - lengths[b].min() for b in np.array_split(rng.permutation(1000), 63)])
    assert spread < random_spread / 5
    s.set_epoch(1)
    assert s.batches() != batches  # a new order each epoch
    s.set_epoch(0)
    assert s.batches() == batches  # and reproducible


def test_collator_pads_dynamically():
    batch = Collator(pad_id=1)([([0, 5, 2], 1), ([0, 2], 0)])
    assert batch["input_ids"].tolist() == [[0, 5, 2], [0, 2, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [1, 0]


def test_sentence_shuffle_is_seeded_and_changes_order():
    import random

    text = "First one. Second two! Third three? Fourth four."
    a = shuffle_sentences(text, random.Random(1))
    assert sorted(a.split()) == sorted(text.split()) and a == shuffle_sentences(text, random.Random(1))
    assert any(shuffle_sentences(text, random.Random(s)) != text for s in range(5))


def test_augmented_dataset_retokenises_per_epoch(tiny_roberta):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_roberta))
    texts = ["goal match. stocks profit. war vote. chip data."] * 8
    ds = TokenDataset(tok(texts)["input_ids"], np.zeros(8, dtype=int), texts=texts, tokenizer=tok, max_length=32,
                      shuffle_p=1.0, seed=0)
    first = [ds[i][0] for i in range(8)]
    ds.epoch = 1
    second = [ds[i][0] for i in range(8)]
    assert first != second and all(sorted(a) == sorted(b) for a, b in zip(first, second))
