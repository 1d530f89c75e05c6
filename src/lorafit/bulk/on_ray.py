"""Batch prediction on a Ray cluster: Ray Data's `map_batches` over an actor pool, each actor one
RowPredictor (the engine, its runs loaded once per actor), the field's convention for batch inference
that streams with bounded memory.

Two entry points. `predict_dataset` adds lorafit's prediction columns to a Ray Dataset the user already
has. `lorafit predict --ray ADDRESS` (cluster.py starts or joins the cluster, ray_stream.py runs the
chunks of local predict there) gives the same file as local predict.

Ray is an optional dependency (`lorafit[ray]`): this module is imported only when --ray is given or by a
user of predict_dataset, and `import_ray` turns its absence into one line.
"""
from __future__ import annotations

from typing import Optional, Sequence

import pandas as pd

from ..errors import LorafitError
from .cluster import import_ray
from .rows import PredictOptions, RowPredictor

CPUS_PER_ACTOR = 4  # a CPU actor's torch threads: more per actor gain little on small encoders' batches


class _Append:
    """The actor's callable: the batch's `keep` columns (all when None), then RowPredictor's columns
    for its rows. A class, so Ray builds it once per actor and the runs load once there."""

    def __init__(self, predictor: RowPredictor, keep: Optional[Sequence[str]]):
        self.predictor, self.keep = predictor, keep

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        batch = batch.reset_index(drop=True)
        out = self.predictor(batch)
        kept = batch if self.keep is None else batch[[c for c in self.keep if c in batch.columns]]
        _check_names(list(kept.columns), list(out.columns))
        return pd.concat([kept, out], axis=1)


def _check_names(have: list, added: list) -> None:
    clash = [c for c in added if c in have]
    if clash:
        raise LorafitError(f"the dataset already has a column '{clash[0]}', which predict would add; rename or drop "
                           "it first (Dataset.rename_columns / drop_columns)")


def resources(ray, concurrency: Optional[int], num_gpus_per_actor: Optional[float]) -> dict:
    """map_batches' compute and per-actor resources: one actor per GPU where the cluster has GPUs, else one
    per CPUS_PER_ACTOR CPUs (at least one)."""
    total = ray.cluster_resources()
    gpus, cpus = int(total.get("GPU", 0)), int(total.get("CPU", 1))
    if num_gpus_per_actor is None:
        num_gpus_per_actor = 1 if gpus else 0
    if num_gpus_per_actor:
        n = concurrency or max(1, int(gpus // num_gpus_per_actor))
        return {"compute": ray.data.ActorPoolStrategy(size=n), "num_gpus": num_gpus_per_actor, "num_cpus": 1}
    n = concurrency or max(1, cpus // CPUS_PER_ACTOR)
    return {"compute": ray.data.ActorPoolStrategy(size=n), "num_cpus": max(1, cpus // n)}


def predict_dataset(ds, run_dirs: Sequence[str] | str, opts: Optional[PredictOptions] = None, *,
                    concurrency: Optional[int] = None, num_gpus_per_actor: Optional[float] = None,
                    batch_size: Optional[int] = 4096, keep: Optional[Sequence[str]] = None):
    """ds (a ray.data.Dataset) with lorafit's prediction columns added after its own: `label` (one run) or
    `label_<run>` per run, and with opts.with_logits / opts.probs the logit_/prob_ columns, as local predict
    writes them. Lazy, as Ray Datasets are: nothing runs until it is consumed (write_parquet, iter_batches).

    run_dirs: run folders that every node can read (shared storage), as can the base models they name.
    concurrency: actors (default: one per GPU, else one per 4 CPUs of the cluster); num_gpus_per_actor:
    default 1 where the cluster has GPUs, else 0. batch_size: rows handed to an actor at a time (sorted by
    length within them, so larger pads less). keep: the input columns to keep (default all).

        import ray
        from lorafit.bulk import PredictOptions
        from lorafit.bulk.on_ray import predict_dataset

        ds = ray.data.read_parquet("s3://bucket/tickets/")
        predict_dataset(ds, ["/shared/runs/topic"], PredictOptions(probs=True)).write_parquet("s3://bucket/out/")
    """
    ray = import_ray()
    predictor = RowPredictor(run_dirs, opts or PredictOptions())
    added = predictor.columns()  # a bad run folder or option is refused here, before any actor starts
    schema = ds.schema(fetch_if_missing=False)  # known without running anything (a Parquet file's), or None
    if schema is not None:
        _check_names(list(schema.names), added)
    return ds.map_batches(_Append, fn_constructor_args=(predictor, None if keep is None else list(keep)),
                          batch_format="pandas", batch_size=batch_size,
                          **resources(ray, concurrency, num_gpus_per_actor))
