"""Hugging Face `transformers` Whisper folders (safetensors only), renamed to OpenAI names."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file
from whisper.model import ModelDimensions

from ._common import Checkpoint, WeightsError

# HF module -> OpenAI module, inside encoder/decoder layers and at the top of each stack.
_LAYER_MODULES = {
    "self_attn.q_proj": "attn.query",
    "self_attn.k_proj": "attn.key",
    "self_attn.v_proj": "attn.value",
    "self_attn.out_proj": "attn.out",
    "self_attn_layer_norm": "attn_ln",
    "encoder_attn.q_proj": "cross_attn.query",
    "encoder_attn.k_proj": "cross_attn.key",
    "encoder_attn.v_proj": "cross_attn.value",
    "encoder_attn.out_proj": "cross_attn.out",
    "encoder_attn_layer_norm": "cross_attn_ln",
    "fc1": "mlp.0",
    "fc2": "mlp.2",
    "final_layer_norm": "mlp_ln",
}
_TOP_LEVEL = {
    "encoder.conv1": "encoder.conv1",
    "encoder.conv2": "encoder.conv2",
    "encoder.embed_positions": "encoder.positional_embedding",
    "encoder.layer_norm": "encoder.ln_post",
    "decoder.embed_tokens": "decoder.token_embedding",
    "decoder.embed_positions": "decoder.positional_embedding",
    "decoder.layer_norm": "decoder.ln",
}
_LAYER = re.compile(r"^(encoder|decoder)\.layers\.(\d+)\.(.+)$")


def is_hf_folder(folder: Path) -> bool:
    try:
        return json.loads((folder / "config.json").read_text()).get("model_type") == "whisper"
    except (OSError, ValueError, AttributeError):
        return False


def weight_files(folder: Path) -> list[Path]:
    """The safetensors file(s) of the folder, in shard order; pickled weights are refused."""
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError) as exc:
            raise WeightsError(f"{index}: unreadable shard index: {exc}") from exc
        return [folder / shard for shard in shards]
    if any(folder.glob("pytorch_model*.bin")):
        raise WeightsError(
            f"{folder}: only pickled pytorch_model.bin weights found; they can run code, so they "
            "are not loaded. Re-save the model with save_pretrained(..., safe_serialization=True)"
        )
    raise WeightsError(f"{folder}: Hugging Face Whisper folder without model.safetensors")


def _openai_name(hf_name: str) -> str | None:
    name = hf_name.removeprefix("model.")
    module, _, param = name.rpartition(".")
    if module in _TOP_LEVEL:
        target = _TOP_LEVEL[module]
        return target if target.endswith("positional_embedding") else f"{target}.{param}"
    m = _LAYER.match(module)
    if m and m.group(3) in _LAYER_MODULES:
        return f"{m.group(1)}.blocks.{m.group(2)}.{_LAYER_MODULES[m.group(3)]}.{param}"
    return None


def _dims(config: dict[str, Any], where: Path) -> ModelDimensions:
    if config.get("activation_function", "gelu") != "gelu" or config.get("scale_embedding"):
        raise WeightsError(f"{where}: not an OpenAI-architecture Whisper (activation/scaling)")
    d_model = config["d_model"]
    return ModelDimensions(
        n_mels=config["num_mel_bins"],
        n_audio_ctx=config["max_source_positions"],
        n_audio_state=d_model,
        n_audio_head=config["encoder_attention_heads"],
        n_audio_layer=config["encoder_layers"],
        n_vocab=config["vocab_size"],
        n_text_ctx=config["max_target_positions"],
        n_text_state=d_model,
        n_text_head=config["decoder_attention_heads"],
        n_text_layer=config["decoder_layers"],
    )


def read_hf_folder(folder: Path, files: list[Path]) -> Checkpoint:
    config_path = folder / "config.json"
    try:
        dims = _dims(json.loads(config_path.read_text()), config_path)
    except KeyError as exc:
        raise WeightsError(f"{config_path}: missing Whisper setting {exc}") from exc
    state_dict = {}
    for file in files:
        try:
            tensors = load_file(file)
        except (OSError, SafetensorError) as exc:
            raise WeightsError(f"{file}: unreadable safetensors file: {exc}") from exc
        for hf_name, tensor in tensors.items():
            if hf_name == "proj_out.weight":
                continue  # tied to the token embedding in OpenAI's model
            name = _openai_name(hf_name)
            if name is None:
                raise WeightsError(f"{file}: not a Whisper checkpoint: unexpected tensor {hf_name}")
            state_dict[name] = tensor
    generation_config = folder / "generation_config.json"
    heads = None
    if generation_config.is_file():
        heads = json.loads(generation_config.read_text()).get("alignment_heads")
    return Checkpoint(dims=dims, state_dict=state_dict, alignment_heads=heads)
