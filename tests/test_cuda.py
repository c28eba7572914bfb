"""GPU paths (fp16 encoder input, window placement, batching); skipped without CUDA.

Random weights of tiny's shape: the lent GPU machines cannot receive the real
weights (its transfer limit is below their size), and these tests check mechanics.
"""

import logging
import math

import numpy as np
import pytest
import torch
from whisper.model import ModelDimensions, Whisper

from whisper_at.heads import HeadConfig, TaggingHead
from whisper_at.labels import audioset_labels
from whisper_at.pipeline import WhisperAT
from whisper_at.weights import LoadedWhisper

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TINY = ModelDimensions(80, 1500, 384, 6, 4, 51864, 448, 384, 6, 4)


def build(device: str) -> WhisperAT:
    torch.manual_seed(0)
    model = Whisper(TINY).eval()
    labels = audioset_labels()
    head = TaggingHead(HeadConfig("tl_tr", 4, 384, list(labels.names), list(labels.ids)))
    loaded = LoadedWhisper(model=model.to(device), name="tiny-random", sha256="", source="random",
                           ct2_dir=None)  # fmt: skip
    return WhisperAT(loaded, head.eval())


@pytest.fixture(scope="module")
def audio():
    t = np.arange(75 * 16000) / 16000
    rng = np.random.default_rng(0)
    return (
        0.2 * np.sin(2 * np.pi * 440 * t) * (t % 7 < 4) + 0.05 * rng.standard_normal(t.size)
    ).astype(np.float32)


def test_tags_only_on_gpu_match_cpu(audio):
    gpu = build("cuda").tag(audio, at_time_res=2.0, batch_size=4)
    cpu = build("cpu").tag(audio, at_time_res=2.0, batch_size=4)
    assert gpu.logits.shape == cpu.logits.shape == (math.ceil(75 / 2.0), 527)
    torch.testing.assert_close(gpu.logits, cpu.logits, atol=0.05, rtol=0.05)


def test_transcription_windows_are_placed_in_fp16(audio, caplog):
    model = build("cuda")
    with caplog.at_level(logging.WARNING, logger="whisper_at"):
        result = model.transcribe(audio, at_time_res=2.0, temperature=0.0, sample_len=16)
    assert result["audio_tag"].shape == (math.ceil(75 / 2.0), 527)
    assert not [r for r in caplog.records if "not tagged" in r.getMessage()]
    assert model.tap.n_passes >= 3  # 75 s: at least three 30 s windows, each placed
