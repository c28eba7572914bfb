"""Test helpers shared by several test modules."""

import wave
from pathlib import Path

import numpy as np
import torch

from whisper_at.heads import HeadConfig, TaggingHead
from whisper_at.labels import audioset_labels


def random_head(n_layer: int = 4, d_model: int = 384, seed: int = 0, **config) -> TaggingHead:
    """A randomly initialised TL-TR head over AudioSet: for mechanics, never tag quality."""
    torch.manual_seed(seed)
    labels = audioset_labels()
    head_config = HeadConfig(
        "tl_tr", n_layer, d_model, list(labels.names), list(labels.ids), **config
    )
    return TaggingHead(head_config).eval()


def write_wav(path: Path, x: np.ndarray, sample_rate: int = 16000) -> Path:
    """``x`` (float, -1..1) as a 16-bit mono WAV file at ``path``."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    return path
