"""Lower precision: int8 dynamic quantization and the bfloat16 encoder.

The layers or the encoder's dtype change; the tap, the text and the tags hold. Real
tiny.en weights, real speech, the shipped head (tag quality is what is at stake).
"""

import json

import ctranslate2
import pytest
import torch
import torch.ao.nn.quantized.dynamic as quantized
from torch import nn

import whisper_at
from whisper_at.cli import main
from whisper_at.precision import (
    CPU_DECODER_ENV,
    CPU_ENCODER_ENV,
    Precision,
    PrecisionError,
    fastest_cpu_decoder,
    quantize_int8,
    resolve_precision,
)
from whisper_at.weights import load_whisper
from whisper_at_research.analysis.wer import wer


def quantized_layers(module: nn.Module) -> int:
    return sum(isinstance(m, quantized.Linear) for m in module.modules())


@pytest.fixture(scope="module")
def models():
    return {
        "float32": whisper_at.load_model("tiny.en", device="cpu", precision="float32"),
        "int8": whisper_at.load_model("tiny.en", device="cpu", precision="int8"),
        "bf16": whisper_at.load_model("tiny.en", device="cpu", precision="bfloat16"),
    }


@pytest.fixture(scope="module")
def float32_outputs(models, speech):
    """float32's transcripts of every clip and tags (2 s windows) of the first four."""
    model = models["float32"]
    texts = [model.transcribe(a, temperature=0.0)["text"] for _, a in speech]
    probs = [model.tag(a, at_time_res=2.0).probabilities for _, a in speech[:4]]
    return texts, probs


def test_every_linear_layer_of_the_encoder_is_int8(models):
    encoder = models["int8"].whisper.encoder.encoder
    assert quantized_layers(encoder) == 4 * 6  # tiny: 4 blocks x (q, k, v, out, fc1, fc2)
    assert quantized_layers(models["float32"].whisper.encoder) == 0
    assert models["int8"].engine.name == "ct2"
    assert models["int8"].engine.model.model.compute_type == "int8_float32"


# (precision, WER bound, bound on any tag probability's change on 2 s windows). Measured:
# WER 2.6% for float32, int8 and bf16 on these clips; tag changes up to 0.13 (int8) and
# 0.009 (bf16) here, 0.12 and 0.022 on 10 s windows in benchmarks/quantization.py.
# int8 may swap near-tied tags (Speech / Narration) but keeps the top tag among the top
# three.
@pytest.mark.parametrize(
    ("precision", "max_wer", "max_change"), [("int8", 0.10, 0.2), ("bf16", 0.08, 0.05)]
)
def test_lower_precision_keeps_transcripts_and_tags_close(
    models, speech, float32_outputs, precision, max_wer, max_change
):
    texts = [clip.text for clip, _ in speech]
    float32_texts, float32_probs = float32_outputs
    model = models[precision]
    assert wer(texts, float32_texts) < 0.08
    assert wer(texts, [model.transcribe(a, temperature=0.0)["text"] for _, a in speech]) < max_wer
    for (_, audio), reference in zip(speech[:4], float32_probs, strict=True):
        probs = model.tag(audio, at_time_res=2.0).probabilities
        assert (reference - probs).abs().max() < max_change
        top3 = reference.topk(3).indices
        assert (top3 == probs.argmax(1, keepdim=True)).any(1).all()


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


def test_the_bf16_encoder_computes_in_bfloat16_for_transcripts_and_tags(models, speech):
    _, audio = speech[0]
    bf16, float32 = models["bf16"], models["float32"]
    assert bf16.engine.name == "ct2"
    assert block_dtypes(bf16, lambda: bf16.transcribe(audio, temperature=0.0)) == {torch.bfloat16}
    assert block_dtypes(bf16, lambda: bf16.tag(audio)) == {torch.bfloat16}
    assert block_dtypes(float32, lambda: float32.tag(audio)) == {torch.float32}


def test_the_head_follows_a_bf16_encoder(models, speech):
    _, audio = speech[0]
    for name, expected in (("bf16", torch.bfloat16), ("float32", torch.float32)):
        model, seen = models[name], set()
        last = model.head.mlp_layer
        handle = last.register_forward_hook(lambda _m, _i, out, seen=seen: seen.add(out.dtype))
        try:
            result = model.tag(audio, at_time_res=2.0)
            model.transcribe(audio, temperature=0.0, event_options=whisper_at.EventOptions())
        finally:
            handle.remove()
        assert seen == {expected}
        assert result.logits.dtype == torch.float32  # what callers read stays float32


def test_bf16_needs_the_ct2_engine(speech, capsys):
    with pytest.raises(PrecisionError, match="bfloat16 encoder needs the ct2 engine"):
        whisper_at.load_model("tiny.en", device="cpu", engine="torch", precision="bfloat16")
    clip, _ = speech[0]
    assert main([str(clip.path), "--engine", "torch", "--precision", "bfloat16"]) == 2
    assert "bfloat16 encoder needs the ct2 engine" in capsys.readouterr().err


def test_precision_is_one_setting_checked_once():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu, "ct2") == Precision("float32", "float32")
    assert resolve_precision("int8", cpu, "ct2") == Precision("int8", "int8")
    assert resolve_precision("float32:int8", cpu, "ct2") == Precision("float32", "int8")
    # one name sets the decoder too only where the decoder offers it
    offered = set(ctranslate2.get_supported_compute_types("cpu"))
    expected = "bfloat16" if "bfloat16" in offered else "float32"
    assert resolve_precision("bfloat16", cpu, "ct2") == Precision("bfloat16", expected)
    with pytest.raises(PrecisionError, match="float16 needs a GPU"):
        resolve_precision("float16", cpu, "ct2")
    with pytest.raises(PrecisionError, match="unknown encoder precision 'fp8'"):
        resolve_precision("fp8", cpu, "ct2")
    with pytest.raises(PrecisionError, match="decoder precision 'int4' is not offered"):
        resolve_precision("float32:int4", cpu, "ct2")
    with pytest.raises(PrecisionError, match="not offered by openai-whisper"):
        resolve_precision("float32:int8_float32", cpu, "torch")


def test_auto_takes_the_bf16_encoder_where_the_cpu_has_native_bf16(monkeypatch):
    monkeypatch.delenv(CPU_ENCODER_ENV, raising=False)
    cpu = torch.device("cpu")
    # PyTorch's own CPU probe (cpuinfo, not /proc/cpuinfo) as the independent answer
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    expected = "bfloat16" if native else "float32"
    assert resolve_precision("auto", cpu, "ct2").encoder == expected
    assert resolve_precision("auto:int8", cpu, "ct2") == Precision(expected, "int8")
    model = whisper_at.load_model("tiny.en", device="cpu", head=None)
    assert model.precision.encoder == expected and model.encoder_dtype == getattr(torch, expected)
    # openai-whisper cannot decode after a bf16 encoder; a named encoder stays as named
    assert resolve_precision("auto", cpu, "torch").encoder == "float32"
    assert resolve_precision("float32", cpu, "ct2").encoder == "float32"
    monkeypatch.setenv(CPU_ENCODER_ENV, "float32")
    assert resolve_precision("auto", cpu, "ct2").encoder == "float32"
    monkeypatch.setenv(CPU_ENCODER_ENV, "bfloat16")
    assert resolve_precision("auto", cpu, "ct2").encoder == "bfloat16"
    monkeypatch.setenv(CPU_ENCODER_ENV, "fp8")
    with pytest.raises(PrecisionError, match="WHISPER_AT_CPU_ENCODER='fp8': use float32 or bf"):
        whisper_at.load_model("tiny.en", device="cpu", head=None)


def test_int8_torch_engine_quantizes_the_decoder_too(speech):
    model = whisper_at.load_model(
        "tiny.en", device="cpu", head=None, engine="torch", precision="int8"
    )
    assert quantized_layers(model.whisper.decoder) == 4 * (4 + 4 + 2)  # self, cross, mlp
    clip, audio = speech[0]
    assert wer([clip.text], [model.transcribe(audio, temperature=0.0)["text"]]) < 0.15


def test_int8_needs_the_cpu():
    on_meta = nn.Linear(4, 4, device="meta")
    with pytest.raises(ValueError, match="CPU only"):
        quantize_int8(nn.Sequential(on_meta))


def test_the_cpu_decoder_is_measured_once_and_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("WHISPER_AT_CACHE", str(tmp_path))
    monkeypatch.delenv(CPU_DECODER_ENV, raising=False)
    ct2_dir = load_whisper("tiny.en").ct2_dir
    choice = fastest_cpu_decoder(ct2_dir)
    (entry,) = json.loads((tmp_path / "decoder_precision.json").read_text()).values()
    seconds = entry["seconds"]
    assert set(seconds) == {"float32", "int8"} and all(s > 0 for s in seconds.values())
    assert choice == ("int8" if seconds["int8"] < 0.85 * seconds["float32"] else "float32")
    # the kept choice is what later loads use, without measuring again
    other = "float32" if choice == "int8" else "int8"
    entry["decoder"] = other
    key = next(iter(json.loads((tmp_path / "decoder_precision.json").read_text())))
    (tmp_path / "decoder_precision.json").write_text(json.dumps({key: entry}))
    assert fastest_cpu_decoder(ct2_dir) == other
    model = whisper_at.load_model("tiny.en", device="cpu", head=None)
    assert model.precision == Precision("float32", other)
    assert model.engine.compute_type == other


def test_the_cpu_decoder_can_be_pinned(tmp_path, monkeypatch):
    monkeypatch.setenv("WHISPER_AT_CACHE", str(tmp_path))
    monkeypatch.setenv(CPU_DECODER_ENV, "int8")
    model = whisper_at.load_model("tiny.en", device="cpu", head=None)
    assert model.precision == Precision("float32", "int8")
    assert not (tmp_path / "decoder_precision.json").exists()  # nothing measured
    monkeypatch.setenv(CPU_DECODER_ENV, "fast")
    with pytest.raises(PrecisionError, match="WHISPER_AT_CPU_DECODER='fast': use float32 or int8"):
        whisper_at.load_model("tiny.en", device="cpu", head=None)
