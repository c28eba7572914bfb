"""Model shapes the benchmarks share: every Whisper size, and standalone taggers for scale.

Sizes without weights here are built with random weights: their compute and
timing do not depend on the weight values.
"""

from __future__ import annotations

import torch
from torch import nn
from whisper.model import ModelDimensions

from whisper_at.heads import HeadConfig, TaggingHead
from whisper_at.labels import audioset_labels


def _dims(n_mels: int, layers: int, width: int, heads: int, vocab: int, dec_layers: int = 0):
    return ModelDimensions(
        n_mels=n_mels, n_audio_ctx=1500, n_audio_state=width, n_audio_head=heads,
        n_audio_layer=layers, n_vocab=vocab, n_text_ctx=448, n_text_state=width,
        n_text_head=heads, n_text_layer=dec_layers or layers,
    )  # fmt: skip


WHISPER_DIMS = {
    "tiny": _dims(80, 4, 384, 6, 51865),
    "base": _dims(80, 6, 512, 8, 51865),
    "small": _dims(80, 12, 768, 12, 51865),
    "medium": _dims(80, 24, 1024, 16, 51865),
    "large-v2": _dims(80, 32, 1280, 20, 51865),
    "large-v3": _dims(128, 32, 1280, 20, 51866),
    "turbo": _dims(128, 32, 1280, 20, 51866, dec_layers=4),
}


def random_head(dims: ModelDimensions, head_type: str = "tl_tr", proj_dim: int | None = None):
    labels = audioset_labels()
    config = HeadConfig(
        head_type, dims.n_audio_layer, dims.n_audio_state, list(labels.names), list(labels.ids),
        proj_dim=proj_dim,
    )  # fmt: skip
    return TaggingHead(config).eval()


class PatchTransformerTagger(nn.Module):
    """A ViT audio tagger over a log-mel patch grid (the AST / CED family), for cost only."""

    def __init__(self, n_mels: int, frames: int, patch: int, stride: int, width: int,
                 depth: int, heads: int, n_classes: int = 527) -> None:  # fmt: skip
        super().__init__()
        self.n_mels, self.frames = n_mels, frames
        self.embed = nn.Conv2d(1, width, kernel_size=patch, stride=stride)
        layer = nn.TransformerEncoderLayer(
            width, heads, 4 * width, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.out = nn.Linear(width, n_classes)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:  # [batch, n_mels, frames]
        tokens = self.embed(mel[:, None]).flatten(2).transpose(1, 2)
        return self.out(self.blocks(tokens).mean(dim=1))


def ast_like() -> PatchTransformerTagger:
    """AST's shape: 128 mel x 1024 frames (10 s), 16x16 patches at stride 10, ViT-B (87M)."""
    return PatchTransformerTagger(128, 1024, 16, 10, 768, 12, 12)


def ced_tiny_like() -> PatchTransformerTagger:
    """CED-Tiny's shape: 64 mel x 1000 frames (10 s), 16x16 patches, width 192, depth 12."""
    return PatchTransformerTagger(64, 1000, 16, 16, 192, 12, 3)
