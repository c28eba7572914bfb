"""OpenAI `.pt` checkpoints: by name from openai-whisper's download cache, or by path.

Never downloads and never runs pickled code (`torch.load(weights_only=True)`).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
import whisper

from ._common import Checkpoint, WeightsError, check_sha256, dims_from_mapping, sha256_files


def search_dirs(download_root: str | os.PathLike | None) -> list[Path]:
    """Where openai-whisper keeps `.pt` files: `download_root` if given, else its default caches."""
    if download_root is not None:
        return [Path(download_root)]
    home_cache = Path.home() / ".cache"
    dirs = [Path(os.environ.get("XDG_CACHE_HOME", home_cache)) / "whisper", home_cache / "whisper"]
    return list(dict.fromkeys(dirs))


def pt_url(name: str) -> str:
    """Where openai-whisper downloads the `.pt` of an official name (its table)."""
    return whisper._MODELS[name]


def pt_filename(name: str) -> str:
    """The file name openai-whisper stores an official name's `.pt` under."""
    return os.path.basename(pt_url(name))


def expected_sha256(name: str) -> str:
    """openai-whisper embeds each file's sha256 as the second-to-last URL component."""
    return pt_url(name).split("/")[-2]


def find_pt(name: str, download_root: str | os.PathLike | None) -> Path | None:
    filename = pt_filename(name)
    return next(
        (d / filename for d in search_dirs(download_root) if (d / filename).is_file()), None
    )


def name_for_sha256(sha256: str) -> str | None:
    """The official name of a `.pt` file with this hash, so a renamed copy keeps its heads."""
    return next((n for n in whisper._MODELS if expected_sha256(n) == sha256), None)


def read_pt(path: Path) -> Checkpoint:
    """An OpenAI checkpoint dict {"dims", "model_state_dict"} of any size or mel count."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" not in str(exc).upper():  # not a pickle at all, rather than a refused one
            raise WeightsError(f"{path}: not a readable PyTorch checkpoint") from exc
        detail = next((line for line in str(exc).splitlines() if "GLOBAL" in line.upper()), "")
        raise WeightsError(
            f"{path}: contains pickled code; refusing to execute it ({detail.strip()})"
        ) from exc
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint: {exc}") from exc
    if not (isinstance(checkpoint, dict) and {"dims", "model_state_dict"} <= checkpoint.keys()):
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise WeightsError(
            f"{path}: not a Whisper checkpoint: expected keys 'dims' and 'model_state_dict', "
            f"found {found}"
        )
    return Checkpoint(
        dims=dims_from_mapping(checkpoint["dims"], path), state_dict=checkpoint["model_state_dict"]
    )


def load_named_pt(name: str, path: Path) -> tuple[Checkpoint, str]:
    """Verify a cached official `.pt` against the hash in its URL, then read it."""
    sha256 = sha256_files([path])
    check_sha256(str(path), expected_sha256(name), sha256)
    checkpoint = read_pt(path)
    checkpoint.alignment_heads = whisper._ALIGNMENT_HEADS[name]
    return checkpoint, sha256
