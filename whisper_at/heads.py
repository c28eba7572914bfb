"""Tagging heads over Whisper's per-layer pooled features, and their checkpoints.

Every head maps features ``[batch, n_layer, time, d_model]`` (one tagging window of
pooled 0.4 s frames from every encoder block) to class logits ``[batch, n_classes]``.
TL-TR follows the Whisper-AT paper: one residual attention block over time shared
by all layers, mean over time, one block over the layer axis, mean over layers,
LayerNorm + Linear. There are no positional embeddings, so a window may hold any
number of frames (the last, partial window of a file needs no padding).

The blocks are openai-whisper's own ``ResidualAttentionBlock``, so the parameter
names are those of the reference checkpoints and those load unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import zipfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from whisper.model import ResidualAttentionBlock

from .labels import LabelSet, audioset_labels

HeadType = Literal["tl_tr", "tl_tr_low", "last_linear", "mean_linear", "wa_linear", "wa_tr"]
HEAD_TYPES: tuple[str, ...] = HeadType.__args__  # type: ignore[attr-defined]
_CONFIG_KEY = "whisper_at_head_config"


class HeadError(ValueError):
    """A head checkpoint that is missing, malformed, or made for another Whisper."""


@dataclass(frozen=True)
class HeadSource:
    """Where a head was loaded from, so results can say which head tagged them."""

    path: str  # absolute path of the checkpoint file
    sha256: str  # of the file's bytes

    @classmethod
    def from_file(cls, path: Path) -> HeadSource:
        """Hash ``path``; it is kept absolute so it still means something read elsewhere."""
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        return cls(str(path.resolve()), digest)


@dataclass
class HeadConfig:
    """Everything needed to rebuild a head and to know what its outputs mean.

    Stored as JSON in the safetensors metadata of every head checkpoint.
    """

    head_type: HeadType
    n_layer: int  # encoder blocks the head reads: the first n_layer of the Whisper model's
    d_model: int  # width of that encoder
    label_names: list[str]
    label_ids: list[str]
    proj_dim: int | None = None  # TL-TR-low-dim width (512 in the paper)
    time_heads: int = 1
    layer_heads: int = 8
    whisper_name: str = ""
    whisper_sha256: str = ""  # the Whisper weights the features came from
    trained_classes: list[int] | None = None  # classes with training data; None = all
    window_seconds: float = 10.0  # tagging window the head was trained on
    encoder_input_seconds: float = 30.0  # 10.0 when the encoder input was trimmed
    metrics: dict[str, float] = field(default_factory=dict)
    encoder_layers: int | None = None  # the Whisper model's blocks (None: n_layer, all)
    # per-class decision thresholds (probabilities) chosen on validation data by
    # `whisper-at calibrate`; None: the head has none and "auto" uses a fixed default
    thresholds: list[float] | None = None
    held_out_sources: list[str] | None = None  # source packages kept out of its training
    # the options `whisper-at train` made it with, so `train --recipe HEAD` can make it again
    # (empty for heads trained before the recipe was recorded)
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.head_type not in HEAD_TYPES:
            raise HeadError(f"unknown head type {self.head_type!r}; expected one of {HEAD_TYPES}")
        if self.head_type == "tl_tr_low" and not self.proj_dim:
            raise HeadError("tl_tr_low needs proj_dim")
        if len(self.label_names) != len(self.label_ids):
            raise HeadError("label_names and label_ids differ in length")
        if self.encoder_layers is not None and not 0 < self.n_layer <= self.encoder_layers:
            raise HeadError(f"a head cannot read {self.n_layer} of {self.encoder_layers} blocks")
        if self.thresholds is not None:
            if len(self.thresholds) != self.n_classes:
                raise HeadError(
                    f"the head has {len(self.thresholds)} thresholds for {self.n_classes} classes"
                )
            if not all(0.0 <= t <= 1.0 for t in self.thresholds):
                raise HeadError("head thresholds must be probabilities in [0, 1]")

    def check_encoder(self, n_layer: int, d_model: int, what: str) -> None:
        """Raise :class:`HeadError` unless features of this encoder (``what``) fit the head."""
        blocks = self.encoder_layers or self.n_layer
        if (blocks, self.d_model) != (n_layer, d_model):
            raise HeadError(
                f"the head reads an encoder of {blocks} blocks of width {self.d_model} "
                f"(Whisper {self.whisper_name or '?'}), but {what} has {n_layer} blocks of "
                f"width {d_model}"
            )

    @property
    def n_classes(self) -> int:
        return len(self.label_names)

    @property
    def labels(self) -> LabelSet:
        return LabelSet(names=tuple(self.label_names), ids=tuple(self.label_ids))

    @property
    def reported_classes(self) -> list[int]:
        """Indices of the classes this head may report (those it was trained on)."""
        if self.trained_classes is None:
            return list(range(self.n_classes))
        return sorted(self.trained_classes)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> HeadConfig:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise HeadError(f"head config has unknown fields {sorted(unknown)}")
        return cls(**data)


def _norm_linear(d_in: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, d_out))


class TaggingHead(nn.Module):
    """One module for every head type; ``config.head_type`` picks the computation."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        self.source: HeadSource | None = None  # set when loaded from a file
        kind, d = config.head_type, config.d_model
        width = d
        if kind == "tl_tr_low":
            width = config.proj_dim or d
            self.down_layer = _norm_linear(d, width)
        if kind in ("tl_tr", "tl_tr_low", "wa_tr"):
            self.time_tr = ResidualAttentionBlock(width, config.time_heads)
        if kind in ("tl_tr", "tl_tr_low"):
            self.layer_tr = ResidualAttentionBlock(width, config.layer_heads)
        if kind in ("wa_linear", "wa_tr"):
            self.layer_weight = nn.Parameter(torch.zeros(config.n_layer))
        self.mlp_layer = _norm_linear(width, config.n_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features ``[batch, layers, time, d_model]`` -> logits ``[batch, n_classes]``.

        ``layers``: the encoder's blocks, or only the first ``n_layer`` the head reads.
        """
        self._check_features(features)
        x = features[:, : self.config.n_layer].float()
        kind = self.config.head_type
        if kind == "last_linear":
            pooled = x[:, -1].mean(dim=1)
        elif kind == "mean_linear":
            pooled = x.mean(dim=(1, 2))
        elif kind in ("wa_linear", "wa_tr"):
            weights = torch.softmax(self.layer_weight, dim=0)
            mixed = torch.einsum("l,bltd->btd", weights, x)
            pooled = (self.time_tr(mixed) if kind == "wa_tr" else mixed).mean(dim=1)
        else:
            batch, n_layer, time, _ = x.shape
            if kind == "tl_tr_low":
                x = self.down_layer(x)
            per_layer = self.time_tr(x.reshape(batch * n_layer, time, -1)).mean(dim=1)
            pooled = self.layer_tr(per_layer.reshape(batch, n_layer, -1)).mean(dim=1)
        return self.mlp_layer(pooled)

    def frame_logits(self, features: torch.Tensor) -> torch.Tensor:
        """features ``[batch, layers, time, d_model]`` -> per-frame logits ``[batch, time, C]``.

        The head's own computation with the mean over time left out: each frame's token
        goes through the rest of the head on its own (for TL-TR after the time block, so
        it has attended over the whole window). A one-frame window's frame logits are its
        window logits; otherwise they are a reading of the head, not what it was trained
        to output (docs/events.md measures how well they localize).
        """
        self._check_features(features)
        x = features[:, : self.config.n_layer].float()
        kind = self.config.head_type
        if kind == "last_linear":
            per_frame = x[:, -1]
        elif kind == "mean_linear":
            per_frame = x.mean(dim=1)
        elif kind in ("wa_linear", "wa_tr"):
            weights = torch.softmax(self.layer_weight, dim=0)
            mixed = torch.einsum("l,bltd->btd", weights, x)
            per_frame = self.time_tr(mixed) if kind == "wa_tr" else mixed
        else:
            batch, n_layer, time, _ = x.shape
            if kind == "tl_tr_low":
                x = self.down_layer(x)
            tokens = self.time_tr(x.reshape(batch * n_layer, time, -1))
            by_frame = tokens.reshape(batch, n_layer, time, -1).transpose(1, 2)
            layers = self.layer_tr(by_frame.reshape(batch * time, n_layer, -1)).mean(dim=1)
            per_frame = layers.reshape(batch, time, -1)
        return self.mlp_layer(per_frame)

    def _check_features(self, features: torch.Tensor) -> None:
        n_layer = self.config.n_layer
        layers = {n_layer, self.config.encoder_layers or n_layer}
        if features.dim() != 4 or features.shape[1] not in layers:
            raise ValueError(
                f"expected features [batch, {n_layer}, time, {self.config.d_model}], "
                f"got {list(features.shape)}"
            )


def save_head(head: TaggingHead, path: str | os.PathLike) -> None:
    """Write weights and config to one safetensors file (no pickle)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    save_file(tensors, str(path), metadata={_CONFIG_KEY: head.config.to_json()})


def rewrite_head_config(src: str | os.PathLike, dst: str | os.PathLike, config: HeadConfig) -> None:
    """Write ``src``'s tensors unchanged (same dtype and bytes) with a new config to ``dst``.

    For adding what does not change the weights, such as per-class thresholds.
    """
    with safe_open(str(src), framework="pt", device="cpu") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    _load_state(TaggingHead(config), tensors, str(src))  # the config must fit them
    save_file(tensors, str(dst), metadata={_CONFIG_KEY: config.to_json()})


def load_head(path: str | os.PathLike, device: str | torch.device = "cpu") -> TaggingHead:
    """Read a head saved by :func:`save_head`; raises :class:`HeadError` with the reason."""
    path = Path(path)
    if not path.is_file():
        raise HeadError(f"head checkpoint not found: {path}")
    expected = "expected a whisper-at head (.safetensors with its config in the metadata)"
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for a bad header
        found = (
            "a torch checkpoint (an original Whisper-AT head loads when named .pth)"
            if zipfile.is_zipfile(path)
            else f"not a readable safetensors file ({e})"
        )
        raise HeadError(f"{path} is not a head checkpoint: {expected}; it is {found}") from e
    if _CONFIG_KEY not in metadata:
        raise HeadError(
            f"{path} is not a head checkpoint: {expected}; it is a safetensors file with no "
            "whisper-at head config in its metadata"
        )
    head = TaggingHead(HeadConfig.from_json(metadata[_CONFIG_KEY]))
    _load_state(head, tensors, str(path))
    head.source = HeadSource.from_file(path)
    return head.to(device).eval()


def _load_state(head: TaggingHead, tensors: dict[str, torch.Tensor], origin: str) -> None:
    try:
        head.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise HeadError(f"{origin} does not match its head config: {e}") from e


def import_reference_head(
    path: str | os.PathLike,
    n_layer: int,
    whisper_name: str = "",
    whisper_sha256: str = "",
) -> TaggingHead:
    """Load an original Whisper-AT checkpoint (``<size>_ori.pth`` / ``<size>_low.pth``).

    Those hold ``at_model.*`` tensors in a plain torch pickle; it is read with
    ``weights_only=True`` so no pickled code runs. They were trained on 10 s
    windows with the encoder input trimmed to 10 s, which the config records.
    """
    path = Path(path)
    if not path.is_file():
        raise HeadError(f"reference head not found: {path}")
    expected = (
        "expected an original Whisper-AT checkpoint (<size>_ori.pth or <size>_low.pth, "
        "a torch file of at_model.* tensors)"
    )
    try:
        raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises anything from KeyError to UnpicklingError here
        # torch's own message advises weights_only=False, which would run pickled code
        found = (
            "a torch file holding Python objects besides tensors, which are not loaded "
            "because unpickling them could run code"
            if isinstance(e, pickle.UnpicklingError) and zipfile.is_zipfile(path)
            else "not a torch checkpoint"
        )
        raise HeadError(f"{path} is not a head checkpoint: {expected}; it is {found}") from e
    if isinstance(raw, dict) and "state_dict" in raw:
        raw = raw["state_dict"]
    if not isinstance(raw, dict):
        raise HeadError(
            f"{path} is not a head checkpoint: {expected}; it holds a {type(raw).__name__}"
        )
    head = head_from_reference_state(raw, n_layer, whisper_name, whisper_sha256, str(path))
    head.source = HeadSource.from_file(path)
    return head


def head_from_reference_state(
    state: dict[str, torch.Tensor],
    n_layer: int,
    whisper_name: str = "",
    whisper_sha256: str = "",
    origin: str = "reference state dict",
) -> TaggingHead:
    """Build a TL-TR head from reference ``at_model.*`` tensors, inferring its shape."""
    prefix = "at_model."
    tensors = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if "mlp_layer.1.weight" not in tensors:
        raise HeadError(f"{origin} is not a Whisper-AT head: no at_model.mlp_layer.1.weight")
    n_classes, width = tensors["mlp_layer.1.weight"].shape
    low = "down_layer.1.weight" in tensors
    d_model = tensors["down_layer.1.weight"].shape[1] if low else width
    labels = audioset_labels()
    if n_classes != len(labels):
        raise HeadError(f"{origin} has {n_classes} outputs; reference heads have {len(labels)}")
    config = HeadConfig(
        head_type="tl_tr_low" if low else "tl_tr",
        n_layer=n_layer,
        d_model=d_model,
        proj_dim=width if low else None,
        label_names=list(labels.names),
        label_ids=list(labels.ids),
        whisper_name=whisper_name,
        whisper_sha256=whisper_sha256,
        window_seconds=10.0,
        encoder_input_seconds=10.0,
    )
    head = TaggingHead(config)
    _load_state(head, tensors, origin)
    return head.eval()
