"""Pure-numpy reader of CTranslate2 Whisper folders (model.bin binary version 6, WhisperSpec).

Layout and name mapping: docs/weights.md ("CTranslate2 model.bin layout"). The file is
memory-mapped copy-on-write, so tensors are views that torch can wrap without copying.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from whisper.model import ModelDimensions

from ._common import Checkpoint, WeightsError

BINARY_VERSION = 6
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: np.uint16}
_BF16 = 5

# CT2 sub-layer scope -> OpenAI module name (inside blocks.i); fused projections are split below.
_LAYER_MODULES = {
    "self_attention/layer_norm": "attn_ln",
    "self_attention/linear_1": "attn.out",
    "attention/layer_norm": "cross_attn_ln",
    "attention/linear_0": "cross_attn.query",
    "attention/linear_2": "cross_attn.out",
    "ffn/layer_norm": "mlp_ln",
    "ffn/linear_0": "mlp.0",
    "ffn/linear_1": "mlp.2",
}
# Fused projections: CT2 scope -> OpenAI modules of the equal row blocks (key has no bias).
_FUSED = {
    "self_attention/linear_0": ("attn.query", "attn.key", "attn.value"),
    "attention/linear_1": ("cross_attn.key", "cross_attn.value"),
}
_TOP_LEVEL = {
    "encoder/conv1": "encoder.conv1",
    "encoder/conv2": "encoder.conv2",
    "encoder/layer_norm": "encoder.ln_post",
    "decoder/layer_norm": "decoder.ln",
    "decoder/embeddings": "decoder.token_embedding",
}
_PARAMS = {"weight": "weight", "bias": "bias", "gamma": "weight", "beta": "bias"}
_LAYER = re.compile(r"^(encoder|decoder)/layer_(\d+)/(.+)$")


class _Reader:
    """Sequential reader of model.bin header fields; reading past the end is "truncated"."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.buf = np.memmap(path, dtype=np.uint8, mode="c")
        except ValueError as exc:  # numpy cannot map an empty file
            raise WeightsError(f"{path}: model.bin is truncated (empty)") from exc
        self.pos = 0

    def take(self, n: int) -> np.ndarray:
        if self.pos + n > len(self.buf):
            raise WeightsError(
                f"{self.path}: model.bin is truncated ({len(self.buf)} bytes; "
                f"needs more than {self.pos + n})"
            )
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)).tobytes())[0]

    def string(self) -> str:
        return self.take(self.unpack("H")).tobytes()[:-1].decode("utf-8")


def read_model_bin(path: Path) -> dict[str, np.ndarray]:
    """All variables of a CTranslate2 model.bin by name, aliases (shared tensors) included."""
    reader = _Reader(path)
    version = reader.unpack("I")
    if version != BINARY_VERSION:
        raise WeightsError(
            f"{path}: unsupported CTranslate2 binary version {version} (expected {BINARY_VERSION})"
        )
    spec = reader.string()
    if spec != "WhisperSpec":
        raise WeightsError(f"{path}: not a Whisper model: CTranslate2 spec is {spec!r}")
    reader.unpack("I")  # spec revision: the variable names below are checked instead
    variables: dict[str, np.ndarray] = {}
    for _ in range(reader.unpack("I")):
        name = reader.string()
        shape = tuple(reader.unpack("I") for _ in range(reader.unpack("B")))
        dtype_id = reader.unpack("B")
        if dtype_id not in _DTYPES:
            raise WeightsError(f"{path}: unknown dtype code {dtype_id} for {name}")
        array = reader.take(reader.unpack("I")).view(_DTYPES[dtype_id]).reshape(shape)
        if dtype_id == _BF16:  # numpy has no bfloat16: widen the bits into float32
            array = (array.astype(np.uint32) << 16).view(np.float32)
        variables[name] = array
    for _ in range(reader.unpack("I")):
        alias, target = reader.string(), reader.string()
        if target not in variables:
            raise WeightsError(f"{path}: alias {alias} of unknown variable {target}")
        variables[alias] = variables[target]
    return variables


def _openai_names(ct2_name: str) -> tuple[str, ...] | None:
    """OpenAI names of the equal row blocks of a CT2 variable, or None if it has no counterpart."""
    scope, _, param = ct2_name.rpartition("/")
    if scope.endswith("/position_encodings"):
        return (scope.split("/")[0] + ".positional_embedding",)
    if param not in _PARAMS:
        return None
    if m := _LAYER.match(scope):
        side, index, sub = m.groups()
        prefix, modules = f"{side}.blocks.{index}.", _FUSED.get(sub) or (_LAYER_MODULES.get(sub),)
    else:
        prefix, modules = "", (_TOP_LEVEL.get(scope),)
    if None in modules:
        return None
    return tuple(f"{prefix}{module}.{_PARAMS[param]}" for module in modules)


def _convert(variables: dict[str, np.ndarray], path: Path) -> dict[str, torch.Tensor]:
    state_dict: dict[str, torch.Tensor] = {}
    converted: set[int] = set()
    for name, array in tqdm(
        variables.items(), desc="CTranslate2 -> PyTorch", unit="tensor", delay=2
    ):
        if array.ndim == 0 or name == "decoder/projection/weight":
            continue  # scalars are options; the projection is tied to the embedding
        if id(array) in converted:  # an alias: own memory, so safetensors can save both
            array = array.copy()
        converted.add(id(array))
        targets = _openai_names(name)
        if targets is None:
            raise WeightsError(f"{path}: not a Whisper checkpoint: unexpected variable {name}")
        blocks = np.split(array, len(targets), axis=0)
        for target, block in zip(targets, blocks, strict=True):
            if target.endswith("key.bias"):
                if np.any(block):
                    raise WeightsError(f"{path}: {name} has a non-zero key bias; not Whisper")
                continue
            state_dict[target] = torch.from_numpy(block)
    return state_dict


def _scalar(variables: dict[str, np.ndarray], name: str, path: Path) -> int:
    try:
        return int(variables[name])
    except KeyError as exc:
        raise WeightsError(f"{path}: not a Whisper checkpoint: missing {name}") from exc


def _dims(variables: dict[str, np.ndarray], path: Path) -> ModelDimensions:
    def shape(name: str) -> tuple[int, ...]:
        if name not in variables:
            raise WeightsError(f"{path}: not a Whisper checkpoint: missing {name}")
        return variables[name].shape

    def layers(side: str) -> int:
        return len({m.group(1) for n in variables if (m := re.match(rf"{side}/layer_(\d+)/", n))})

    n_audio_ctx, n_audio_state = shape("encoder/position_encodings/encodings")
    n_text_ctx, n_text_state = shape("decoder/position_encodings/encodings")
    return ModelDimensions(
        n_mels=shape("encoder/conv1/weight")[1],
        n_audio_ctx=n_audio_ctx,
        n_audio_state=n_audio_state,
        n_audio_head=_scalar(variables, "encoder/num_heads", path),
        n_audio_layer=layers("encoder"),
        n_vocab=shape("decoder/embeddings/weight")[0],
        n_text_ctx=n_text_ctx,
        n_text_state=n_text_state,
        n_text_head=_scalar(variables, "decoder/num_heads", path),
        n_text_layer=layers("decoder"),
    )


def _check_folder(folder: Path) -> Path:
    """The model.bin of a CTranslate2 folder, or a WeightsError saying what is missing."""
    for required in ("model.bin", "config.json"):
        if not (folder / required).is_file():
            raise WeightsError(f"{folder}: not a CTranslate2 model folder: no {required}")
    return folder / "model.bin"


def read_ct2_folder(folder: Path) -> Checkpoint:
    """Convert a CTranslate2 Whisper folder to an OpenAI-named fp16/fp32 state dict."""
    model_bin = _check_folder(folder)
    variables = read_model_bin(model_bin)
    quantized = sorted(n for n in variables if n.endswith("_scale"))
    if quantized:
        raise WeightsError(
            f"{model_bin}: int8/int16-quantized CTranslate2 models cannot be converted back to "
            f"PyTorch exactly (e.g. {quantized[0]}); use a float16 or float32 conversion"
        )
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{folder / 'config.json'}: unreadable: {exc}") from exc
    return Checkpoint(
        dims=_dims(variables, model_bin),
        state_dict=_convert(variables, model_bin),
        alignment_heads=config.get("alignment_heads"),
    )
