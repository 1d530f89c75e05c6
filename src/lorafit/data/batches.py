"""Token ids to batches: the dataset (with the sentence-shuffle augmentation), length-grouped
batches in shuffled order, and padding per batch to its longest item.

Padding is per batch, not to max_length: AG News items average ~55 tokens, so padding to 128-512
would waste most of the compute."""
from __future__ import annotations

import random
import re
from typing import Optional, Sequence

import numpy as np
import torch

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\\")


def shuffle_sentences(text: str, rng: random.Random) -> str:
    parts = [p.strip() for p in _SENTENCE_END.split(text) if p.strip()]
    if len(parts) < 2:
        return text
    rng.shuffle(parts)
    return " ".join(parts)


class TokenDataset(torch.utils.data.Dataset):
    """Token ids (+ labels). With augmentation, items are re-tokenised after a seeded sentence shuffle."""

    def __init__(self, ids: list[list[int]], labels: Optional[np.ndarray] = None, *, texts=None, tokenizer=None,
                 max_length: int = 128, shuffle_p: float = 0.0, seed: int = 0, types=None, pairs=None, encoding=None):
        self.ids, self.labels = ids, labels
        self.texts, self.tokenizer, self.max_length = texts, tokenizer, max_length
        self.shuffle_p, self.seed, self.epoch = shuffle_p, seed, 0
        # text pairs: segment ids per item (BERT-style tokenizers), the pair texts and how to re-encode them
        self.types, self.pairs, self.encoding = types, pairs, encoding

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self) -> list[int]:
        return [len(x) for x in self.ids]

    def __getitem__(self, i: int):
        """(ids, label), or (ids, label, segment ids) for a pair; a label is an int class id, or a float
        target / multi-hot row (data.task)."""
        ids = self.ids[i]
        types = None if self.types is None else self.types[i]
        if self.shuffle_p > 0:
            rng = random.Random((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i)
            if rng.random() < self.shuffle_p:
                text = shuffle_sentences(self.texts[i], rng)
                if self.encoding is None:
                    ids = self.tokenizer(text, truncation=True, max_length=self.max_length)["input_ids"]
                else:
                    from .encoding import encode_one

                    ids, types = encode_one(self.tokenizer, text, self.encoding, None if self.pairs is None else self.pairs[i])
        label = None if self.labels is None else self.labels[i]
        if label is not None and np.ndim(label) == 0 and np.issubdtype(np.asarray(label).dtype, np.integer):
            label = int(label)
        return (ids, label) if types is None else (ids, label, types)


class LengthGroupedBatches(torch.utils.data.Sampler):
    """Yields lists of indices. Shuffled: random mega-batches (50 batches) sorted by length, then
    batch order shuffled, so each batch holds similar lengths yet the order stays random.
    Not shuffled: sorted by length (evaluation/prediction; callers restore the input order)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, *, shuffle: bool, group_by_length: bool = True,
                 seed: int = 0, mega: int = 50):
        self.lengths = np.asarray(lengths)
        self.batch_size, self.shuffle, self.group, self.seed, self.mega = batch_size, shuffle, group_by_length, seed, mega
        self.epoch, self._skip = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_next(self, n: int) -> None:
        """Leave out the first n batches of the next pass only: a run resumed mid-epoch sees the same
        order without the batches it already trained on. One-shot, so later epochs are whole again;
        kept apart from set_epoch because accelerate calls set_epoch itself at the start of each pass."""
        self._skip = n

    def batches(self) -> list[list[int]]:
        n, bs = len(self.lengths), self.batch_size
        if not self.shuffle:
            order = np.argsort(-self.lengths, kind="stable") if self.group else np.arange(n)
            return [order[s:s + bs].tolist() for s in range(0, n, bs)]
        rng = np.random.default_rng([self.seed, self.epoch])
        order = self.epoch_order(rng)
        n = len(order)
        if not self.group:
            return [order[s:s + bs].tolist() for s in range(0, n, bs)]
        step = bs * self.mega
        batches = []
        for s in range(0, n, step):
            mb = order[s:s + step]
            mb = mb[np.argsort(-self.lengths[mb], kind="stable")]
            batches.extend(mb[t:t + bs].tolist() for t in range(0, len(mb), bs))
        perm = rng.permutation(len(batches))
        batches = [batches[i] for i in perm]
        # The longest batch first (as transformers' LengthGroupedSampler does): the allocator reaches
        # its peak at once and shorter batches reuse that memory; a long batch late in an epoch finds a
        # heap fragmented by many shapes and grows it further (peak RSS +0.4 GB on MiniLM).
        longest = max(range(len(batches)), key=lambda i: self.lengths[batches[i]].max())
        batches[0], batches[longest] = batches[longest], batches[0]
        return batches

    def epoch_order(self, rng: np.random.Generator) -> np.ndarray:
        """The items of one shuffled epoch, before length grouping: each once (train/imbalance.py draws
        them class-balanced instead)."""
        return rng.permutation(len(self.lengths))

    def __iter__(self):
        skip, self._skip = self._skip, 0
        return iter(self.batches()[skip:])

    def __len__(self) -> int:  # a whole epoch, also while skipping: steps per epoch are counted from it
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size


class Collator:
    """Pads a batch to its longest item (dynamic padding)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items):
        width = max(len(item[0]) for item in items)
        input_ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, (ids, *_) in enumerate(items):
            input_ids[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
            mask[row, : len(ids)] = 1
        batch = {"input_ids": input_ids, "attention_mask": mask}
        if len(items[0]) > 2:  # a text pair's segment ids (padding: segment 0, as the tokenizers pad)
            types = torch.zeros((len(items), width), dtype=torch.long)
            for row, item in enumerate(items):
                types[row, : len(item[2])] = torch.as_tensor(item[2], dtype=torch.long)
            batch["token_type_ids"] = types
        labels = [item[1] for item in items]
        if labels[0] is not None:
            batch["labels"] = (torch.tensor(labels, dtype=torch.long) if isinstance(labels[0], int)
                               else torch.as_tensor(np.stack(labels)))  # float targets, multi-hot rows
        return batch


def make_loader(ds: TokenDataset, batch_size: int, pad_id: int, *, shuffle: bool, group_by_length: bool = True,
                seed: int = 0, num_workers: int = 0, batches: Optional[LengthGroupedBatches] = None
                ) -> torch.utils.data.DataLoader:
    sampler = batches or LengthGroupedBatches(ds.lengths(), batch_size, shuffle=shuffle, group_by_length=group_by_length,
                                              seed=seed)
    # Its own generator: each pass draws a worker seed from it, and drawing from the global RNG instead
    # would shift dropout masks between a run and the same run resumed from a checkpoint.
    return torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=Collator(pad_id), num_workers=num_workers,
                                       generator=torch.Generator().manual_seed(seed))
