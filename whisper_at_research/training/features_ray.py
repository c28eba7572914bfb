"""Feature extraction on a Ray cluster: the same store as ``extract_features``, its shards
written by an actor pool (``whisper-at features extract ... --ray``, docs/scale.md).

The driver plans the store (manifest, labels, views), writes ``meta.json`` and lists the
shards still missing; each Ray worker loads Whisper once, makes the same plan and writes
whole shards with :func:`~whisper_at_research.training.features.write_shard`, the writer
``extract_features`` uses, so the trainer reads the result as any store. A shard is
written atomically and a retried one that is already there is not redone; a stopped job
resumes where it was, on Ray or on one machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import torch
from tqdm import tqdm

from whisper_at.batch import ClusterOptions, connect
from whisper_at.labels import LabelSet, audioset_labels
from whisper_at.tap import install_tap
from whisper_at.weights import load_whisper

from .augment import AugmentConfig
from .features import (
    DEFAULT_SHARD_SIZE,
    ExtractionReport,
    FeatureStoreError,
    close_store,
    open_store,
    plan_extraction,
    shard_done,
    store_meta,
    write_shard,
)


@dataclass(frozen=True)
class StoreSpec:
    """Everything a worker needs to write any shard of the store."""

    model: str
    manifest: str
    out_dir: str
    labels: LabelSet
    shard_size: int
    batch_size: int
    whisper_sha256: str  # the driver's weights: a worker with others refuses to write
    augment: AugmentConfig | None = None
    download_root: str | None = None


class ShardWorker:
    """One Whisper on one Ray worker, writing the shards it is handed."""

    def __init__(self, spec: StoreSpec) -> None:
        self.spec = spec
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.loaded = load_whisper(spec.model, device=device, download_root=spec.download_root)
        if self.loaded.sha256 != spec.whisper_sha256:
            raise FeatureStoreError(
                f"{spec.model} on this worker ({self.loaded.sha256[:12]}) is not the driver's "
                f"({spec.whisper_sha256[:12]}): install the same weights on every node"
            )
        self.tap = install_tap(self.loaded.model)
        self.plan = plan_extraction(spec.manifest, spec.labels, spec.shard_size, spec.augment)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out = Path(self.spec.out_dir)
        passes = []
        for shard in batch["shard"].tolist():
            before = self.tap.n_passes
            if not shard_done(out, shard):  # a retry after the shard was written
                bar = tqdm(disable=True)
                write_shard(self.loaded, self.tap, self.plan, shard, out, self.spec.batch_size, bar)
                self.tap.forget()
            passes.append(self.tap.n_passes - before)
        return {"shard": batch["shard"].tolist(), "encoder_passes": passes}


def extract_features_ray(
    model_name: str | os.PathLike,
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    batch_size: int = 8,
    labels: LabelSet | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    download_root: str | None = None,
    augment: AugmentConfig | None = None,
    cluster: ClusterOptions | None = None,
) -> ExtractionReport:
    """``extract_features`` with the shards spread over ``cluster.num_workers`` Ray actors
    (one Whisper each). The driver loads Whisper too, for the store's meta (its SHA-256
    and sizes); every worker must find the same weights."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cluster = cluster or ClusterOptions()
    labels = labels or audioset_labels()
    plan = plan_extraction(manifest, labels, shard_size, augment)
    loaded = load_whisper(model_name, device="cpu", download_root=download_root)
    meta = store_meta(plan, loaded, manifest, labels, augment)
    out = Path(out_dir)
    todo = open_store(out, meta)
    spec = StoreSpec(
        model=str(model_name),
        manifest=str(Path(manifest).resolve()),
        out_dir=str(out.resolve()),
        labels=labels,
        shard_size=shard_size,
        batch_size=batch_size,
        whisper_sha256=loaded.sha256,
        augment=augment,
        download_root=download_root,
    )
    del loaded
    passes = 0
    if todo:
        started = connect(cluster)
        try:
            items = [{"shard": s} for s in todo]
            shards = ray.data.from_items(items, override_num_blocks=len(todo))
            written = shards.map_batches(
                ShardWorker,
                batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=cluster.num_workers),
                fn_constructor_kwargs={"spec": spec},
                num_cpus=cluster.cpus_per_worker,
                num_gpus=cluster.gpus_per_worker,
            )
            passes = sum(int(row["encoder_passes"]) for row in written.iter_rows())
        finally:
            if started:
                ray.shutdown()
    missing = [s for s in range(plan.n_shards) if not shard_done(out, s)]
    if missing:
        raise FeatureStoreError(f"{out}: shards {missing} were not written; run again to resume")
    close_store(out, meta)
    return ExtractionReport.of(out, plan, len(todo), passes)
