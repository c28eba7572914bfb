"""Pieces every weights reader shares: the error type, hashing and building the model."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from whisper.model import ModelDimensions, Whisper

logger = logging.getLogger("whisper_at")

# [layer, head] pairs (CT2/HF configs) or openai-whisper's base85 dump (whisper._ALIGNMENT_HEADS).
AlignmentHeads = list[list[int]] | bytes | None


class WeightsError(ValueError):
    """Whisper weights could not be found, verified or converted."""


@dataclass
class Checkpoint:
    """A Whisper state dict in OpenAI names, before it is put into a model."""

    dims: ModelDimensions
    state_dict: dict[str, torch.Tensor]
    alignment_heads: AlignmentHeads = None


def sha256_files(paths: Iterable[str | os.PathLike]) -> str:
    """SHA-256 of the byte concatenation of `paths`, streamed so large files stay off the heap."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def check_sha256(what: str, expected: str, actual: str) -> None:
    if expected != actual:
        raise WeightsError(f"{what}: sha256 mismatch: expected {expected} got {actual}")


def dims_from_mapping(values: Mapping[str, object], where: str | Path) -> ModelDimensions:
    try:
        return ModelDimensions(**{k: int(v) for k, v in values.items()})  # type: ignore[arg-type]
    except (AttributeError, TypeError, ValueError) as exc:
        raise WeightsError(
            f"{where}: not a Whisper checkpoint: bad dims {values!r} ({exc})"
        ) from exc


def build_whisper(checkpoint: Checkpoint, where: str | Path, device: str | torch.device) -> Whisper:
    """Put a state dict into an fp32 openai-whisper model; shape or key mismatches are errors."""
    model = Whisper(checkpoint.dims)
    try:
        model.load_state_dict(checkpoint.state_dict, strict=True)
    except RuntimeError as exc:
        raise WeightsError(
            f"{where}: not a Whisper checkpoint matching its dims {checkpoint.dims}: {exc}"
        ) from exc
    heads = checkpoint.alignment_heads
    if isinstance(heads, bytes):
        model.set_alignment_heads(heads)
    elif heads:
        mask = torch.zeros(
            checkpoint.dims.n_text_layer, checkpoint.dims.n_text_head, dtype=torch.bool
        )
        try:
            for layer, head in heads:
                mask[layer, head] = True
        except (IndexError, TypeError, ValueError) as exc:
            raise WeightsError(f"{where}: bad alignment_heads {heads!r}") from exc
        model.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)
    return model.float().to(device).eval()
