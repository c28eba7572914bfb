"""Figure 1 (lower), Figure 3: a linear probe on every encoder layer, per class best layer.

Clips: the corpus's real-recording clips (``sounds.probe_clips``), one class each (its
most specific label), classes with >= 5 independent recordings, at most 30 clips per
class. Features: each clip's 25 pooled bins (as the feature store makes them: three
clips packed per 30 s window, ``training.features.pack_window``) mean-pooled over
time, for the conv stem (layer 0) and every block; cached on disk, keyed by the
Whisper sha256 and the clip list. Probe: StandardScaler + multinomial logistic
regression, GroupKFold over recording groups; accuracy per layer, out-of-fold per-class
F1 per layer.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from whisper_at.audio import load_audio
from whisper_at.tagging import pool_bins

from ..training.features import BINS_PER_CLIP, CLIP_SAMPLES, pack_window, window_groups
from .encode import LayerTap, analysis_cache_dir, digest, file_safe_name, load
from .sounds import SoundClip, probe_clips, real_clips

logger = logging.getLogger("whisper_at")

__all__ = ["ProbeResult", "extract_probe_features", "layer_probe", "run_probe", "run_mixture_probe"]


@dataclass
class ProbeResult:
    model: str
    sha256: str
    n_clips: int
    classes: list[str]
    n_folds: int
    accuracy: list[float]  # per layer (0 = conv stem), pooled over folds
    accuracy_std: list[float]  # across folds
    macro_f1: list[float]
    per_class_f1: dict[str, list[float]]  # class -> per layer
    best_layer: dict[str, int]  # class -> layer with the highest F1 (lowest on ties)
    chance: float  # majority-class accuracy
    seconds: dict[str, float] = field(default_factory=dict)
    mixture: dict | None = None

    def to_json(self) -> dict:
        return asdict(self)


def extract_probe_features(
    model,
    clips: list[SoundClip],
    batch_size: int = 4,
    cache_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> np.ndarray:
    """``[n_clips, n_layer + 1, d]`` float32 time-mean features (cached as fp16)."""
    loaded = load(model, device)
    key = digest([[c.id, str(c.path)] for c in clips])[:16]
    path = analysis_cache_dir(cache_dir) / "probe" / f"{loaded.sha256[:16]}-{key}.npy"
    if path.exists():
        return np.load(path).astype(np.float32)
    layer_tap = LayerTap(loaded)
    n_mels = loaded.model.dims.n_mels
    groups = window_groups(len(clips))
    out = np.zeros((len(clips), layer_tap.n_layers, loaded.model.dims.n_audio_state), np.float16)
    bar = tqdm(
        total=len(clips), unit="clip", desc=f"probe features {loaded.name}", disable=not progress
    )
    for b in range(0, len(groups), batch_size):
        batch = groups[b : b + batch_size]
        mels = []
        for g in batch:
            audio = []
            for i in g:
                x = load_audio(clips[i].path)[:CLIP_SAMPLES]
                audio.append(np.pad(x, (0, CLIP_SAMPLES - len(x))))
            mels.append(pack_window(audio, n_mels))
        layers = pool_bins(layer_tap.encode(torch.stack(mels)))  # [B, L+1, 75, d]
        layer_tap.forget()
        for w, g in enumerate(batch):
            for j, i in enumerate(g):
                bins = layers[w, :, j * BINS_PER_CLIP : (j + 1) * BINS_PER_CLIP]
                out[i] = bins.mean(dim=1).numpy().astype(np.float16)
        bar.update(sum(len(g) for g in batch))
    bar.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, out)
    os.replace(tmp, path)
    return out.astype(np.float32)


def layer_probe(
    features: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    n_folds: int = 5,
    C: float = 0.5,  # noqa: N803
    max_iter: int = 500,
    seed: int = 0,
) -> dict:
    """Cross-validated accuracy of a linear probe on ``[n, d]`` features.

    Returns accuracy (out-of-fold, all clips), per-fold std, and the out-of-fold
    predictions. Folds: ``GroupKFold`` (no group on both sides).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    n_folds = min(n_folds, len(set(groups.tolist())))
    pred = np.empty_like(labels)
    fold_acc = []
    for train, test in GroupKFold(n_splits=n_folds).split(features, labels, groups):
        clf = make_pipeline(
            StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
        )
        # one BLAS thread: on a busy machine more threads made the fits ~50x slower
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(features[train], labels[train])
        pred[test] = clf.predict(features[test])
        fold_acc.append(float(np.mean(pred[test] == labels[test])))
    return {
        "accuracy": float(np.mean(pred == labels)),
        "accuracy_std": float(np.std(fold_acc)),
        "pred": pred,
        "n_folds": n_folds,
    }


def _per_layer(features, y, groups, n_folds, seed, desc, progress):
    from sklearn.metrics import f1_score

    n_classes = int(y.max()) + 1
    acc, std, macro, f1 = [], [], [], []
    for layer in tqdm(range(features.shape[1]), desc=desc, disable=not progress):
        r = layer_probe(features[:, layer], y, groups, n_folds=n_folds, seed=seed)
        acc.append(r["accuracy"])
        std.append(r["accuracy_std"])
        per = f1_score(y, r["pred"], labels=list(range(n_classes)), average=None, zero_division=0)
        f1.append(per.tolist())
        macro.append(float(np.mean(per)))
        n_folds_used = r["n_folds"]
    return acc, std, macro, np.array(f1), n_folds_used


def run_probe(
    model: str,
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    max_per_class: int | None = 30,
    min_groups: int = 5,
    max_classes: int | None = None,
    n_folds: int = 5,
    seed: int = 0,
    batch_size: int = 4,
    device: str = "cpu",
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> ProbeResult:
    """Probe every layer; writes ``probe_<model>.json`` and ``probe_<model>.csv``.

    ``max_classes`` keeps a seeded draw of that many eligible classes (for --quick).
    When ``out_dir`` holds ``robustness_<model>_features.npz`` the mixture probe runs too.
    """
    from .sounds import sound_classes

    t0 = time.perf_counter()
    loaded = load(model, device)
    allc = real_clips(manifest)
    classes = sound_classes(allc, min_groups)
    if max_classes is not None and len(classes) > max_classes:
        rng = np.random.default_rng(seed + 2)
        classes = sorted(classes[i] for i in rng.choice(len(classes), max_classes, replace=False))
    clips = probe_clips(allc, min_groups, max_per_class, classes=classes, seed=seed)
    feats = extract_probe_features(loaded, clips, batch_size, cache_dir, device, progress)
    t1 = time.perf_counter()
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[c.label] for c in clips])
    groups = np.array([c.group for c in clips])
    acc, std, macro, f1, n_folds = _per_layer(
        feats, y, groups, n_folds, seed, f"probe {loaded.name}", progress
    )
    best = {c: int(np.argmax(f1[:, k])) for k, c in enumerate(classes)}
    result = ProbeResult(
        model=loaded.name,
        sha256=loaded.sha256,
        n_clips=len(clips),
        classes=classes,
        n_folds=n_folds,
        accuracy=acc,
        accuracy_std=std,
        macro_f1=macro,
        per_class_f1={c: f1[:, k].tolist() for k, c in enumerate(classes)},
        best_layer=best,
        chance=float(np.bincount(y).max() / len(y)),
        seconds={"features": t1 - t0, "probe": time.perf_counter() - t1},
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    safe = file_safe_name(loaded.name)
    mix_path = out / f"robustness_{safe}_features.npz"
    if mix_path.exists():
        result.mixture = run_mixture_probe(mix_path, n_folds=n_folds, seed=seed, progress=progress)
    (out / f"probe_{safe}.json").write_text(json.dumps(result.to_json(), indent=1) + "\n")
    with (out / f"probe_{safe}.csv").open("w", encoding="utf-8") as f:
        f.write("layer,accuracy,accuracy_std,macro_f1\n")
        for k in range(len(acc)):
            f.write(f"{k},{acc[k]:.4f},{std[k]:.4f},{macro[k]:.4f}\n")
    return result


def run_mixture_probe(
    path: str | os.PathLike, n_folds: int = 5, seed: int = 0, progress: bool = True
) -> dict:
    """Is the noise class still decodable under speech? The same probe on the robustness
    mixtures' features (pooled over the speech), per SNR and layer; folds by noise recording."""
    data = np.load(path)
    feats = data["features"].astype(np.float32)
    names = data["noise_class"]
    classes = sorted(set(names.tolist()))
    y = np.array([classes.index(c) for c in names])
    groups, snr = data["noise_group"], data["snr"]
    per_snr = {}
    for s in tqdm(sorted(set(snr.tolist())), desc="mixture probe", disable=not progress):
        m = snr == s
        acc = [
            layer_probe(feats[m, layer], y[m], groups[m], n_folds=n_folds, seed=seed)["accuracy"]
            for layer in range(feats.shape[1])
        ]
        per_snr[str(int(s) if float(s).is_integer() else s)] = acc
    return {
        "classes": classes,
        "n_per_snr": int(len(y) // max(len(per_snr), 1)),
        "chance": float(np.bincount(y).max() / len(y)),
        "accuracy": per_snr,
    }
