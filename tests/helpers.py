"""Test helpers shared by several test modules."""

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
