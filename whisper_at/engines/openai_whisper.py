"""The PyTorch engine: openai-whisper's own ``transcribe``, unchanged, over the tapped encoder."""

from __future__ import annotations

from typing import Any

import numpy as np
import whisper
from whisper.audio import N_FRAMES, N_SAMPLES, log_mel_spectrogram

from ..tap import EncoderTap
from ..weights import LoadedWhisper
from . import WindowLocator, WindowSink


class OpenAIWhisperEngine:
    """Transcripts are exactly openai-whisper's: its loop, its decoder, its options."""

    name = "torch"

    def __init__(self, loaded: LoadedWhisper, tap: EncoderTap) -> None:
        self.model = loaded.model
        self.tap = tap

    def transcribe(
        self, samples: np.ndarray, on_window: WindowSink | None, **options: Any
    ) -> dict[str, Any]:
        options.setdefault("fp16", self.model.device.type == "cuda")
        options.setdefault("verbose", None)
        if on_window is not None:
            # the log-mel openai-whisper will slice its windows from (in fp16 on the GPU)
            mel = log_mel_spectrogram(samples, self.model.dims.n_mels, padding=N_SAMPLES)
            if options["fp16"]:
                mel = mel.half().float()
            self.tap.listener = WindowLocator(mel, mel.shape[-1] - N_FRAMES).listener(on_window)
        try:
            return whisper.transcribe(self.model, samples, **options)
        finally:
            self.tap.listener = None
            self.tap.forget()
