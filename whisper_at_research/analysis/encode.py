"""Per-layer encoder features for the analyses: conv stem (layer 0) plus every block.

``EncoderTap`` (whisper_at.tap) captures the blocks' outputs; the conv stem's output
(``gelu(conv2(gelu(conv1(mel)))) + positional embedding``, the input of block 0) is
caught here by a forward pre-hook on the first block, so one encoder pass yields
``n_layer + 1`` layers. Features are mean-pooled over time.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from whisper_at.cache import cache_dir as cache_dir_root
from whisper_at.tap import EncoderTap, install_tap
from whisper_at.weights import LoadedWhisper, load_whisper

__all__ = ["LayerTap", "analysis_cache_dir", "digest", "load"]


def analysis_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    return cache_dir_root() / "analysis"


def digest(obj: object) -> str:
    """sha256 of a JSON-serializable description (clip lists, grids)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def file_safe_name(name: str) -> str:
    """A model name or path as a file-name part (analysis outputs are named by model)."""
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in Path(name).name)


def load(model: str | os.PathLike | LoadedWhisper, device: str = "cpu") -> LoadedWhisper:
    if isinstance(model, LoadedWhisper):
        return model
    return load_whisper(model, device=device)


class LayerTap:
    """All ``n_layer + 1`` layer outputs of each encoder pass of a loaded Whisper."""

    def __init__(self, loaded: LoadedWhisper) -> None:
        self.loaded = loaded
        self.tap: EncoderTap = install_tap(loaded.model)
        self.tap.keep_stem = True

    @property
    def n_layers(self) -> int:  # including the stem
        return self.loaded.model.dims.n_audio_layer + 1

    def layers(self) -> torch.Tensor:
        """``[batch, n_layer + 1, 1500, d]`` of the last real encoder pass."""
        last = self.tap.last_pass
        if last is None or last.stem is None:
            raise RuntimeError("no encoder pass yet")
        return torch.cat([last.stem.unsqueeze(1), last.layers], dim=1)

    def encode(self, mels: torch.Tensor) -> torch.Tensor:
        """Run the encoder on ``[batch, n_mels, 3000]`` and return :meth:`layers` (float32)."""
        model = self.loaded.model
        dtype = torch.float16 if model.device.type == "cuda" else torch.float32
        self.tap.forget()
        with torch.inference_mode():
            self.tap(mels.to(model.device, dtype))
            return self.layers().float()

    def forget(self) -> None:
        self.tap.forget()


def pooled_frames(layers: torch.Tensor, start: int, end: int) -> np.ndarray:
    """Mean over frames ``[start, end)``: ``[n_layers, frames, d]`` -> ``[n_layers, d]``."""
    end = max(end, start + 1)
    return layers[:, start:end].float().mean(dim=1).cpu().numpy()
