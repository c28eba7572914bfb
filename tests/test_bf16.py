"""bfloat16 encoder: the encoder computes in bf16, tags and text stay close to float32's.

Real tiny.en weights, real speech, the shipped head (tag quality is what is at stake).
"""

import pytest
import torch

import whisper_at
from whisper_at.analysis.wer import wer
from whisper_at.cli import main


@pytest.fixture(scope="module")
def models():
    return {
        "float32": whisper_at.load_model("tiny.en", device="cpu"),
        "bf16": whisper_at.load_model("tiny.en", device="cpu", bf16=True),
    }


def block_dtypes(model, run) -> set[torch.dtype]:
    """The dtypes the first encoder block computed in while ``run()`` ran."""
    seen = set()
    block = model.whisper.encoder.encoder.blocks[0]
    handle = block.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
    try:
        run()
    finally:
        handle.remove()
    return seen


def test_the_encoder_computes_in_bfloat16_for_transcripts_and_tags(models, speech):
    _, audio = speech[0]
    bf16, float32 = models["bf16"], models["float32"]
    assert bf16.engine.name == "ct2"
    assert block_dtypes(bf16, lambda: bf16.transcribe(audio, temperature=0.0)) == {torch.bfloat16}
    assert block_dtypes(bf16, lambda: bf16.tag(audio)) == {torch.bfloat16}
    assert block_dtypes(float32, lambda: float32.tag(audio)) == {torch.float32}


def test_bf16_keeps_transcripts_and_tags_close(models, speech):
    texts = [clip.text for clip, _ in speech]
    hyps = {
        p: [m.transcribe(a, temperature=0.0)["text"] for _, a in speech] for p, m in models.items()
    }
    assert wer(texts, hyps["float32"]) < 0.08
    assert wer(texts, hyps["bf16"]) < 0.08
    # measured: at most 0.009 here (2 s windows), 0.022 in benchmarks/quantization.py
    # (10 s windows of speech over sounds), top tags unchanged; float32's WER 2.6% both
    for _, audio in speech[:4]:
        probs = {p: m.tag(audio, at_time_res=2.0).probabilities for p, m in models.items()}
        assert (probs["float32"] - probs["bf16"]).abs().max() < 0.05
        top3 = probs["float32"].topk(3).indices
        assert (top3 == probs["bf16"].argmax(1, keepdim=True)).any(1).all()


def test_bf16_needs_the_ct2_engine(speech, capsys):
    with pytest.raises(ValueError, match="bf16 needs the ct2 engine"):
        whisper_at.load_model("tiny.en", device="cpu", engine="torch", bf16=True)
    clip, _ = speech[0]
    assert main([str(clip.path), "--engine", "torch", "--bf16"]) == 2
    assert "bf16 needs the ct2 engine" in capsys.readouterr().err
