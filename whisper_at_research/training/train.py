"""Train a tagging head on a feature store, with the Whisper-AT recipe.

Recipe (paper, section "Training recipe"): Adam (betas 0.95, 0.999), weight decay
5e-7, lr 1e-4 (5e-5 for TL-TR heads on medium/large Whisper, i.e. 24+ layers),
batch 48, BCE with label smoothing 0.1 (positives 0.9, negatives 0.1 / n_classes),
mixup with probability 0.5 on the features (lambda ~ Beta(10, 10), targets mixed
alike), one time mask of up to 10 pooled frames per clip, class-balanced sampling
(clip weight = sum over its labels of 1000 / (class count + 0.01); clips without
any label count as one more class), lr x0.75 every 5 epochs from epoch 15, and the
weights of the last epochs averaged. For runs shorter than the paper's 30 epochs
the schedule is scaled: decay starts at round(epochs / 2) and steps every
round(epochs / 6) epochs (at least 1); by default the epochs after the decay start
are averaged (15 of 30 in the paper's setting).

Beyond the paper, ``crop_seconds`` also trains on short crops of the clips, labelled
from where the corpus builder placed each recording (the manifest's events): the 10 s
labels say a clip holds speech, not which of its bins do, and a head trained on them
alone tags the silence next to a sentence as speech, because Whisper's encoder spreads
what it heard over the whole window. The runtime's event track reads 2 s windows
(docs/events.md), so crops of that length teach the head what such a window holds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import WeightedRandomSampler
from tqdm import tqdm

from whisper_at.heads import HEAD_TYPES, HeadConfig, TaggingHead, save_head
from whisper_at.tagging import BIN_SECONDS, bins_per_window

from .augment import view_base_id
from .features import ENCODER_INPUT_SECONDS, FeatureSet, FeatureStoreError, load_features
from .manifest import PlacedEvent, placed_events
from .metrics import tagging_metrics
from .source_split import SPLIT_SCHEMES, with_scheme

logger = logging.getLogger("whisper_at")

PAPER_EPOCHS = 30
PAPER_DECAY_START = 15
PAPER_DECAY_STEP = 5


@dataclass
class TrainOptions:
    head_type: str = "tl_tr"
    proj_dim: int | None = None  # tl_tr_low width (512 in the paper)
    layers: int | None = None  # read only the first encoder blocks (tags-only stops there)
    epochs: int = 30
    lr: float | None = None  # None: the paper's choice for the head and Whisper size
    batch_size: int = 48
    seed: int = 0
    weight_decay: float = 5e-7
    betas: tuple[float, float] = (0.95, 0.999)
    label_smoothing: float = 0.1
    mixup: float = 0.5  # probability that a clip is mixed with another
    mixup_alpha: float = 10.0  # lambda ~ Beta(alpha, alpha)
    time_mask: int = 10  # longest time mask, in pooled 0.4 s frames
    balanced_sampling: bool = True
    lr_decay: float = 0.75
    lr_decay_start: int | None = None  # epoch after which the lr first decays
    lr_decay_step: int | None = None
    average_last: int | None = None  # average the weights of the last K epochs
    valid_fraction: float = 0.1  # held out from train (by recording) when there is no valid split
    split_scheme: str = "recording"  # "source": train without the held-out source packages
    # "source" with these packages instead of the store's rule, e.g. another build's set, so
    # heads trained on different corpora are judged on the same unseen packages
    held_out_sources: tuple[str, ...] | None = None
    augmented: tuple[str, ...] = ()  # views stores (features extract --augment) added to train
    crop_seconds: float | None = None  # also train on crops this long, with strong targets
    crop_batches: float = 0.5  # the share of batches made of crops (with crop_seconds)
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.head_type not in HEAD_TYPES:
            raise ValueError(f"unknown head type {self.head_type!r}; choose from {HEAD_TYPES}")
        if self.head_type == "tl_tr_low" and not self.proj_dim:
            self.proj_dim = 512
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if not 0 <= self.mixup <= 1 or not 0 <= self.label_smoothing < 1:
            raise ValueError("mixup must be in [0, 1] and label_smoothing in [0, 1)")
        if self.average_last is not None and not 1 <= self.average_last <= self.epochs:
            raise ValueError(f"average_last must be in 1..epochs ({self.epochs})")
        if not 0 <= self.valid_fraction < 1:
            raise ValueError("valid_fraction must be in [0, 1)")
        if self.split_scheme not in SPLIT_SCHEMES:
            raise ValueError(f"split_scheme must be one of {SPLIT_SCHEMES}")
        if self.held_out_sources is not None and self.split_scheme != "source":
            raise ValueError('held_out_sources needs split_scheme="source"')
        if self.crop_seconds is not None:
            try:
                bins_per_window(self.crop_seconds)
            except ValueError:
                raise ValueError(f"crop_seconds must be a multiple of {BIN_SECONDS} s") from None
            if not 0 < self.crop_batches <= 1:
                raise ValueError("crop_batches must be in (0, 1]")

    @property
    def crop_bins(self) -> int:
        """Pooled 0.4 s bins per crop (0: no crops)."""
        return 0 if self.crop_seconds is None else bins_per_window(self.crop_seconds)


def lr_schedule(epochs: int, start: int | None = None, step: int | None = None) -> tuple[int, int]:
    """(decay start, decay step) in epochs: the paper's 15/5 for 30+ epochs, scaled below."""
    if start is None:
        start = PAPER_DECAY_START if epochs >= PAPER_EPOCHS else max(1, round(epochs / 2))
    if step is None:
        step = PAPER_DECAY_STEP if epochs >= PAPER_EPOCHS else max(1, round(epochs / 6))
    if start < 0 or step < 1:
        raise ValueError("lr decay start must be >= 0 and step >= 1")
    return start, step


def lr_factor(epoch: int, start: int, step: int, decay: float) -> float:
    """lr multiplier for 1-based ``epoch``: decays after epochs start, start + step, ..."""
    if epoch <= start:
        return 1.0
    return decay ** ((epoch - 1 - start) // step + 1)


def default_lr(head_type: str, n_layer: int) -> float:
    return 5e-5 if head_type in ("tl_tr", "tl_tr_low") and n_layer >= 24 else 1e-4


def sample_weights(targets: torch.Tensor) -> torch.Tensor:
    """Class-balanced clip weights: sum over a clip's labels of 1000 / (class count + 0.01).

    Clips without any label (negatives of a custom label set) form one more class.
    """
    y = targets.float()
    counts = y.sum(dim=0)
    weights = (y * (1000.0 / (counts + 0.01))).sum(dim=1)
    unlabeled = y.sum(dim=1) == 0
    if unlabeled.any():
        weights[unlabeled] = 1000.0 / (float(unlabeled.sum()) + 0.01)
    return weights.double()


def bin_targets(events: list[PlacedEvent], n_bins: int, n_classes: int) -> torch.Tensor:
    """``[n_bins, n_classes]`` bool: the classes heard in each 0.4 s bin of a clip.

    A bin carries an event's classes when the event covers half of it, or half of the
    event when the event is shorter than a bin (a click must still count).
    """
    targets = torch.zeros(n_bins, n_classes, dtype=torch.bool)
    for start, end, classes in events:
        needed = min(BIN_SECONDS, end - start) / 2
        first = max(0, math.floor(start / BIN_SECONDS))
        for b in range(first, min(n_bins, math.ceil(end / BIN_SECONDS))):
            overlap = min(end, (b + 1) * BIN_SECONDS) - max(start, b * BIN_SECONDS)
            if overlap >= needed - 1e-9:  # exactly half counts, whatever the rounding
                targets[b, list(classes)] = True
    return targets


def strong_targets(data: FeatureSet) -> torch.Tensor:
    """``[n_clips, bins, n_classes]`` bool :func:`bin_targets` of every clip, from the
    manifest the store was extracted from. A view takes its clip's; a class of the clip's
    labels that no placed event carries (speech an augmentation laid over a view) is
    marked on every bin."""
    manifest = data.meta.get("manifest")
    if not data.labels.is_audioset:
        raise FeatureStoreError("crop training needs the AudioSet label set of a corpus build")
    if not manifest or not Path(manifest).is_file():
        raise FeatureStoreError(
            f"crop training reads the placed events of the store's manifest, {manifest!r}, "
            "which is not there"
        )
    base_ids = [view_base_id(i) for i in data.ids]
    events = placed_events(manifest, sorted(set(base_ids)))
    n_bins, n_classes = data.features.shape[2], data.targets.shape[1]
    per_clip = {i: bin_targets(e, n_bins, n_classes) for i, e in events.items()}
    strong = torch.stack([per_clip[i] for i in base_ids])
    unplaced = (data.targets > 0) & ~strong.any(dim=1)
    return strong | unplaced[:, None, :]


def crop(
    x: torch.Tensor, strong: torch.Tensor, bins: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random ``bins``-long crop of every clip of a batch, with the classes heard in it."""
    starts = rng.integers(0, x.shape[2] - bins + 1, x.shape[0])
    xs = torch.stack([clip[:, s : s + bins] for clip, s in zip(x, starts, strict=True)])
    ys = torch.stack([t[s : s + bins].any(dim=0) for t, s in zip(strong, starts, strict=True)])
    return xs, ys.float()


def augment(
    x: torch.Tensor,
    y: torch.Tensor,
    opts: TrainOptions,
    rng: np.random.Generator,
    time_mask: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Label smoothing, mixup and time masking of one batch (x float [b, L, T, d]); crops
    are not masked (a mask could hide the only bins their targets come from)."""
    b, _, t, _ = x.shape
    n_classes = y.shape[1]
    eps = opts.label_smoothing
    y = y * (1.0 - eps) + (1.0 - y) * (eps / n_classes)
    if opts.mixup > 0 and b > 1:
        mixed = torch.from_numpy(rng.random(b) < opts.mixup)
        partner = torch.from_numpy(rng.permutation(b))
        lam = torch.from_numpy(rng.beta(opts.mixup_alpha, opts.mixup_alpha, b)).float()
        lam = torch.where(mixed, lam, torch.ones_like(lam))
        x = lam[:, None, None, None] * x + (1 - lam[:, None, None, None]) * x[partner]
        y = lam[:, None] * y + (1 - lam[:, None]) * y[partner]
    if time_mask and opts.time_mask > 0:
        width = torch.from_numpy(rng.integers(0, min(opts.time_mask, t) + 1, b))
        start = torch.from_numpy(np.floor(rng.random(b) * (t - width.numpy() + 1)).astype(int))
        frames = torch.arange(t)[None]
        keep = ~((frames >= start[:, None]) & (frames < (start + width)[:, None]))
        x = x * keep[:, None, :, None].to(x.dtype)
    return x, y


def add_views(
    train: FeatureSet, views_dirs: tuple[str, ...] | list[str], held_out: tuple[str, ...] = ()
) -> tuple[FeatureSet, list[dict]]:
    """``train`` plus the views (of views stores) made from its clips; and each store's config.

    A view is kept when the clip it was made from is in ``train`` and none of its packages
    (a bed or speech partner's included) is held out, so the held-out-source split stays
    clean whatever manifest the views were made from.
    """
    ids = set(train.ids)
    held = set(held_out)
    parts, configs = [train], []
    for path in views_dirs:
        views = load_features(path)
        meta = views.meta
        if not meta.get("augment"):
            raise FeatureStoreError(f"{path} is not a views store (made without --augment)")
        for key in ("whisper_sha256", "label_ids", "n_layer", "d_model"):
            if meta.get(key) != train.meta.get(key):
                raise FeatureStoreError(
                    f"{path} was made with another {key.replace('_', ' ')} than the training "
                    "store; extract the views with the same Whisper and label set"
                )
        keep = [
            i
            for i, (vid, sources) in enumerate(zip(views.ids, views.sources or [], strict=False))
            if view_base_id(vid) in ids and not held & set(sources)
        ]
        logger.info("%s: %d of %d views added to training", path, len(keep), len(views))
        parts.append(views.subset(keep))
        configs.append({"path": str(path), "n_views": len(keep), "augment": meta["augment"]})
    if len(parts) == 1:
        return train, configs
    return FeatureSet(
        features=torch.cat([p.features for p in parts]),
        targets=torch.cat([p.targets for p in parts]),
        ids=sum((p.ids for p in parts), []),
        splits=["train"] * sum(len(p) for p in parts),
        recordings=sum((p.recordings for p in parts), []),
        meta=train.meta,
        sources=sum((list(p.sources or []) for p in parts), []),
    ), configs


@dataclass
class TrainResult:
    head: TaggingHead
    path: Path
    curves: list[dict]
    metrics: dict[str, float]
    trained_classes: list[int]
    options: dict = field(default_factory=dict)
    saved: bool = True  # False on the ranks of a DDP run other than 0, which write nothing


@dataclass(frozen=True)
class Ranks:
    """This process's place in a DDP run (``torchrun --nproc-per-node N -m whisper_at
    train``), so that N processes train the head one process would, up to float order.

    Every rank draws the same global batch and the same augmentation (same seed, same
    sampler), computes the loss on its slice of the batch, and DDP averages the gradients.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # on its node: which GPU it takes

    @property
    def main(self) -> bool:
        return self.rank == 0

    def rows(self, n: int) -> slice:
        """This rank's rows of a global batch of ``n`` (as ``torch.tensor_split``)."""
        size, extra = divmod(n, self.world_size)
        start = self.rank * size + min(self.rank, extra)
        return slice(start, start + size + (self.rank < extra))

    def slice_loss(
        self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: str
    ) -> tuple[torch.Tensor, float]:
        """The loss to back-propagate on this rank, and the global batch's mean loss.

        Each rank's loss is its slice's BCE sum over the global batch's element count,
        times the number of ranks: DDP's gradient average then equals the gradient of
        the global batch's mean loss, whatever the slices' sizes.
        """
        rows, weight = self.rows(len(x)), 1.0
        if rows.start == rows.stop:  # fewer clips than ranks: one row, weighted 0, so
            rows, weight = slice(0, 1), 0.0  # that this rank still joins the gradient sync
        logits = model(x[rows].to(device))
        target = y[rows].to(device)
        total = F.binary_cross_entropy_with_logits(logits, target, reduction="sum") * weight
        elements = y.numel()
        summed = total.detach().clone()
        dist.all_reduce(summed)
        return total * (self.world_size / elements), float(summed) / elements


def join_process_group(device: str) -> tuple[Ranks, bool]:
    """The ranks torchrun's environment describes (``WORLD_SIZE``, ``RANK``, ...), with
    the process group started (gloo on the CPU, nccl on CUDA) unless it already is;
    and whether this call started it. One process: ``Ranks()``."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and not dist.is_initialized():
        return Ranks(), False
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if str(device).startswith("cuda") else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return Ranks(dist.get_rank(), dist.get_world_size(), local), started


def _split_valid(data: FeatureSet, fraction: float) -> tuple[FeatureSet, FeatureSet]:
    """Train and valid sets: the store's valid split, or train recordings held out."""
    train, valid = data.split("train"), data.split("valid")
    overlap = set(train.recordings) & set(valid.recordings)
    if overlap:
        logger.warning(
            "%d recordings have clips in both the train and valid splits (e.g. %s); "
            "validation scores will be optimistic",
            len(overlap),
            sorted(overlap)[0],
        )
    if len(valid) or fraction == 0:
        return train, valid
    recordings = sorted(set(train.recordings), key=lambda r: hashlib.sha256(r.encode()).hexdigest())
    n_hold = math.floor(fraction * len(recordings))
    if n_hold == 0:
        logger.warning("no valid split and too few recordings to hold some out: no validation")
        return train, valid
    held = set(recordings[:n_hold])
    logger.warning(
        "no valid split in the store: holding out %d of %d training recordings for validation",
        n_hold,
        len(recordings),
    )
    keep = [i for i, r in enumerate(train.recordings) if r not in held]
    hold = [i for i, r in enumerate(train.recordings) if r in held]
    return train.subset(keep), train.subset(hold)


@torch.no_grad()
def predict(head: TaggingHead, features: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits ``[n, n_classes]`` for fp16 features, batch by batch (float32 on the device)."""
    head.eval()
    device = next(head.parameters()).device
    out = [
        head(features[i : i + batch_size].to(device).float()).float().cpu()
        for i in range(0, features.shape[0], batch_size)
    ]
    if not out:
        return torch.zeros(0, head.config.n_classes)
    return torch.cat(out)


def _validate(head: TaggingHead, valid: FeatureSet, classes: list[int]) -> dict[str, float]:
    if len(valid) == 0:
        return {}
    logits = predict(head, valid.features)
    targets = valid.targets.float()
    loss = float(F.binary_cross_entropy_with_logits(logits, targets))
    with_pos = [c for c in classes if targets[:, c].sum() > 0]
    m = tagging_metrics(targets.numpy(), torch.sigmoid(logits).numpy(), with_pos)
    return {"valid_loss": loss, **m.summary()}


def _finite(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def train_head(
    features_dir: str | os.PathLike,
    head_type: str = "tl_tr",
    out: str | os.PathLike = "head.safetensors",
    epochs: int = 30,
    lr: float | None = None,
    batch_size: int = 48,
    seed: int = 0,
    **options,
) -> TrainResult:
    """Train a head on the train split of a feature store and save it to ``out``.

    Other options are the fields of :class:`TrainOptions` (proj_dim, average_last,
    mixup, time_mask, label_smoothing, balanced_sampling, lr_decay_start,
    lr_decay_step, valid_fraction, split_scheme, device, progress, ...). Also writes the
    training curves next to ``out`` (``<out>.curves.json`` and, with matplotlib, ``.png``).
    ``split_scheme="source"`` trains on the held-out-source split's train part (no clip of
    a held-out package) and records the held-out packages in the head's config.
    Started by ``torchrun --nproc-per-node N``, the N processes train one head with DDP
    (:class:`Ranks`): the same head as one process, up to float order; rank 0 writes it.
    """
    opts = TrainOptions(
        head_type=head_type, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, **options
    )
    ranks, started = join_process_group(opts.device)
    if ranks.world_size > 1 and opts.device == "cuda":  # one GPU per process
        opts = replace(opts, device=f"cuda:{ranks.local_rank}")
        torch.cuda.set_device(opts.device)
    level = logger.level
    if not ranks.main:  # only rank 0 logs, shows progress and writes files
        logger.setLevel(logging.ERROR)
        opts = replace(opts, progress=False)
    try:
        return _train(features_dir, opts, Path(out), ranks)
    finally:
        logger.setLevel(level)
        if started:
            dist.destroy_process_group()


def _train(
    features_dir: str | os.PathLike, opts: TrainOptions, out: Path, ranks: Ranks
) -> TrainResult:
    if opts.split_scheme == "source":
        data, source = with_scheme(
            load_features(features_dir), "source", opts.held_out_sources, absent_ok=True
        )
    else:
        data, source = load_features(features_dir, splits=["train", "valid"]), None
    meta = data.meta
    train, valid = _split_valid(data, opts.valid_fraction)
    if len(train) == 0:
        raise ValueError(f"{features_dir} has no training clips (split 'train')")
    n_clips = len(train)  # one epoch: this many samples, with or without views
    train, views = add_views(train, opts.augmented, source.held_out if source else ())
    trained = [int(c) for c in torch.nonzero(train.targets.sum(dim=0) > 0).flatten()]
    strong = strong_targets(train) if opts.crop_bins else None
    if not trained:
        raise ValueError("no training clip has a label: nothing to learn")
    lr = opts.lr if opts.lr is not None else default_lr(opts.head_type, meta["n_layer"])
    start, step = lr_schedule(opts.epochs, opts.lr_decay_start, opts.lr_decay_step)
    average_last = opts.average_last or max(1, opts.epochs - start)
    average_last = min(average_last, opts.epochs)

    torch.manual_seed(opts.seed)
    rng = np.random.default_rng(opts.seed)
    sampler_gen = torch.Generator().manual_seed(opts.seed)
    labels = data.labels
    config = HeadConfig(
        head_type=opts.head_type,
        n_layer=opts.layers or meta["n_layer"],
        encoder_layers=meta["n_layer"],
        d_model=meta["d_model"],
        label_names=list(labels.names),
        label_ids=list(labels.ids),
        proj_dim=opts.proj_dim if opts.head_type == "tl_tr_low" else None,
        whisper_name=meta["whisper_name"],
        whisper_sha256=meta["whisper_sha256"],
        trained_classes=trained,
        window_seconds=float(meta["window_seconds"]),
        encoder_input_seconds=float(meta.get("encoder_input_seconds", ENCODER_INPUT_SECONDS)),
        held_out_sources=list(source.held_out) if source else None,
        training=recipe(opts, lr, start, step, average_last, source.held_out if source else None),
    )
    if source:
        logger.info("held-out-source split: training without %s", ", ".join(source.held_out))
    head = TaggingHead(config).to(opts.device)
    if ranks.world_size == 1:
        model = head
    else:
        on_gpu = str(opts.device).startswith("cuda")
        model = DistributedDataParallel(head, device_ids=[opts.device] if on_gpu else None)
    optimizer = torch.optim.Adam(
        head.parameters(), lr=lr, betas=opts.betas, weight_decay=opts.weight_decay
    )
    if opts.balanced_sampling:
        weights = sample_weights(train.targets)
    else:
        weights = torch.ones(len(train), dtype=torch.double)
    sampler = WeightedRandomSampler(
        weights, num_samples=n_clips, replacement=True, generator=sampler_gen
    )
    logger.info(
        "training %s on %d clips (%d classes with data), %d valid clips; lr %g, decay x%g "
        "after epoch %d every %d, averaging the last %d epochs",
        opts.head_type,
        len(train),
        len(trained),
        len(valid),
        lr,
        opts.lr_decay,
        start,
        step,
        average_last,
    )
    curves: list[dict] = []
    averaged: dict[str, torch.Tensor] | None = None
    n_averaged = 0
    epoch_bar = tqdm(range(1, opts.epochs + 1), desc="epochs", disable=not opts.progress)
    for epoch in epoch_bar:
        began = time.monotonic()
        epoch_lr = lr * lr_factor(epoch, start, step, opts.lr_decay)
        for group in optimizer.param_groups:
            group["lr"] = epoch_lr
        head.train()
        order = torch.tensor(list(sampler), dtype=torch.long)
        losses = []
        batches = range(0, len(order), opts.batch_size)
        for b in tqdm(batches, desc=f"epoch {epoch}", leave=False, disable=not opts.progress):
            idx = order[b : b + opts.batch_size]
            x = train.features[idx].float()
            y = train.targets[idx].float()
            # the global batch: the same draws on every rank
            if strong is not None and rng.random() < opts.crop_batches:
                x, y = crop(x, strong[idx], opts.crop_bins, rng)
                x, y = augment(x, y, opts, rng, time_mask=False)
            else:
                x, y = augment(x, y, opts, rng)
            if ranks.world_size == 1:
                logits = head(x.to(opts.device))
                loss = F.binary_cross_entropy_with_logits(logits, y.to(opts.device))
                batch_loss = loss.item()
            else:
                loss, batch_loss = ranks.slice_loss(model, x, y, opts.device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(batch_loss)
        row = {"epoch": epoch, "lr": epoch_lr, "train_loss": float(np.mean(losses))}
        row["steps"] = len(losses)
        if ranks.main:
            row.update(_validate(head, valid, trained))
        row["seconds"] = round(time.monotonic() - began, 3)
        curves.append(_finite(row))
        epoch_bar.set_postfix(
            {k: f"{v:.4g}" for k, v in row.items() if k in ("train_loss", "mAP") and v == v}
        )
        if epoch > opts.epochs - average_last:
            state = {k: v.detach().float().clone() for k, v in head.state_dict().items()}
            if averaged is None:
                averaged = state
            else:
                for k in averaged:
                    averaged[k] += state[k]
            n_averaged += 1
    epoch_bar.close()
    assert averaged is not None
    head.load_state_dict({k: v / n_averaged for k, v in averaged.items()})
    head.eval()
    options = {**head.config.training, "device": str(opts.device)}
    if not ranks.main:  # the same head as rank 0's, which writes it
        return TrainResult(head, out, curves, {}, trained, options, saved=False)
    final = _validate(head, valid, trained)
    metrics = {k: float(v) for k, v in final.items() if k != "valid_loss" and not math.isnan(v)}
    if not final:
        logger.warning("no validation clips: the head carries no metrics")
    head.config.metrics = metrics
    out.parent.mkdir(parents=True, exist_ok=True)
    head = head.cpu()
    save_head(head, out)
    record = {
        "options": options,
        "features": str(features_dir),
        "n_train": n_clips,
        "n_train_views": len(train) - n_clips,
        "augmented": views,
        "n_valid": len(valid),
        "processes": ranks.world_size,
        "steps": sum(row["steps"] for row in curves),
        "trained_classes": trained,
        "epochs": curves,
        "final": _finite(final),
    }
    curves_path = out.with_name(out.name + ".curves.json")
    curves_path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    _plot(curves, out.with_name(out.name + ".curves.png"))
    return TrainResult(head, out, curves, metrics, trained, options)


def recipe(
    opts: TrainOptions,
    lr: float,
    decay_start: int,
    decay_step: int,
    average_last: int,
    held_out: Sequence[str] | None,
) -> dict[str, Any]:
    """The options that decide a head's weights, with every default resolved, as JSON
    values: stored in the head, so ``train --recipe HEAD`` trains the same head again."""
    options = asdict(opts) | {
        "lr": lr,
        "lr_decay_start": decay_start,
        "lr_decay_step": decay_step,
        "average_last": average_last,
        "held_out_sources": None if held_out is None else list(held_out),
    }
    for machine_only in ("device", "progress"):
        del options[machine_only]
    return json.loads(json.dumps(options))


def _plot(curves: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    epochs = [r["epoch"] for r in curves]
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in curves], label="train (augmented)")
    if any(r.get("valid_loss") is not None for r in curves):
        ax_loss.plot(epochs, [r.get("valid_loss") for r in curves], label="valid")
        ax_map.plot(epochs, [r.get("mAP") for r in curves], label="valid mAP")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("BCE loss")
    ax_loss.legend()
    ax_map.set_xlabel("epoch")
    ax_map.set_ylabel("mAP")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
