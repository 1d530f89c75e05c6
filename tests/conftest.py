"""Shared fixtures: tiny random encoders (hidden 32, 2 layers) with tokenizers trained on the fly,
and small synthetic datasets. Everything is local; nothing touches the hub."""
from __future__ import annotations

import os

# pytest-xdist runs one test per worker: each worker's torch, and every process its tests start, gets its share
# of the cores (torch would take them all: 2 workers x 2 threads on 2 cores nearly doubled the quick tier's CPU
# time). Set before anything imports torch, as OpenMP reads it when it loads.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

import random  # noqa: E402
import signal  # noqa: E402
from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED = Path(__file__).resolve().parents[2] / "shared"
AGNEWS = Path(os.environ.get("LORAFIT_DATA", SHARED / "data" / "agnews")) / "train.csv"

# Four topics, each with its own words: a separable task a working loop must learn.
TOPICS = {
    0: "war vote minister treaty border election embassy rebels capital summit".split(),
    1: "goal match season coach striker league final tennis cup champion".split(),
    2: "stocks profit market shares bank oil prices earnings merger investor".split(),
    3: "software chip internet space robot computer nasa virus browser data".split(),
}
FILLER = "the a of in on and to for with today said new".split()


def synthetic_rows(n: int, seed: int = 0, n_labels: int = 4) -> pd.DataFrame:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        y = i % n_labels
        words = [rng.choice(TOPICS[y]) for _ in range(rng.randint(3, 8))] + [rng.choice(FILLER) for _ in range(rng.randint(2, 10))]
        rng.shuffle(words)
        rows.append({"text": " ".join(words).capitalize() + ".", "label": y})
    return pd.DataFrame(rows)


def _train_tokenizer(folder: Path, kind: str) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers, normalizers
    from transformers import PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] if kind == "bert" else ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.WordLevel(unk_token=special[1] if kind == "bert" else "<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = [" ".join(w) for w in TOPICS.values()] + [" ".join(FILLER)] * 2
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=special))
    if kind == "bert":
        cls, sep, pad, unk, mask = "[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]"
    else:
        cls, sep, pad, unk, mask = "<s>", "</s>", "<pad>", "<unk>", "<mask>"
    # pairs as the real tokenizers encode them: BERT [CLS] A [SEP] B [SEP] (B in segment 1), RoBERTa <s> A </s></s> B </s>
    pair = f"{cls} $A {sep} $B:1 {sep}:1" if kind == "bert" else f"{cls} $A {sep} {sep} $B {sep}"
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=pair, special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=pad, unk_token=unk, cls_token=cls, sep_token=sep,
                                   mask_token=mask, model_max_length=512)
    fast.save_pretrained(folder)


def make_tiny_model(folder: Path, kind: str = "roberta", seed: int = 0, **size) -> Path:
    """A random encoder saved as a plain HF folder (safetensors + tokenizer); `size` overrides the
    config's tiny sizes (hidden_size=..., max_position_embeddings=...)."""
    import torch
    from transformers import AutoModel, BertConfig, RobertaConfig

    folder.mkdir(parents=True, exist_ok=True)
    _train_tokenizer(folder, kind)
    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  max_position_embeddings=80, vocab_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    common.update(size)
    cfg = BertConfig(pad_token_id=0, **common) if kind == "bert" else RobertaConfig(pad_token_id=1, bos_token_id=0, eos_token_id=2, **common)
    torch.manual_seed(seed)
    AutoModel.from_config(cfg).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-roberta", "roberta")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-bert", "bert")


@pytest.fixture(scope="session")
def synth_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "synth.csv"
    synthetic_rows(400).to_csv(path, index=False)
    return path


def tiny_config(model: Path, data: Path, **over) -> "object":
    """A RunConfig for quick CPU runs; keyword overrides use dotted names with __ for dots."""
    from lorafit.config import load_config

    sets = [f"model.name={model}", f"data.train={data}", "data.val_size=0.2", "data.max_length=32",
            "train.epochs=2", "train.batch_size=16", "train.eval_batch_size=64", "optim.lr=5e-3", "optim.warmup=0.1",
            "train.log_every=5", "adapter.r=4", "adapter.dropout=0.0"]
    sets += [f"{k.replace('__', '.')}={v}" for k, v in over.items()]
    return load_config(None, sets)


def train_briefly(model, data, run_dir, **over):
    """Two optimizer steps; returns the recipe and the names of trainable tensors that changed."""
    import torch

    from lorafit.model.budget import trainable_state
    from lorafit.train.recipe import Recipe

    cfg = tiny_config(model, data, **{"train__max_steps": 2, "data__limit": 120, **over})
    recipe = Recipe(cfg, run_dir, log=lambda *a: None).setup()
    before = trainable_state(recipe.acc.unwrap_model(recipe.model))
    recipe.train()
    after = trainable_state(recipe.acc.unwrap_model(recipe.model))
    recipe.finish()
    return recipe, {n for n, v in before.items() if not torch.equal(v, after[n])}


def assert_reload_exact(recipe, run_dir, merges=(False, True)):
    """load_trained (unmerged and merged) gives the end-of-training logits; returns (texts, logits)."""
    import numpy as np

    from lorafit.predict import predict_logits
    from lorafit.runs.weights import load_trained

    texts = recipe.data.val.texts[:16]
    ref = predict_logits(recipe.acc.unwrap_model(recipe.model).eval(), recipe.tokenizer, texts, 32)
    for merge in merges:
        model, tok, _, _ = load_trained(run_dir, merge=merge)
        np.testing.assert_allclose(predict_logits(model, tok, texts, 32), ref, atol=1e-4)
    return texts, ref


def run_cli(*args, cwd=None, env=None, timeout=600, **kw):
    """`python -m lorafit ...` in a new process; kw: more of subprocess.run's (input=, stdin=)."""
    import subprocess
    import sys

    src = str(Path(__file__).resolve().parents[1] / "src")
    full_env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    return subprocess.run([sys.executable, "-m", "lorafit", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=timeout, **kw)


@pytest.fixture(scope="session")
def synth1k_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "synth1k.csv"
    synthetic_rows(1000, seed=1).to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_roberta, synth1k_csv):
    """One LoRA run on the tiny RoBERTa, shared by the tests that read a finished run."""
    from lorafit.train.recipe import Recipe

    cfg = tiny_config(tiny_roberta, synth1k_csv, optim__lr=2e-2, train__epochs=6, adapter__r=8,
                      budget__max_trainable=100000)
    run_dir = tmp_path_factory.mktemp("runs") / "lora"
    recipe = Recipe(cfg, run_dir, log=lambda *a: None).setup()
    recipe.train()
    result = recipe.finish()
    return run_dir, recipe, result


@pytest.fixture(autouse=True)
def _sigint_handled():
    """Each test starts with SIGINT handled by Python, as a terminal's processes have it. pytest-xdist workers here
    started their first test with SIGINT ignored at the OS level (while Python's table still named its handler); the
    processes a test starts inherit an ignore across exec, and a Ctrl-C test's process ran to its end."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True, scope="session")
def _isolated_token_cache(tmp_path_factory):
    """Tests never read or fill the user's ~/.cache/lorafit."""
    os.environ["LORAFIT_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield


def one_error(capsys, argv) -> str:
    """`lorafit ARGV` in this process must exit 2 with exactly one `error:` line on stderr; its text."""
    from lorafit.cli import main

    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0][len("error: "):]
