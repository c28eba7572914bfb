"""Shared fixtures: real speech from the package registries, and audio files in tmp."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from whisper_at.audio import load_audio
from whisper_at_research.corpus import SpeechClip, asterisk_prompts, librivox_clips

# Transcripts are compared with plain faster-whisper float32 and with fixed texts, and
# tags with float32 training features, so the tests pin what precision="auto" would
# otherwise choose per CPU: the decoder it measures (a busy machine may measure either
# way) and the encoder (bfloat16 on CPUs with native bfloat16); tests/test_precision.py
# checks both choices themselves.
os.environ.setdefault("WHISPER_AT_CPU_DECODER", "float32")
os.environ.setdefault("WHISPER_AT_CPU_ENCODER", "float32")

# Encoder per file suffix for generated test files; PyAV converts the sample format
# and, for Opus (48 kHz only), the rate.
ENCODERS = {
    ".wav": "pcm_s16le",
    ".flac": "flac",
    ".mp3": "libmp3lame",
    ".ogg": "libopus",
    ".m4a": "aac",
}

WriteAudio = Callable[..., Path]


@pytest.fixture(scope="module")
def one_torch_thread():
    """Training tests: two threads on a shared 2-core machine oversubscribe it (steps get
    10x slower), so a module that trains asks for one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", name="librivox_clips")
def librivox_clips_fixture() -> list[SpeechClip]:
    """The 5 LibriVox utterances (fetched from Debian once, then cached)."""
    return librivox_clips()


@pytest.fixture(scope="session", name="asterisk_prompts")
def asterisk_prompts_fixture() -> list[SpeechClip]:
    """Asterisk prompts of 6+ words (fetched from Debian once, then cached)."""
    return asterisk_prompts()


@pytest.fixture(scope="session")
def speech(librivox_clips, asterisk_prompts) -> list[tuple[SpeechClip, np.ndarray]]:
    """Nine real utterances with known text, decoded: 5 LibriVox + 4 Asterisk prompts."""
    clips = librivox_clips + asterisk_prompts[:4]
    return [(clip, load_audio(clip.path, format=clip.format)) for clip in clips]


@pytest.fixture(scope="session")
def long_speech(librivox_clips) -> np.ndarray:
    """99 s: the five LibriVox utterances, four times over (so content repeats exactly)."""
    return np.concatenate([load_audio(c.path) for c in librivox_clips] * 4)


@pytest.fixture
def tmp_audio(tmp_path: Path) -> WriteAudio:
    """Factory: ``tmp_audio(signal, sample_rate, suffix=".wav")`` writes a file, returns it.

    ``signal`` is float in [-1, 1], shaped (samples,) or (channels, samples).
    """
    counter = iter(range(1_000_000))

    def write(signal: np.ndarray, sample_rate: int, suffix: str = ".wav") -> Path:
        planar = np.ascontiguousarray(np.atleast_2d(signal), dtype=np.float32)
        layout = {1: "mono", 2: "stereo"}[planar.shape[0]]
        path = tmp_path / f"audio{next(counter)}{suffix}"
        rate = 48000 if suffix == ".ogg" else sample_rate
        with av.open(str(path), "w") as container:
            stream = container.add_stream(ENCODERS[suffix], rate=rate, layout=layout)
            frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout=layout)
            frame.sample_rate = sample_rate
            frame.pts = 0
            for packet in [*stream.encode(frame), *stream.encode(None)]:
                container.mux(packet)
        return path

    return write
