"""Feature extraction: every encoder block's pooled output for every manifest clip.

Packing (see docs/training.md): three consecutive 10 s clips are laid end to end in
one 30 s encoder window, whose log-mel is made exactly as ``whisper_at.audio.window_log_mel``
makes it for a 30 s chunk of a file, and each clip gets the pooled 0.4 s bins of
its third (0-25, 25-50, 50-75). That is where a 10 s tagging window sits when
``WhisperAT.tag`` streams a long recording, so the head is trained on the features
it sees at inference. A last group of one or two clips is followed by zero audio
and zero log-mel columns, like the end of a file.

The store is a folder: ``meta.json`` plus shards ``shard-NNNNN.safetensors``
(``features`` [n, n_layer, 25, d_model] fp16, ``targets`` [n, n_classes] uint8
multi-hot) each with a ``shard-NNNNN.json`` sidecar (clip ids, splits, recordings,
source packages, seconds of real audio; format 1 stores have no sources). Shards
already written are skipped, so an interrupted run resumes; a store made from another
manifest, label set or Whisper is refused.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm
from whisper.audio import HOP_LENGTH

from whisper_at.audio import SAMPLE_RATE, load_audio, window_log_mel
from whisper_at.labels import LabelSet, audioset_labels
from whisper_at.tagging import ENCODER_FRAMES_PER_BIN, pool_bins
from whisper_at.tap import EncoderTap, install_tap
from whisper_at.weights import LoadedWhisper, load_whisper

from .augment import AugmentConfig, Augmenter, ViewPlan, view_id
from .manifest import Clip, label_indices, manifest_hash, read_manifest

logger = logging.getLogger("whisper_at")

FORMAT_VERSION = 2  # 2: sidecars list each clip's source packages
WINDOW_SECONDS = 10
CLIPS_PER_WINDOW = 3
ENCODER_INPUT_SECONDS = WINDOW_SECONDS * CLIPS_PER_WINDOW
CLIP_SAMPLES = WINDOW_SECONDS * SAMPLE_RATE
BINS_PER_CLIP = CLIP_SAMPLES // HOP_LENGTH // 2 // ENCODER_FRAMES_PER_BIN  # 25
DEFAULT_SHARD_SIZE = 960  # clips; a multiple of CLIPS_PER_WINDOW
_FP16_MAX = float(torch.finfo(torch.float16).max)


class FeatureStoreError(ValueError):
    """A feature store that is missing, incomplete, or made from other inputs."""


@dataclass
class ExtractionReport:
    out_dir: Path
    n_clips: int
    shards_written: int
    shards_skipped: int
    encoder_passes: int  # real encoder runs this call made (0 when everything was on disk)

    @classmethod
    def of(
        cls, out: Path, plan: ExtractionPlan, written: int, encoder_passes: int
    ) -> ExtractionReport:
        """The report of a run that wrote ``written`` of ``plan``'s shards."""
        return cls(out, len(plan.clips), written, plan.n_shards - written, encoder_passes)


@dataclass
class FeatureSet:
    """Features of a store (or of some of its splits), in memory."""

    features: torch.Tensor  # [n, n_layer, 25, d_model] fp16
    targets: torch.Tensor  # [n, n_classes] uint8
    ids: list[str]
    splits: list[str]
    recordings: list[str]
    meta: dict
    sources: list[tuple[str, ...]] | None = None  # per clip; None for a format 1 store

    @property
    def labels(self) -> LabelSet:
        return LabelSet(tuple(self.meta["label_names"]), tuple(self.meta["label_ids"]))

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices: list[int] | np.ndarray) -> FeatureSet:
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return FeatureSet(
            features=self.features[idx],
            targets=self.targets[idx],
            ids=[self.ids[i] for i in idx.tolist()],
            splits=[self.splits[i] for i in idx.tolist()],
            recordings=[self.recordings[i] for i in idx.tolist()],
            meta=self.meta,
            sources=None if self.sources is None else [self.sources[i] for i in idx.tolist()],
        )

    def split(self, name: str) -> FeatureSet:
        return self.subset([i for i, s in enumerate(self.splits) if s == name])


def _shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def _write_atomic_json(path: Path, data: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@dataclass
class ExtractionPlan:
    """The clips of a store, in store order, how to read each, and their targets.

    Made the same way wherever shards are written (:func:`extract_features` here, or each
    Ray worker of ``features_ray``), so that any process writes any shard identically.
    """

    clips: list[Clip]
    audio_of: Callable[[Clip, int], tuple[np.ndarray, float]]
    targets: list[list[int]]
    n_labels: int
    shard_size: int
    manifest_sha256: str  # of the manifest's clips and labels (views are made from them)
    views: list[ViewPlan] | None = None  # augmented views' plans (a views store)

    @property
    def n_shards(self) -> int:
        return math.ceil(len(self.clips) / self.shard_size)

    def shard_bounds(self, shard: int) -> tuple[int, int]:
        lo = shard * self.shard_size
        return lo, min(lo + self.shard_size, len(self.clips))


def plan_extraction(
    manifest: str | os.PathLike,
    labels: LabelSet,
    shard_size: int = DEFAULT_SHARD_SIZE,
    augment: AugmentConfig | None = None,
) -> ExtractionPlan:
    """Read the manifest and plan the store's clips (or views, with ``augment``)."""
    if shard_size < CLIPS_PER_WINDOW or shard_size % CLIPS_PER_WINDOW:
        raise ValueError(f"shard_size must be a positive multiple of {CLIPS_PER_WINDOW}")
    clips = read_manifest(manifest)
    digest = manifest_hash(clips, labels)
    reader = ClipReader()
    views: list[ViewPlan] | None = None
    if augment is not None:
        clips, views, audio_of = _views(clips, labels, augment, reader)
    else:

        def audio_of(clip: Clip, _: int) -> tuple[np.ndarray, float]:
            return reader.clip(clip)

    targets = label_indices(clips, labels)
    return ExtractionPlan(clips, audio_of, targets, len(labels), shard_size, digest, views)


def store_meta(
    plan: ExtractionPlan,
    loaded: LoadedWhisper,
    manifest: str | os.PathLike,
    labels: LabelSet,
    augment: AugmentConfig | None,
) -> dict:
    """The store's meta.json (``complete`` false until every shard is written)."""
    dims = loaded.model.dims
    return {
        "format_version": FORMAT_VERSION,
        "whisper_name": loaded.name,
        "whisper_sha256": loaded.sha256,
        "n_layer": dims.n_audio_layer,
        "d_model": dims.n_audio_state,
        "label_names": list(labels.names),
        "label_ids": list(labels.ids),
        "window_seconds": WINDOW_SECONDS,
        "clips_per_window": CLIPS_PER_WINDOW,
        "encoder_input_seconds": ENCODER_INPUT_SECONDS,
        "bins_per_clip": BINS_PER_CLIP,
        "packing": "3 consecutive 10 s clips per 30 s encoder window, bins 0-25/25-50/50-75",
        "manifest": str(Path(manifest).resolve()),
        "manifest_sha256": plan.manifest_sha256,
        "n_clips": len(plan.clips),
        "shard_size": plan.shard_size,
        "n_shards": plan.n_shards,
        "complete": False,
        "augment": augment.to_dict() if augment else None,
    }


def open_store(out: Path, meta: dict) -> list[int]:
    """Create (or check, to resume) the store in ``out``; the shards still to write."""
    _check_resume(out, meta)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "meta.json").exists():
        _write_atomic_json(out / "meta.json", meta)
    return [s for s in range(meta["n_shards"]) if not shard_done(out, s)]


def shard_done(out: Path, shard: int) -> bool:
    """A shard is done once its sidecar is there (written last, atomically)."""
    return (out / f"{_shard_name(shard)}.json").exists()


def close_store(out: Path, meta: dict) -> None:
    """Mark the store complete: every shard is written."""
    _write_atomic_json(out / "meta.json", {**meta, "complete": True})


def write_shard(
    loaded: LoadedWhisper,
    tap: EncoderTap,
    plan: ExtractionPlan,
    shard: int,
    out: Path,
    batch_size: int,
    bar: tqdm,
) -> None:
    """Extract shard ``shard`` of ``plan`` and write it: tensors first, then the sidecar,
    each atomically, so a shard counts as done only when both are whole."""
    lo, hi = plan.shard_bounds(shard)
    clips = plan.clips[lo:hi]
    feats, seconds = _extract_shard(
        loaded, tap, clips, range(lo, hi), plan.audio_of, batch_size, bar
    )
    multi_hot = torch.zeros(hi - lo, plan.n_labels, dtype=torch.uint8)
    for row, indices in enumerate(plan.targets[lo:hi]):
        multi_hot[row, indices] = 1
    name = _shard_name(shard)
    tmp = out / f"{name}.safetensors.tmp"
    save_file({"features": feats, "targets": multi_hot}, str(tmp))
    os.replace(tmp, out / f"{name}.safetensors")
    sidecar = {
        "ids": [c.id for c in clips],
        "splits": [c.split for c in clips],
        "recordings": [c.recording for c in clips],
        "sources": [list(c.sources) for c in clips],
        "seconds": seconds,
        "first_clip": lo,
    }
    if plan.views is not None:
        sidecar["augment"] = [p.steps for p in plan.views[lo:hi]]  # "clip": manifest index
    _write_atomic_json(out / f"{name}.json", sidecar)


def extract_features(
    model_name: str | os.PathLike | LoadedWhisper,
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    labels: LabelSet | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    progress: bool = True,
    download_root: str | None = None,
    augment: AugmentConfig | None = None,
) -> ExtractionReport:
    """Extract pooled all-layer features of every manifest clip into ``out_dir``.

    model_name: a Whisper name or path for ``load_whisper`` (or an already loaded one);
    labels: the label set of the targets (default: AudioSet's 527 classes);
    batch_size: 30 s encoder windows (3 clips each) per encoder pass;
    augment: make a *views store* instead: ``augment.copies`` augmented views of each
    ``train`` clip (ids ``<clip id>~aug<k>``, see ``augment.py``), nothing of the other
    splits; ``whisper-at train BASE --augmented VIEWS`` adds them to BASE's training clips.
    The same store on a Ray cluster: ``features_ray.extract_features_ray``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    labels = labels or audioset_labels()
    plan = plan_extraction(manifest, labels, shard_size, augment)
    if isinstance(model_name, LoadedWhisper):
        loaded = model_name
    else:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        loaded = load_whisper(model_name, device=device, download_root=download_root)
    out = Path(out_dir)
    meta = store_meta(plan, loaded, manifest, labels, augment)
    todo = open_store(out, meta)

    tap = install_tap(loaded.model)
    passes_before = tap.n_passes
    bar = tqdm(
        total=sum(hi - lo for lo, hi in map(plan.shard_bounds, todo)),
        unit="clip",
        desc="features",
        disable=not progress,
    )
    try:
        for s in todo:
            write_shard(loaded, tap, plan, s, out, batch_size, bar)
    finally:
        bar.close()
        tap.forget()
    close_store(out, meta)
    return ExtractionReport.of(out, plan, len(todo), tap.n_passes - passes_before)


def _check_resume(out: Path, meta: dict) -> None:
    path = out / "meta.json"
    if not path.exists():
        if out.exists() and any(out.glob("shard-*")):
            raise FeatureStoreError(f"{out} holds shards but no meta.json; use an empty folder")
        return
    old = json.loads(path.read_text(encoding="utf-8"))
    checks = [
        ("manifest_sha256", "the manifest (its clips or labels) changed"),
        ("whisper_sha256", f"it was made with other Whisper weights ({old.get('whisper_name')})"),
        ("shard_size", "it was made with another shard size"),
        ("format_version", "it was made by another version of the feature format"),
        ("label_ids", "it was made with another label set"),
        ("augment", "it was made with another augmentation (or none)"),
    ]
    for key, why in checks:
        if old.get(key) != meta[key]:
            raise FeatureStoreError(
                f"cannot resume feature extraction into {out}: {why}. "
                "Use a new output folder, or delete this one to start over."
            )


class ClipReader:
    """Decodes clips, keeping the last file decoded (consecutive clips often share one)."""

    def __init__(self) -> None:
        self._key: tuple[str, str | None] | None = None
        self._audio: np.ndarray | None = None

    def clip(self, clip: Clip) -> tuple[np.ndarray, float]:
        """Exactly 10 s of samples (trimmed, or zero-padded), and the seconds of real audio."""
        key = (clip.path, clip.format)
        if key != self._key:
            try:
                self._audio = load_audio(clip.path, format=clip.format)
            except Exception as e:
                raise ValueError(f"clip {clip.id!r}: cannot decode {clip.path}: {e}") from e
            self._key = key
        audio = self._audio
        start = round(clip.start * SAMPLE_RATE)
        end = len(audio) if clip.end is None else min(len(audio), round(clip.end * SAMPLE_RATE))
        piece = audio[start : min(end, start + CLIP_SAMPLES)]
        if len(piece) == 0:
            raise ValueError(
                f"clip {clip.id!r}: no audio between {clip.start} s and {clip.end} s of "
                f"{clip.path} ({len(audio) / SAMPLE_RATE:.2f} s long)"
            )
        out = np.zeros(CLIP_SAMPLES, dtype=np.float32)
        out[: len(piece)] = piece
        return out, len(piece) / SAMPLE_RATE


def window_groups(n_clips: int) -> list[list[int]]:
    """Clip indices of each 30 s encoder window: consecutive clips, CLIPS_PER_WINDOW at a time."""
    return [
        list(range(i, min(i + CLIPS_PER_WINDOW, n_clips)))
        for i in range(0, n_clips, CLIPS_PER_WINDOW)
    ]


def pack_window(clip_audio: list[np.ndarray], n_mels: int) -> torch.Tensor:
    """The 30 s encoder input (log-mel) for up to three 10 s clips laid end to end.

    Made by ``whisper_at.audio.window_log_mel``, as ``WhisperAT.tag`` makes it for a 30 s chunk
    of a file (or for the last, shorter chunk when fewer than three clips are left).
    """
    if not 1 <= len(clip_audio) <= CLIPS_PER_WINDOW:
        raise ValueError(f"a window holds 1 to {CLIPS_PER_WINDOW} clips")
    chunk = torch.from_numpy(np.concatenate(clip_audio).astype(np.float32, copy=False))
    return window_log_mel(chunk, n_mels)


def _views(
    clips: list[Clip], labels: LabelSet, config: AugmentConfig, reader: ClipReader
) -> tuple[list[Clip], list[ViewPlan], Callable[[Clip, int], tuple[np.ndarray, float]]]:
    """The augmented views of the train clips, their plans, and how to render view ``k``."""
    names = [[labels.names[i] for i in row] for row in label_indices(clips, labels)]
    train = [i for i, c in enumerate(clips) if c.split == "train"]
    if not train:
        raise ValueError("augmentation makes views of the 'train' clips; this manifest has none")
    partner_reader = ClipReader()
    augmenter = Augmenter(
        config,
        names,
        [c.recording for c in clips],
        train,
        lambda j: partner_reader.clip(clips[j])[0],
    )
    views, plans, bases = [], [], []
    for i in train:
        for k in range(config.copies):
            plan = augmenter.plan(i, k)
            mixed = [clips[i], *(clips[j] for j in plan.partners)]
            views.append(
                replace(
                    clips[i],
                    id=view_id(clips[i].id, k),
                    labels=tuple(dict.fromkeys(label for c in mixed for label in c.labels)),
                    sources=tuple(sorted({s for c in mixed for s in c.sources})),
                )
            )
            plans.append(plan)
            bases.append(i)

    def audio_of(_: Clip, index: int) -> tuple[np.ndarray, float]:
        samples, seconds = reader.clip(clips[bases[index]])
        return augmenter.render(samples, plans[index]), seconds

    logger.info("%d views of %d train clips (%s)", len(views), len(train), config.families)
    return views, plans, audio_of


def _extract_shard(
    loaded: LoadedWhisper,
    tap,
    clips: list[Clip],
    indices: range,
    audio_of: Callable[[Clip, int], tuple[np.ndarray, float]],
    batch_size: int,
    bar,
) -> tuple[torch.Tensor, list[float]]:
    """Features of ``clips`` (the store's ``indices``); ``audio_of(clip, index)`` reads one."""
    model = loaded.model
    n_mels = model.dims.n_mels
    dtype = torch.float16 if model.device.type == "cuda" else torch.float32
    dims = model.dims
    feats = torch.zeros(len(clips), dims.n_audio_layer, BINS_PER_CLIP, dims.n_audio_state)
    feats = feats.to(torch.float16)
    seconds: list[float] = []
    groups = window_groups(len(clips))
    for b in range(0, len(groups), batch_size):
        batch = groups[b : b + batch_size]
        mels = []
        for group in batch:
            audio = []
            for i in group:
                samples, real = audio_of(clips[i], indices[i])
                audio.append(samples)
                seconds.append(real)
            mels.append(pack_window(audio, n_mels))
        with torch.inference_mode():
            tap(torch.stack(mels).to(model.device, dtype))
            pooled = pool_bins(tap.last_pass.layers).clamp(-_FP16_MAX, _FP16_MAX)
        tap.forget()
        for w, group in enumerate(batch):
            for j, i in enumerate(group):
                bins = slice(j * BINS_PER_CLIP, (j + 1) * BINS_PER_CLIP)
                feats[i] = pooled[w, :, bins].to("cpu", torch.float16)
        bar.update(sum(len(g) for g in batch))
    return feats, seconds


def read_meta(features_dir: str | os.PathLike) -> dict:
    path = Path(features_dir) / "meta.json"
    if not path.is_file():
        raise FeatureStoreError(
            f"{features_dir} is not a feature store (no meta.json); "
            "make one with `whisper-at features extract`"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def load_features(features_dir: str | os.PathLike, splits: list[str] | None = None) -> FeatureSet:
    """Read a complete store into memory (fp16), keeping only ``splits`` when given."""
    meta = read_meta(features_dir)
    if not meta.get("complete"):
        raise FeatureStoreError(
            f"feature extraction into {features_dir} did not finish; run it again to resume"
        )
    feats, targets, ids, split_names, recordings = [], [], [], [], []
    sources: list[tuple[str, ...]] | None = [] if meta.get("format_version", 1) >= 2 else None
    for s in range(meta["n_shards"]):
        base = Path(features_dir) / _shard_name(s)
        try:
            side = json.loads(base.with_suffix(".json").read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise FeatureStoreError(f"{features_dir}: shard {s} is missing ({e.filename})") from e
        keep = [i for i, sp in enumerate(side["splits"]) if splits is None or sp in splits]
        if not keep:
            continue
        with safe_open(str(base) + ".safetensors", framework="pt") as f:
            f_all, t_all = f.get_tensor("features"), f.get_tensor("targets")
        idx = torch.as_tensor(keep)
        feats.append(f_all[idx] if len(keep) < len(side["ids"]) else f_all)
        targets.append(t_all[idx] if len(keep) < len(side["ids"]) else t_all)
        ids += [side["ids"][i] for i in keep]
        split_names += [side["splits"][i] for i in keep]
        recordings += [side["recordings"][i] for i in keep]
        if sources is not None:
            sources += [tuple(side["sources"][i]) for i in keep]
    n_classes = len(meta["label_ids"])
    shape = (0, meta["n_layer"], meta["bins_per_clip"], meta["d_model"])
    return FeatureSet(
        features=torch.cat(feats) if feats else torch.zeros(shape, dtype=torch.float16),
        targets=torch.cat(targets) if targets else torch.zeros(0, n_classes, dtype=torch.uint8),
        ids=ids,
        splits=split_names,
        recordings=recordings,
        meta=meta,
        sources=sources,
    )
