"""Decoding engines: what turns encoder passes into text, behind one small interface.

An engine runs a maintained Whisper implementation's own transcription loop over
the tapped PyTorch encoder, and hands every encoded window, placed in the file,
to the tagging side. Nothing of the decoding is re-implemented here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
from whisper.audio import N_FRAMES

from ..precision import Precision
from ..tap import EncoderPass, EncoderTap, PassListener
from ..weights import LoadedWhisper

logger = logging.getLogger("whisper_at")

# (every block's output [n_layer, encoder frames, d], window start and audio length in mel frames)
WindowSink = Callable[[torch.Tensor, int, int], None]
# (chunk number, every block's output [n_layer, encoder frames, d], audio length in mel frames)
ChunkSink = Callable[[int, torch.Tensor, int], None]
# a segment dict (openai-whisper's keys), on the time line of the samples given
SegmentSink = Callable[[dict[str, Any]], None]
ENGINES = ("auto", "torch", "ct2")


class EngineError(ValueError):
    """An engine cannot run with this model or these options."""


class WindowPlacementError(RuntimeError):
    """An encoded window could not be placed in the audio.

    The engines place windows by how the decoding library slices and pads them (the
    versions pinned in pyproject.toml); another version of it can do otherwise, and
    untagged windows must not pass silently.
    """


class Engine(Protocol):
    """What the pipeline needs of a decoder: a transcription loop that shows it every
    encoder pass, and, where ``batched``, a batched one over given chunks."""

    name: str  # "torch" or "ct2"
    batched: bool  # offers transcribe_chunks

    def transcribe(
        self,
        samples: np.ndarray,
        on_window: WindowSink | None,
        on_segment: SegmentSink | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """openai-whisper-style result dict; ``on_window`` gets every encoded window,
        ``on_segment`` every segment as soon as the engine has it."""
        ...

    def transcribe_chunks(
        self,
        samples: np.ndarray,
        chunks: list[tuple[int, int]],
        on_chunk: ChunkSink | None,
        batch_size: int,
        **options: Any,
    ) -> dict[str, Any]:
        """Decode ``(start, end)`` sample chunks of ``samples`` independently, in batches;
        ``on_chunk(k, layers, valid mel frames)`` gets chunk ``k``'s encoder pass."""
        ...


def resolve_engine(name: str, loaded: LoadedWhisper) -> str:
    """ "auto": ct2 on the CPU where the weights come with a CTranslate2 folder, else torch.

    On the CPU the ct2 engine transcribes and tags in 0.89-0.97x the time faster-whisper
    takes to transcribe alone, 1.5x (tiny.en) / 2.6x (base) faster than openai-whisper
    (``benchmarks/transcribe_speed.py``, docs/performance.md); on a GPU no such
    measurement exists yet, so torch stays.
    """
    if name not in ENGINES:
        raise EngineError(f"unknown engine {name!r}; choose from {', '.join(ENGINES)}")
    if name != "auto":
        return name
    return "ct2" if loaded.model.device.type == "cpu" and loaded.ct2_dir is not None else "torch"


def make_engine(name: str, loaded: LoadedWhisper, tap: EncoderTap, precision: Precision) -> Engine:
    """The engine ``name`` (or "auto") over ``tap``, computing in ``precision``
    (see :func:`whisper_at.precision.resolve_precision`)."""
    tap.compute_dtype = precision.encoder_dtype
    name = resolve_engine(name, loaded)
    if name == "torch":
        from .openai_whisper import OpenAIWhisperEngine

        return OpenAIWhisperEngine(loaded, tap, precision)
    if name == "ct2":
        from .ct2 import CTranslate2Engine

        return CTranslate2Engine(loaded, tap, precision)
    raise EngineError(f"unknown engine {name!r}; choose from {', '.join(ENGINES)}")


class WindowLocator:
    """Finds where a 30 s window that openai-whisper encoded starts in the file.

    openai-whisper slices its windows from a log-mel of the whole file, at offsets
    that depend on what was decoded (the last one zero-padded); the encoder only
    sees the slice. The same log-mel, given here, places each slice by its content.
    Whisper's windows move forward and leave no gap, so the next one starts after
    the last start and no later than the covered end. Where content repeats exactly
    (digital silence, loops) several starts match; they give the same encoder
    output, and the latest one covers the most audio.
    """

    _PROBES = 8  # leading columns compared for every candidate before a full comparison

    def __init__(self, mel: torch.Tensor, content_frames: int) -> None:
        self.mel = mel  # [n_mels, frames]: the log-mel the engine slices its windows from
        self.content_frames = content_frames
        self._last_seek = -1
        self._covered = 0

    def valid_frames(self, seek: int) -> int:
        return min(N_FRAMES, self.content_frames - seek)

    def locate(self, window: torch.Tensor) -> int | None:
        """Start (mel frames) of ``window`` ``[n_mels, N_FRAMES]``, or None if not found."""
        seek = self._slice_start(window)
        if seek is None:
            window = window.float().cpu()
            seek = self._search(window, self._last_seek + 1, self._covered + 1, latest=True)
        if seek is None:  # a jump forward (clip_timestamps): take the first match after it
            seek = self._search(window, self._covered + 1, self._covered + 1 + 2 * N_FRAMES)
        if seek is not None:
            self._last_seek = seek
            self._covered = max(self._covered, seek + self.valid_frames(seek))
        return seek

    def _slice_start(self, window: torch.Tensor) -> int | None:
        """The start of ``window`` if it is a view into this very log-mel, else None.

        faster-whisper hands every full window to the encoder as a slice of the shared
        array, not a copy; its memory address then says where it starts, exactly and
        without comparing content (padded last windows and batches are copies and go
        through :meth:`_search`)."""
        mel = self.mel
        if window.device != mel.device or window.dtype != mel.dtype:
            return None
        if window.shape[0] != mel.shape[0] or window.stride() != mel.stride():
            return None
        offset, remainder = divmod(window.data_ptr() - mel.data_ptr(), mel.element_size())
        if remainder or not 0 <= offset <= mel.shape[-1] - window.shape[-1]:
            return None
        return offset

    def _search(
        self, window: torch.Tensor, start: int, stop: int, latest: bool = False
    ) -> int | None:
        stop = min(stop, self.content_frames)
        if start >= stop:
            return None
        seeks = torch.arange(start, stop)
        for j in range(self._PROBES):  # each probe compares only the candidates left
            valid = torch.clamp(self.content_frames - seeks, max=N_FRAMES)
            same = (
                self.mel[:, torch.clamp(seeks + j, max=self.mel.shape[-1] - 1)]
                == window[:, j : j + 1]
            ).all(dim=0)
            seeks = seeks[same | (valid <= j)]
            if len(seeks) == 0:
                return None
        candidates = seeks.tolist()
        for seek in reversed(candidates) if latest else candidates:
            n = self.valid_frames(seek)
            if torch.equal(self.mel[:, seek : seek + n], window[:, :n]):
                return seek
        return None

    def listener(self, sink: WindowSink, library: str) -> PassListener:
        """A tap listener that places each encoded window and hands it to ``sink``.

        library: the decoding library and its version, for the error when a window
        cannot be placed (:class:`WindowPlacementError`)."""

        def place(encoder_pass: EncoderPass) -> None:
            for mel, layers in zip(encoder_pass.mel, encoder_pass.layers, strict=True):
                seek = self.locate(mel)
                if seek is None:
                    raise WindowPlacementError(
                        f"an encoder window of {library} matches no place in the audio, so it "
                        "cannot be tagged; this whisper-at release was tested with the "
                        "versions pinned in its requirements: install those (pip install "
                        "whisper-at reinstalls them), or load the model with head=None"
                    )
                sink(layers, seek, self.valid_frames(seek))

        return place
