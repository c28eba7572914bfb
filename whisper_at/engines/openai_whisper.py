"""The PyTorch engine: openai-whisper's own ``transcribe``, unchanged, over the tapped encoder."""

from __future__ import annotations

from typing import Any

import numpy as np
import whisper
from whisper.audio import N_FRAMES, N_SAMPLES, log_mel_spectrogram

from ..precision import Precision
from ..tap import EncoderTap
from ..weights import LoadedWhisper
from . import ChunkSink, EngineError, SegmentSink, WindowLocator, WindowSink

LIBRARY = f"openai-whisper {whisper.__version__}"


class OpenAIWhisperEngine:
    """Transcripts are exactly openai-whisper's: its loop, its decoder, its options.

    openai-whisper's ``transcribe`` returns its segments all at once, so ``on_segment``
    hears of them when a call is done; it has no batched pipeline.
    """

    name = "torch"
    batched = False

    def __init__(self, loaded: LoadedWhisper, tap: EncoderTap, precision: Precision) -> None:
        self.model = loaded.model
        self.tap = tap
        self.fp16 = precision.encoder == "float16"

    def transcribe(
        self,
        samples: np.ndarray,
        on_window: WindowSink | None,
        on_segment: SegmentSink | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        if "fp16" in options and bool(options["fp16"]) != self.fp16:
            raise EngineError("fp16 is set by the model's precision (load_model(precision=...))")
        options["fp16"] = self.fp16
        options.setdefault("verbose", None)
        if on_window is not None:
            # the log-mel openai-whisper will slice its windows from (in fp16 on the GPU)
            mel = log_mel_spectrogram(samples, self.model.dims.n_mels, padding=N_SAMPLES)
            if options["fp16"]:
                mel = mel.half().float()
            locator = WindowLocator(mel, mel.shape[-1] - N_FRAMES)
            self.tap.listener = locator.listener(on_window, LIBRARY)
        try:
            result = whisper.transcribe(self.model, samples, **options)
        finally:
            self.tap.listener = None
            self.tap.forget()
        for segment in result["segments"] if on_segment is not None else ():
            on_segment(segment)
        return result

    def transcribe_chunks(
        self,
        samples: np.ndarray,
        chunks: list[tuple[int, int]],
        on_chunk: ChunkSink | None,
        batch_size: int,
        **options: Any,
    ) -> dict[str, Any]:
        raise EngineError("openai-whisper has no batched pipeline: use engine='ct2'")
