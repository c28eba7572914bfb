"""The reference Whisper-AT package's module-level API, for code written against it.

Users of the reference package (PyPI ``whisper-at`` 0.5, ``import whisper_at as
whisper``) switch by changing the install only: the names it exports behave as
its documentation says, and :func:`parse_at_label` reads a result exactly as the
reference's does (window times on the ``at_time_res`` grid, the top ``top_k`` of
all classes filtered afterwards). The typed API (:class:`~whisper_at.TaggingResult`)
keeps the true times. docs/compatibility.md lists what matches and each deliberate
difference.

Nothing here imports :mod:`whisper_at.pipeline` (the pipeline imports this module);
functions taking a model call its methods, so they take a plain openai-whisper
model as well as a :class:`~whisper_at.WhisperAT`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import whisper
from whisper.audio import pad_or_trim
from whisper.decoding import DecodingOptions, DecodingResult
from whisper.model import ModelDimensions
from whisper.tokenizer import LANGUAGES, Tokenizer

from . import audio as _audio
from .labels import translated_names
from .tagging import TaggingResult

if TYPE_CHECKING:
    from .pipeline import WhisperAT

__all__ = [
    "DecodingOptions",
    "DecodingResult",
    "ModelDimensions",
    "decode",
    "detect_language",
    "load_audio",
    "log_mel_spectrogram",
    "pad_or_trim",
    "parse_at_label",
    "print_label_name",
    "print_support_language",
    "transcribe",
    "warn_at_time_res",
]


def parse_at_label(
    result: dict[str, Any],
    language: str = "follow_asr",
    top_k: int = 5,
    p_threshold: float = -1,
    include_class_list: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """The reference's reading of a transcription result, value for value.

    Per ``audio_tag`` row ``i``: ``{'time': {'start': i * at_time_res, 'end': (i + 1)
    * at_time_res}, 'audio tags': [(name, logit), ...]}``, where the tags are those of
    the ``top_k`` highest logits that exceed ``p_threshold`` (a logit: -1 is
    probability 0.27) and whose class is in ``include_class_list`` (default: all). As
    in the reference the top ``top_k`` are taken first and filtered afterwards, and
    the last window ends on the grid, past the end of the audio (the true end is
    ``TaggingResult.from_result(result).window_bounds(i)``). "All classes" are those
    the head reports: a head trained on some AudioSet classes never names the others.
    Names follow ``language`` ("follow_asr": the transcript's); one without
    translated names warns and uses English, as the reference does.
    """
    tagging = TaggingResult.from_result(result)
    res = result["at_time_res"]  # as the caller gave it: 10 stays an int, as in the reference
    names = tagging.labels.names
    if tagging.labels.is_audioset:
        code = result["language"] if language == "follow_asr" else language
        translated = translated_names(code) if isinstance(code, str) else None
        if translated is None:
            warnings.warn(
                f"{code} language not supported. Using English label names; pass language= "
                "for the label names of a supported language (whisper_at.print_support_language())",
                stacklevel=2,
            )
        else:
            names = translated
    included = None if include_class_list is None else {int(c) for c in include_class_list}
    candidates = torch.tensor(tagging.reported_classes, dtype=torch.long)
    k = max(0, min(top_k, len(candidates)))
    parsed = []
    for i, row in enumerate(tagging.logits):
        values, order = torch.topk(row[candidates], k=k)
        tags = [
            (names[index], value)
            for value, index in zip(values.tolist(), candidates[order].tolist(), strict=True)
            if value > p_threshold and (included is None or index in included)
        ]
        parsed.append({"time": {"start": i * res, "end": (i + 1) * res}, "audio tags": tags})
    return parsed


def print_label_name(language: str = "en") -> None:
    """Print ``index: I : NAME`` for every AudioSet class, names in ``language``."""
    names = translated_names(language)
    if names is None:
        raise ValueError(
            f"no label names in {language!r}; the supported codes are printed by "
            "whisper_at.print_support_language()"
        )
    for i, name in enumerate(names):
        print(f"index: {i:d} : {name}")


def print_support_language() -> None:
    """Print ``language code: CODE : LANGUAGE`` for every language with label names."""
    for code, language in LANGUAGES.items():  # the reference's order: Whisper's
        if translated_names(code) is not None:
            print(f"language code: {code} : {language}")


def warn_at_time_res(at_time_res: float, trained_seconds: float, stacklevel: int = 2) -> None:
    """Warn (a ``UserWarning``, as the reference) when tagging at another window than
    the head was trained on: tags may be worse; transcripts are not affected."""
    if at_time_res != trained_seconds:
        warnings.warn(
            f"at_time_res is {at_time_res:.2f} s but the tagging head was trained on "
            f"{trained_seconds:g} s windows; a mismatched resolution may lower tagging "
            "quality (transcription is not affected)",
            stacklevel=stacklevel + 1,
        )


def transcribe(
    model: WhisperAT, audio: str | os.PathLike | np.ndarray | torch.Tensor, **options: Any
) -> dict[str, Any]:
    """openai-whisper's and the reference's ``transcribe(model, audio, ...)``:
    ``model.transcribe(audio, **options)`` (``at_time_res`` included)."""
    return model.transcribe(audio, **options)


def decode(
    model: WhisperAT,
    mel: torch.Tensor,
    options: DecodingOptions | None = None,
    **kwargs: Any,
) -> DecodingResult | list[DecodingResult]:
    """openai-whisper's ``decode(model, mel, options)`` for 30 s log-mel windows; no tags,
    as the reference's ``decode`` gives none."""
    return model.decode(mel, options or DecodingOptions(), **kwargs)


def detect_language(
    model: WhisperAT, mel: torch.Tensor, tokenizer: Tokenizer | None = None
) -> tuple[torch.Tensor, dict[str, float] | list[dict[str, float]]]:
    """openai-whisper's ``detect_language(model, mel)``: language tokens and probabilities."""
    return model.detect_language(mel, tokenizer)


def load_audio(file: str | os.PathLike, sr: int = _audio.SAMPLE_RATE) -> np.ndarray:
    """openai-whisper's ``load_audio(file, sr=16000)``: mono float32 samples, decoded with
    PyAV (no ``ffmpeg`` program needed). Whisper reads 16 kHz; other rates are refused."""
    if sr != _audio.SAMPLE_RATE:
        raise ValueError(f"load_audio decodes to Whisper's {_audio.SAMPLE_RATE} Hz only; got {sr}")
    return _audio.load_audio(file)


def log_mel_spectrogram(
    audio: str | os.PathLike | np.ndarray | torch.Tensor,
    n_mels: int = 80,
    padding: int = 0,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """openai-whisper's ``log_mel_spectrogram``; a path is decoded by :func:`load_audio`."""
    if isinstance(audio, str | os.PathLike):
        audio = load_audio(audio)
    return whisper.log_mel_spectrogram(audio, n_mels=n_mels, padding=padding, device=device)
