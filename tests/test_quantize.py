"""int8 dynamic quantization: the linear layers change, the tap and the text hold.

Real tiny.en weights, real speech, the shipped head (tag quality is what is at stake).
"""

import pytest
import torch.ao.nn.quantized.dynamic as quantized
from torch import nn

import whisper_at
from whisper_at.analysis.wer import wer
from whisper_at.quantize import quantize_int8


def quantized_layers(module: nn.Module) -> int:
    return sum(isinstance(m, quantized.Linear) for m in module.modules())


@pytest.fixture(scope="module")
def models():
    return {
        "float32": whisper_at.load_model("tiny.en", device="cpu"),
        "int8": whisper_at.load_model("tiny.en", device="cpu", int8=True),
    }


def test_every_linear_layer_of_the_encoder_is_int8(models):
    encoder = models["int8"].whisper.encoder.encoder
    assert quantized_layers(encoder) == 4 * 6  # tiny: 4 blocks x (q, k, v, out, fc1, fc2)
    assert quantized_layers(models["float32"].whisper.encoder) == 0
    assert models["int8"].engine.name == "ct2"
    assert models["int8"].engine.model.model.compute_type == "int8_float32"


def test_int8_keeps_transcripts_and_tags_close(models, speech):
    texts = [clip.text for clip, _ in speech]
    hyps = {
        p: [m.transcribe(a, temperature=0.0)["text"] for _, a in speech] for p, m in models.items()
    }
    assert wer(texts, hyps["float32"]) < 0.08
    assert wer(texts, hyps["int8"]) < 0.10
    # the benchmark measured up to 0.10 on 10 s windows and 0.13 here on 2 s windows with
    # the shipped head (docs/performance.md): int8 moves tags a little, and may swap
    # near-tied ones (Speech / Narration), but keeps the top tag among the top three
    for _, audio in speech[:4]:
        probs = {p: m.tag(audio, at_time_res=2.0).probabilities for p, m in models.items()}
        assert (probs["float32"] - probs["int8"]).abs().max() < 0.2
        top3 = probs["float32"].topk(3).indices
        assert (top3 == probs["int8"].argmax(1, keepdim=True)).any(1).all()


def test_int8_torch_engine_quantizes_the_decoder_too(speech):
    model = whisper_at.load_model("tiny.en", device="cpu", head=None, engine="torch", int8=True)
    assert quantized_layers(model.whisper.decoder) == 4 * (4 + 4 + 2)  # self, cross, mlp
    clip, audio = speech[0]
    assert wer([clip.text], [model.transcribe(audio, temperature=0.0)["text"]]) < 0.15


def test_int8_needs_the_cpu():
    on_meta = nn.Linear(4, 4, device="meta")
    with pytest.raises(ValueError, match="CPU only"):
        quantize_int8(nn.Sequential(on_meta))
