"""Issue 29 point 3: mixed-adapter batches (infer/mixed.py). Rows of LoRA runs of different label
counts, head types, ranks and tasks (one with trained LayerNorms, a regression run, a text-pair run)
over one tiny BERT, interleaved in one forward, each equal to `lorafit predict`'s logits of its run
alone (the merged model) to 1e-4; adding or removing a run leaves the others' logits unchanged; runs
the mixed path cannot represent exactly (DoRA, AdaLoRA, another base) load the per-run way."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import synthetic_rows, train_briefly

# name -> (training data, settings): label counts 4, 2, 4, 1 (regression), 4 (pairs); ranks 4, 2, 8, 6, 4
RUNS = {
    "model_r4": ("four", {}),
    "cls_norms_r2": ("two", {"head__type": "cls_linear", "adapter__r": 2, "adapter__train_layernorm": "true"}),
    "dense_r8": ("four", {"head__type": "lora_dense", "adapter__r": 8, "adapter__targets": "[query,key,value,dense]"}),
    "regression_r6": ("reg", {"head__type": "mean_linear", "adapter__r": 6, "data__task": "regression",
                              "data__label_column": "score"}),
    "pairs_r4": ("pairs", {"data__text_pair_column": "hypothesis"}),
}
FALLBACK = {"dora": ("four", {"adapter__dora": "true"}), "adalora": ("two", {"adapter__method": "adalora"})}


@pytest.fixture(scope="module")
def mixed_runs(tmp_path_factory):
    """name -> run folder, all over one tiny BERT whose tokenizer gives segment ids (pairs), trained briefly."""
    from test_engine import bert_with_segments
    from test_tasks import regression_rows
    from test_text_pairs import pair_rows

    root = tmp_path_factory.mktemp("mixed")
    base = bert_with_segments(root / "bert")
    data = {"four": synthetic_rows(160), "two": synthetic_rows(160, seed=3, n_labels=2), "reg": regression_rows(160),
            "pairs": pair_rows(160)}
    for key, rows in data.items():
        rows.to_csv(root / f"{key}.csv", index=False)
    out = {}
    for name, (key, over) in {**RUNS, **FALLBACK}.items():
        train_briefly(base, root / f"{key}.csv", root / name, optim__lr=2e-2, train__max_steps=10, **over)
        out[name] = root / name
    return base, out


def _texts(n: int = 15):
    from test_text_pairs import pair_rows

    rows = pair_rows(n, seed=9)
    return synthetic_rows(n, seed=11)["text"].tolist(), rows["text"].tolist(), rows["hypothesis"].tolist()


def _pool(dirs):
    from lorafit.infer.pool import BasePool
    from lorafit.runs.compat import read_run_folder

    return BasePool(torch.device("cpu"), expected=[read_run_folder(d).cfg for d in dirs])


def _reference(run_dir, texts, pairs=None):
    """`lorafit predict`'s logits: the run alone, loaded as predict loads it (merged)."""
    from lorafit.infer import engine
    from lorafit.infer.loaded import load_run

    return engine.logits(load_run(run_dir, "cpu"), texts, pairs)


def _interleaved(runs: dict, texts, firsts, seconds):
    """Row i of run i mod len(runs) (a pair run's rows are pairs), in one forward_rows call."""
    from lorafit.infer import engine

    names = list(runs)
    tagged, ids, types = [], [], []
    for i in range(len(texts)):
        name = names[i % len(names)]
        run = runs[name]
        pair = run.cfg.data.text_pair_column is not None
        enc = engine.encode(run, [firsts[i]], [seconds[i]]) if pair else engine.encode(run, [texts[i]])
        tagged.append(name)
        ids.append(enc[0][0])
        types.append(enc[1][0] if enc[1] is not None else None)
    out = engine.forward_rows([runs[n] for n in tagged], ids, types)
    return tagged, out


@pytest.mark.slow
def test_rows_of_five_runs_in_one_forward_equal_predict(mixed_runs):
    from lorafit.infer import mixed

    _, dirs = mixed_runs
    pool = _pool([dirs[n] for n in RUNS])
    runs = {n: pool.load(dirs[n]).loaded for n in RUNS}
    assert all(r.mixed is not None for r in runs.values()) and len(pool.mixed_bases) == 1
    base = next(iter(pool.mixed_bases.values()))
    assert any(isinstance(m, mixed.MultiLayerNorm) for m in base.encoder.modules())  # cls_norms_r2's trained norms
    texts, firsts, seconds = _texts()
    refs = {n: _reference(dirs[n], firsts, seconds) if n == "pairs_r4" else _reference(dirs[n], texts) for n in RUNS}
    assert {n: r.shape[1] for n, r in refs.items()} == {"model_r4": 4, "cls_norms_r2": 2, "dense_r8": 4,
                                                         "regression_r6": 1, "pairs_r4": 4}
    # a row routed to another run's adapter would be caught: two 4-label runs answer differently
    assert np.abs(refs["model_r4"] - refs["dense_r8"]).max() > 1e-3

    calls = []
    forward = base.forward
    base.forward = lambda batch, segments: calls.append(len(segments)) or forward(batch, segments)
    tagged, out = _interleaved(runs, texts, firsts, seconds)
    assert calls == [len(RUNS)]  # one forward, a segment per run
    for i, (name, row) in enumerate(zip(tagged, out)):
        np.testing.assert_allclose(row, refs[name][i], atol=1e-4, err_msg=f"row {i} of {name}")
    # the last layer on the first token only (speed/first_token.py) when every head in the forward reads
    # the first token alone; the regression run's mean pooling turned it off above
    widths = []
    base.encoder.register_forward_hook(lambda m, args, out: widths.append(out.last_hidden_state.shape[1]))
    first_only = {n: runs[n] for n in ("model_r4", "cls_norms_r2", "dense_r8", "pairs_r4")}
    tagged, out = _interleaved(first_only, texts, firsts, seconds)
    assert widths == [1] and base.short_layer
    for i, (name, row) in enumerate(zip(tagged, out)):
        np.testing.assert_allclose(row, refs[name][i], atol=1e-4, err_msg=f"row {i} of {name}")
    # and each run alone through its own backend (what engine.logits does with a slot)
    for name in ("cls_norms_r2", "regression_r6"):
        alone = _engine_logits(runs[name], texts)
        assert alone.dtype == np.float32
        np.testing.assert_allclose(alone, refs[name], atol=1e-4)


def _engine_logits(run, texts):
    from lorafit.infer import engine

    return engine.logits(run, texts, batch_size=4)


@pytest.mark.slow
def test_adding_and_removing_a_run_leaves_the_others_unchanged(mixed_runs):
    _, dirs = mixed_runs
    names = ["model_r4", "cls_norms_r2", "regression_r6"]
    pool = _pool([dirs[n] for n in RUNS])
    runs = {n: pool.load(dirs[n]).loaded for n in names}
    texts, firsts, seconds = _texts(9)
    _, before = _interleaved(runs, texts, firsts, seconds)

    added = pool.load(dirs["dense_r8"]).loaded  # LoRA on layers the others do not adapt (key, dense)
    _, after = _interleaved(runs, texts, firsts, seconds)
    np.testing.assert_allclose(np.concatenate(after), np.concatenate(before), atol=1e-6)
    _, with_it = _interleaved({**runs, "dense_r8": added}, texts, firsts, seconds)
    np.testing.assert_allclose(with_it[3], _reference(dirs["dense_r8"], texts)[3], atol=1e-4)

    base, slot = runs["cls_norms_r2"].mixed
    pool.unload(runs.pop("cls_norms_r2"))
    assert slot not in base.heads and all(slot not in getattr(m, "loras", getattr(m, "own", {}))
                                          for m in base.encoder.modules())
    _, left = _interleaved(runs, texts, firsts, seconds)
    refs = {n: _reference(dirs[n], texts) for n in runs}
    for i, (name, row) in enumerate(zip([list(runs)[i % len(runs)] for i in range(len(texts))], left)):
        np.testing.assert_allclose(row, refs[name][i], atol=1e-4)


@pytest.mark.slow
def test_runs_it_cannot_represent_load_the_per_run_way(mixed_runs, tiny_roberta, tmp_path):
    """DoRA and AdaLoRA runs over the same base, and a run over another base, are not slots of this
    mixed base; forward_rows still computes their rows beside mixed ones, each equal to predict."""
    from lorafit.infer import mixed
    from lorafit.runs.compat import read_run_folder

    _, dirs = mixed_runs
    synthetic_rows(120).to_csv(tmp_path / "d.csv", index=False)
    train_briefly(tiny_roberta, tmp_path / "d.csv", tmp_path / "roberta", optim__lr=2e-2, train__max_steps=4)
    for name, why in (("dora", "DoRA"), ("adalora", "adapter.method adalora")):
        assert mixed.why_not(read_run_folder(dirs[name]).cfg).startswith(why)
    all_dirs = {**{n: dirs[n] for n in ("model_r4", "cls_norms_r2", "dora", "adalora")}, "roberta": tmp_path / "roberta"}
    pool = _pool(list(all_dirs.values()))
    runs = {n: pool.load(d).loaded for n, d in all_dirs.items()}
    assert {n: r.mixed is not None for n, r in runs.items()} == {"model_r4": True, "cls_norms_r2": True, "dora": False,
                                                                   "adalora": False, "roberta": False}
    texts, firsts, seconds = _texts(10)
    tagged, out = _interleaved(runs, texts, firsts, seconds)
    refs = {n: _reference(d, texts) for n, d in all_dirs.items()}
    for i, (name, row) in enumerate(zip(tagged, out)):
        np.testing.assert_allclose(row, refs[name][i], atol=1e-4, err_msg=f"row {i} of {name}")


def test_a_tensor_it_does_not_know_adds_nothing(tiny_bert):
    """An adapter file with a tensor the mixed path does not represent is refused whole (NotMixable):
    no slot, no wrapped layer holds any of its tensors."""
    from lorafit.config import ModelConfig
    from lorafit.infer.mixed import MixedBase, MultiLoraLinear, NotMixable
    from lorafit.model.load import load_base

    base = MixedBase(load_base(ModelConfig(name=str(tiny_bert)), ["a", "b"]).eval(), torch.device("cpu"))
    pc = {"peft_type": "LORA", "r": 2, "lora_alpha": 4}
    q = "bert.encoder.layer.0.attention.self.query"
    good = {f"{q}.lora_A.weight": torch.ones(2, 32), f"{q}.lora_B.weight": torch.ones(32, 2),
            "classifier.weight": torch.ones(2, 32), "classifier.bias": torch.zeros(2)}
    for bad, why in (({"bert.embeddings.word_embeddings.weight": torch.ones(64, 32)}, "word_embeddings"),
                     ({f"{q}.lora_magnitude_vector": torch.ones(32)}, "lora_magnitude_vector")):
        with pytest.raises(NotMixable, match=why):
            base.add(pc, {**good, **bad}, "cls_linear")
    with pytest.raises(NotMixable, match="not plain LoRA"):
        base.add({**pc, "use_dora": True}, good, "cls_linear")
    assert not base.heads and not any(isinstance(m, MultiLoraLinear) for m in base.encoder.modules())
    slot = base.add(pc, good, "cls_linear")
    assert base.own_parameters(slot) == 2 * 32 * 2 + 2 * 32 + 2


@pytest.mark.slow
def test_the_batcher_puts_requests_of_several_runs_in_one_forward(mixed_runs):
    """serve's batcher: requests of three runs (2, 4 and 1 outputs) waiting together are one group,
    computed in forwards holding rows of several runs, and each request gets predict's logits."""
    import asyncio

    from lorafit.serve.batcher import Batcher
    from lorafit.serve.registry import ServedRun

    _, dirs = mixed_runs
    names = ["model_r4", "cls_norms_r2", "regression_r6"]
    pool = _pool([dirs[n] for n in names])
    served = {n: ServedRun(n, dirs[n], pool.load(dirs[n]).loaded) for n in names}
    texts = _texts(12)[0]
    requests = [(names[k % 3], texts[2 * k:2 * k + 2]) for k in range(6)]
    forwards, segments = [], []
    base = served["model_r4"].loaded.mixed[0]
    forward = base.forward
    base.forward = lambda batch, segs: segments.append(len(segs)) or forward(batch, segs)

    async def go():
        batcher = Batcher(max_batch=8, max_wait_ms=50, on_batch=forwards.append).start()
        try:
            with batcher.cond:  # all wait before the batcher looks
                jobs = [batcher.submit(served[n], t) for n, t in requests]
            return await asyncio.wait_for(asyncio.gather(*(j.future for j in jobs)), 120)
        finally:
            batcher.stop()
    got = asyncio.run(go())
    assert sum(forwards) == 12 and len(forwards) == 2 and max(segments) == 3
    refs = {n: _reference(dirs[n], texts) for n in names}
    for k, ((name, _), logits) in enumerate(zip(requests, got)):
        assert logits.shape == (2, refs[name].shape[1])
        np.testing.assert_allclose(logits, refs[name][2 * k:2 * k + 2], atol=1e-4)
