"""The training recipe: setup → train → finish, on accelerate (one process, DDP, multi-node alike).

Nothing is written to the run directory until the config, the data, the model and the budget
have all been checked, so a bad input leaves no half-made run behind. Resumable checkpoints
(train/checkpoint.py) are written at each epoch end and every train.checkpoint_every steps;
`Recipe(..., resume=True)` continues from the latest one as if the run had never stopped.
"""
from __future__ import annotations

import json
import math
import shlex
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from .. import tasks
from ..config import RunConfig
from ..data.batches import TokenDataset, make_loader
from ..data.encoding import Encoding, encode, truncation_note
from ..data.examples import load_labelled, load_split, split_seed
from ..errors import Interrupted, LorafitError, TrainingDiverged
from ..model import build_model, check_budget, load_tokenizer, trainable_rows
from ..model import dtype as base_dtype
from ..model.budget import count_all
from ..model.load import check_local_folder, check_max_length
from ..model.solver import resolve_rank
from ..progress import progress
from ..runs.directory import check_run_dir
from ..runs.weights import initial_lora
from . import checkpoint, evaluation, header, imbalance, switches, tracking
from .accelerator import make_accelerator
from .finish import finish_run
from .optim import build_optimizer, build_scheduler
from .state import Position, State


class Recipe:
    """on_eval(n, metrics) is called after the n-th evaluation (1, 2, ...) with the validation
    metrics; sweeps use it to prune (an exception raised there stops training)."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path, *, overwrite: bool = False, resume: bool = False,
                 log: Callable = print, on_eval: Callable[[int, dict], None] | None = None):
        self.cfg, self.run_dir, self.overwrite, self.resume, self.log = cfg, Path(run_dir), overwrite, resume, log
        self.on_eval, self.prefix, self.evals = on_eval, None, 0
        self.state, self.position = State(), Position()
        self.train_seconds, self._segment = 0.0, None   # see _clock
        self._saved_step: Optional[int] = None   # step of the last resumable checkpoint
        self._saved_kept: set[int] = set()       # top-k folders that checkpoint refers to: not deleted before the next
        self._new_dir = None                     # runs.directory.NewRunDir: what a failed setup puts back
        self.set_up = False
        # a signal number set (by run_training's handler) while training: stop at the next step boundary
        self.stop_signal: Optional[int] = None
        self.training = False
        self.tracking: Optional[tracking.Tracking] = None  # train.report_to's trackers (main process), once set up
        self.thresholds: Optional[dict] = None  # multi_label: per-label thresholds, tuned when training ends
        self.config_notes: Optional[dict] = None  # a zero-config run's reasons: comments in config.yaml
        self.config_header: list[str] = []
        self.last_eval: Optional[dict] = None  # the last evaluation's logits (train/evaluation.py)

    # ------------------------------------------------------------------ setup
    def setup(self) -> "Recipe":
        check_run_dir(self.run_dir, overwrite=self.overwrite, resume=self.resume)  # before anything slow
        tracking.check_installed(self.cfg)  # a tracker's missing package: one line, nothing written
        try:
            self._setup()
        except BaseException:
            # a failed setup leaves the run directory as it found it: absent, empty, or the run --overwrite replaces
            if self._new_dir is not None:
                self._new_dir.undo()
            raise
        if self._new_dir is not None:
            self._new_dir.commit()  # only now is the replaced run deleted
        self.tracking = tracking.start(self)
        self.set_up = True
        return self

    def _setup(self) -> None:
        self.acc = make_accelerator(self.cfg)
        # a folder without weights or tokenizer: say so before any work
        check_local_folder(self.cfg.model, need_weights=True, need_tokenizer=True)
        # a resumed run reads and checks its checkpoint first; it is applied once everything is built
        saved = checkpoint.load(self.run_dir, self.cfg) if self.resume else None
        self._setup_data(saved)
        self._setup_model(saved)
        header.write_run_header(self)  # every check has passed
        self.final_val_loader = self.acc.prepare(self.val_loader)  # always the full model's own path
        switches.install(self)
        if self.cfg.speed.resolved("compile"):
            # dynamic: batches have different lengths (dynamic padding); without it every length recompiles
            self.model = torch.compile(self.model, dynamic=True)
        self.model, self.optimizer, self.train_loader, self.val_loader = self.acc.prepare(
            self.model, self.optimizer, self.train_loader, self.val_loader)
        if saved is not None:
            self._restore(saved)

    def _setup_data(self, saved) -> None:
        """The split, the label set, the test set checked, the tokenizer, datasets and loaders: every
        data error surfaces here, before the weights are read."""
        cfg = self.cfg
        self.data = load_split(cfg.data, split_seed(cfg.data, cfg.seed))
        names = self.data.label_names
        if self.data.named_ids:
            # the dataset's ClassLabel named the ids: config.yaml records them, so that evaluate reads a
            # file's integer labels as those ids, and the run reproduces without the dataset's metadata
            cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"label_names": list(names)})})
        # adapter.r: auto becomes a number here, so config.yaml records the rank that trained
        self.cfg, note = resolve_rank(cfg, names)
        cfg = self.cfg
        if note:
            self.log(note)
        if saved is not None:
            checkpoint.check_labels(saved, names, cfg.data.train)
        # the test set is checked now (labels, columns), not after hours of training
        self.test = load_labelled(cfg.data.test, cfg.data, cfg.data.test_split, names, "data.test")[0] if cfg.data.test else None
        weights = imbalance.class_weights(cfg.train.class_weights, self.data.train.labels, names,
                                          cfg.data.task)  # names checked now
        self.class_weights = None if weights is None else weights.to(self.acc.device)
        self._check_budget(names)  # before any heavy work: tokenising, loading weights
        self.tokenizer = load_tokenizer(cfg.model)
        if self.tokenizer.pad_token_id is None:
            raise LorafitError(f"model.name: the tokenizer of {cfg.model.name} has no pad token")
        check_max_length(cfg.model, cfg.data.max_length, self.tokenizer)  # before tokenising, before the run dir
        self.train_ds = self._dataset(self.data.train, augment=True, split="train")
        self.val_ds = self._dataset(self.data.val, split="validation")
        self.test_ds = self._dataset(self.test, split="test") if self.test is not None else None
        self.train_loader = self._loader(self.train_ds, cfg.train.batch_size, shuffle=True)
        self.val_loader = self._loader(self.val_ds, cfg.train.eval_batch_size, shuffle=False)

    def _setup_model(self, saved) -> None:
        """The model with its head and adapter, counted against the budget, its optimizer and schedule; a
        resumed run (`saved`) keeps the base dtype its checkpoint recorded."""
        cfg, names = self.cfg, self.data.label_names
        self.steps_per_epoch = math.ceil(len(self.train_loader) / cfg.train.grad_accum)
        self.total_steps = cfg.train.max_steps or max(1, int(math.ceil(self.steps_per_epoch * cfg.train.epochs)))
        self.log_every = header.log_interval(cfg.train.log_every, self.total_steps)
        self.model, self.plan = build_model(cfg, names, total_steps=self.total_steps)
        tokens = cfg.train.batch_size * cfg.data.max_length // 2  # dynamic padding: about half the longest
        decided = base_dtype.decide_for_run(self.model, cfg.model.dtype, self.acc, tokens,
                                              saved.meta if saved is not None else None)
        self.base_dtype = str(decided[0]).removeprefix("torch.")  # recorded in checkpoints: a resume keeps it
        self.dtype_hooks, note = base_dtype.apply(self.model, cfg.model.dtype, self.acc.device, tokens, decided)
        self.log(note)
        if tasks.task_of(cfg).problem_type:  # in the saved classifier config too: a plain reload knows the task
            self.model.config.problem_type = tasks.task_of(cfg).problem_type
        # PiSSA/OLoRA changed the base weights; their starting A/B let the saved adapter be plain LoRA
        self.lora_init = initial_lora(self.model) if cfg.adapter.init in ("pissa", "olora") else None
        self.rows = trainable_rows(self.model)
        self.n_params = count_all(self.model)
        check_budget(self.rows, cfg.budget.max_trainable)
        self.optimizer = build_optimizer(self.model, cfg.optim, self.plan.train_full)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, self.total_steps, self.steps_per_epoch)

    def _restore(self, saved) -> None:
        """Continue from a checkpoint: the last step of setup, as it also restores the RNG states."""
        self.position = checkpoint.restore(self, saved)
        st = self.state
        self._saved_step, self._saved_kept = st.step, {s for _, s in st.kept}
        where = ("training had ended; finishing the run" if st.finished else
                 f"epoch {self.position.epoch + 1}, {self.position.batches} batch(es) into it")
        self.log(f"resumed from step {st.step} ({where}) of {self.run_dir}")

    def forward(self, batch: dict) -> torch.Tensor:
        """Logits of a batch; with the prefix cache, its states stand in for embeddings + frozen layers."""
        hidden = batch.pop("prefix_hidden", None)
        if hidden is not None:
            self.prefix.feed(hidden)
        return self.model(**batch).logits

    def _check_budget(self, names: list[str]) -> None:
        """Build on the meta device from config.json alone: checks targets, layers and the budget
        before any weights are read."""
        from ..model import budget_table

        rows, _ = budget_table(self.cfg, names)
        check_budget(rows, self.cfg.budget.max_trainable)

    def _dataset(self, ex, augment: bool = False, split: Optional[str] = None) -> TokenDataset:
        """split: named in the run log's note of how many texts were cut to max_length."""
        cfg = self.cfg.data
        enc = Encoding.of(cfg)
        ids, types, truncated = encode(self.tokenizer, ex.texts, enc, ex.pairs)
        note = truncation_note(truncated, len(ids), enc, ex.pairs is not None, split) if split else None
        if note:
            self.data.notes.append(note)  # logged with the other data notes (header.py)
        p = cfg.shuffle_sentences_p if augment else 0.0
        return TokenDataset(ids, ex.labels, texts=ex.texts, tokenizer=self.tokenizer, max_length=cfg.max_length,
                            shuffle_p=p, seed=self.cfg.seed, types=types, pairs=ex.pairs, encoding=enc)

    def _loader(self, ds: TokenDataset, batch_size: int, *, shuffle: bool):
        t, grouped = self.cfg.train, self.cfg.speed.resolved("group_by_length")
        return make_loader(ds, batch_size, self.tokenizer.pad_token_id, shuffle=shuffle,
                           group_by_length=grouped, seed=self.cfg.seed, num_workers=t.num_workers,
                           batches=imbalance.train_batches(ds, batch_size, t, self.cfg.seed, grouped) if shuffle else None)

    # ------------------------------------------------------------------ train
    def record(self, **row) -> None:
        if self.acc.is_main_process:
            with (self.run_dir / "metrics.jsonl").open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            if self.tracking is not None:
                self.tracking.log_row(row)

    def loss_fn(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return tasks.task_of(self.cfg).loss(logits, labels, self.cfg.train.label_smoothing, self.class_weights)

    def train(self) -> "Recipe":
        cfg, st = self.cfg.train, self.state
        if st.finished:
            return self  # resumed after the loop had ended (a crash in finish): only finish() remains
        n_epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        bar = progress(total=self._samples(self.total_steps), initial=self._samples(st.step), desc="training",
                       unit=" samples", disable=not self.acc.is_main_process)
        self.training = True
        try:  # closed on error too, so an error message starts on a line of its own
            pos = self.position
            for epoch in range(pos.epoch, n_epochs):
                stop = self.train_epoch(pos if pos.epoch == epoch else Position(epoch), bar)
                st.finished = stop or st.step >= self.total_steps
                self.save_checkpoint(Position(epoch + 1))
                if self._stop_requested(epoch_end=True):
                    raise self._interrupted()
                if st.finished:
                    break
        finally:
            self.training = False
            bar.close()
        return self

    def _samples(self, steps: int) -> int:
        """Training items in the first `steps` optimizer steps: an epoch's last batch may be short, so the
        progress total is not steps x batch size (that ended at 300/320)."""
        per_step = self.cfg.train.batch_size * self.cfg.train.grad_accum
        full, rest = divmod(steps, self.steps_per_epoch)
        return full * len(self.train_ds) + min(rest * per_step, len(self.train_ds))

    def _stop_requested(self, epoch_end: bool = False) -> bool:
        """A signal arrived. Under DDP every process must stop at the same step (the checkpoint is
        collective), so they agree by an all-reduce, only at log steps and epoch ends: the device
        sync of one per step would cost more than a prompt stop is worth."""
        if self.acc.num_processes == 1:
            return self.stop_signal is not None
        if not epoch_end and self.state.step % self.log_every:
            return False
        flag = torch.tensor(float(self.stop_signal is not None), device=self.acc.device)
        return bool(self.acc.reduce(flag, reduction="sum").item())

    def _interrupted(self) -> Interrupted:
        return Interrupted(f"interrupted at step {self.state.step}; resume with: "
                           f"lorafit train --resume {shlex.quote(str(self.run_dir))}")

    def train_epoch(self, pos: Position, bar) -> bool:
        """One epoch from `pos` (its start, or where a resumed run stopped); True when early stopping fires."""
        cfg, st, epoch = self.cfg.train, self.state, pos.epoch
        eval_steps = cfg.eval_every if isinstance(cfg.eval_every, int) else None
        st.epoch = epoch
        self._set_epoch(epoch, skip=pos.batches)  # resumed mid-epoch: same order, trained batches left out
        self.model.train()
        # loss*n, correct, n
        sums = pos.sums.to(self.acc.device) if pos.sums is not None else torch.zeros(3, device=self.acc.device)
        t0, seen, batches, stop = time.perf_counter(), pos.seen, pos.batches, False
        self._clock(running=True)
        for batch in self.train_loader:
            batches += 1
            with self.acc.accumulate(self.model):
                labels = batch.pop("labels")
                logits = self.forward(batch)
                loss = self.loss_fn(logits, labels)
                if not torch.isfinite(loss):
                    raise TrainingDiverged(f"loss became {loss.item()} at step {st.step + 1} (epoch {epoch + 1}); "
                                           f"{self.divergence_hint()}")
                self.acc.backward(loss)
                self._optimizer_step(self.scheduler, st.step + 1)
            n = labels.shape[0]
            sums += torch.stack([loss.detach() * n, tasks.task_of(self.cfg).batch_score(logits.detach(), labels),
                                 torch.tensor(float(n), device=sums.device)])
            seen += n
            bar.update(n * self.acc.num_processes)
            if not self.acc.sync_gradients:
                continue
            st.step += 1
            if st.step % self.log_every == 0:
                self.record(type="train", step=st.step, epoch=round(st.step / self.steps_per_epoch, 4),
                            loss=round(loss.item(), 6), lr=self.scheduler.get_last_lr()[0], grad_norm=self._grad_norm(),
                            samples_per_s=round(seen * self.acc.num_processes / (time.perf_counter() - t0), 2))
            if eval_steps and st.step % eval_steps == 0 and st.step < self.total_steps:
                stop = evaluation.evaluate_and_keep(self)
                self._clock(running=True)
            if stop or st.step >= self.total_steps:
                break
            if not self.acc.gradient_state.end_of_dataloader and self._stop_requested():  # else the epoch's end does it
                self.save_checkpoint(Position(epoch, batches, seen, sums))
                raise self._interrupted()
            if (cfg.checkpoint_every and st.step % cfg.checkpoint_every == 0
                    and not self.acc.gradient_state.end_of_dataloader):  # the epoch's end saves its own
                self.save_checkpoint(Position(epoch, batches, seen, sums))
        self._clock(running=False)  # the steps since the last evaluation count; the epoch's end does not
        tot = self.acc.reduce(sums, reduction="sum")
        self.record(type="epoch", epoch=epoch + 1, step=st.step, train_loss=(tot[0] / tot[2]).item(),
                    **tasks.task_of(self.cfg).train_scores(tot[1], tot[2]),
                    samples_per_s=round(seen * self.acc.num_processes / (time.perf_counter() - t0), 2))
        if not stop and (eval_steps is None or st.step >= self.total_steps):
            stop = evaluation.evaluate_and_keep(self)
        return stop

    def save_checkpoint(self, pos: Position) -> None:
        """A resumable checkpoint at `pos`; then the top-k folders it no longer refers to can go."""
        if self._segment is not None:
            self._clock(running=True)  # fold the running segment into train_seconds, which the checkpoint keeps
        checkpoint.save(self, pos)
        self._saved_step, self._saved_kept = self.state.step, {s for _, s in self.state.kept}
        if self.acc.is_main_process:
            for d in (self.run_dir / "checkpoints").glob("step-*"):
                if d.name.removeprefix("step-").isdigit() and int(d.name.removeprefix("step-")) not in self._saved_kept:
                    shutil.rmtree(d, ignore_errors=True)

    def divergence_hint(self) -> str:
        causes = [f"the learning rate is too high (optim.lr={self.cfg.optim.lr})"]
        if self.acc.mixed_precision == "fp16":
            causes.append("fp16 overflow (set train.precision: bf16 or no)")
        kept = (f"the last good checkpoint (step {self._saved_step}) is kept in {self.run_dir / checkpoint.RESUME}"
                if self._saved_step is not None else "no checkpoint had been written yet")
        return f"likely cause: {' or '.join(causes)}; {kept}"

    def _clock(self, running: bool) -> None:
        """Start or stop the training clock: `train_seconds` (what time-to-accuracy and the benches
        read) counts training steps and mid-epoch checkpoints, not evaluations or epoch ends."""
        now = time.perf_counter()
        if self._segment is not None:
            self.train_seconds += now - self._segment
        self._segment = now if running else None

    def _set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.train_ds.epoch = epoch
        # accelerate's loader re-applies its own pass count as the epoch at each pass: keep it in step
        if hasattr(self.train_loader, "set_epoch"):
            self.train_loader.set_epoch(epoch)
        sampler = getattr(self.train_loader, "batch_sampler", None)
        inner = getattr(sampler, "batch_sampler", sampler)  # accelerate wraps ours in a shard
        if hasattr(inner, "set_epoch"):
            inner.set_epoch(epoch)
        if hasattr(inner, "skip_next"):
            inner.skip_next(skip)

    def _optimizer_step(self, scheduler, step: int | None = None) -> None:
        """Inside acc.accumulate, after backward: clip, step, schedule, `_after_step(step)` (the main
        loop's), zero the gradients, trim the heap; all but step and zero_grad only on syncing steps."""
        sync = self.acc.sync_gradients
        if sync and self.cfg.train.max_grad_norm:
            self.grad_norm = self.acc.clip_grad_norm_(self.model.parameters(), self.cfg.train.max_grad_norm)
        self.optimizer.step()
        if sync:
            scheduler.step()
            if step is not None:
                self._after_step(step)  # before zero_grad: AdaLoRA reads the gradients
        self.optimizer.zero_grad(set_to_none=True)
        if sync:
            self.trim_heap()  # after zero_grad: the gradients' pages go back too

    def _grad_norm(self) -> float | None:
        """The last step's total gradient norm before clipping (None without train.max_grad_norm)."""
        norm = getattr(self, "grad_norm", None)
        return None if norm is None else round(float(norm), 6)

    def _after_step(self, step: int) -> None:
        """AdaLoRA re-allocates ranks after each optimizer step (PEFT's documented loop)."""
        if self.cfg.adapter.method == "adalora":
            self.acc.unwrap_model(self.model).base_model.update_and_allocate(step)

    # ------------------------------------------------------------------ finish
    def finish(self) -> dict:
        """The best weights back, the final metrics, calibration and the run's files (train/finish.py)."""
        return finish_run(self)

    def cleanup(self) -> None:
        """Drop the prefix cache's temporary files; safe to call after an interrupted run."""
        tracking.stopped(self)  # trackers of a run that did not finish end as KILLED / FAILED
        if self.prefix is not None:
            self.prefix.close()
