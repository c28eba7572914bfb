import dataclasses
import hashlib
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from whisper_at.heads import (
    HEAD_TYPES,
    HeadConfig,
    HeadError,
    HeadSource,
    TaggingHead,
    import_reference_head,
    load_head,
    rewrite_head_config,
    save_head,
)
from whisper_at.labels import audioset_labels
from whisper_at.pipeline import load_model, shipped_head_path

LABELS = audioset_labels()
# (encoder layers, width) of every Whisper size
SIZES = {
    "tiny": (4, 384),
    "base": (6, 512),
    "small": (12, 768),
    "medium": (24, 1024),
    "large": (32, 1280),
}


def make_config(head_type: str, n_layer: int, d_model: int, **kw) -> HeadConfig:
    return HeadConfig(
        head_type=head_type,
        n_layer=n_layer,
        d_model=d_model,
        label_names=list(LABELS.names),
        label_ids=list(LABELS.ids),
        **kw,
    )


def n_params(module: torch.nn.Module) -> float:
    return round(sum(p.numel() for p in module.parameters()) / 1e6, 3)


@pytest.mark.parametrize(
    "size,expected",
    [("tiny", 3.752), ("base", 6.575), ("small", 14.581), ("medium", 25.733), ("large", 40.030)],
)
def test_tl_tr_parameter_counts_match_the_paper(size, expected):
    assert n_params(TaggingHead(make_config("tl_tr", *SIZES[size]))) == expected


@pytest.mark.parametrize("size,expected", [("small", 6.970), ("medium", 7.102), ("large", 7.234)])
def test_tl_tr_512_parameter_counts_match_the_paper(size, expected):
    head = TaggingHead(make_config("tl_tr_low", *SIZES[size], proj_dim=512))
    assert n_params(head) == expected


def _block(x, p, prefix, n_head):
    """Whisper's residual attention block written out by hand, as an independent check."""

    def ln(t, name):
        return F.layer_norm(t, t.shape[-1:], p[f"{name}.weight"], p[f"{name}.bias"])

    def lin(t, name, bias=True):
        return F.linear(t, p[f"{name}.weight"], p[f"{name}.bias"] if bias else None)

    h = ln(x, f"{prefix}.attn_ln")
    q = lin(h, f"{prefix}.attn.query")
    k = lin(h, f"{prefix}.attn.key", bias=False)
    v = lin(h, f"{prefix}.attn.value")
    n, t, d = q.shape
    split = lambda z: z.view(n, t, n_head, d // n_head).transpose(1, 2)  # noqa: E731
    scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(d // n_head)
    attended = (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(n, t, d)
    x = x + lin(attended, f"{prefix}.attn.out")
    h = ln(x, f"{prefix}.mlp_ln")
    return x + lin(F.gelu(lin(h, f"{prefix}.mlp.0")), f"{prefix}.mlp.2")


def reference_tl_tr(features, p, low):
    """The paper's TL-TR forward on reference-named tensors: features [L, T, d] -> [527]."""
    x = features
    if low:
        x = F.layer_norm(x, x.shape[-1:], p["down_layer.0.weight"], p["down_layer.0.bias"])
        x = F.linear(x, p["down_layer.1.weight"], p["down_layer.1.bias"])
    x = _block(x, p, "time_tr", 1).mean(dim=1)  # each layer over time, then mean over time
    x = _block(x[None], p, "layer_tr", 8)[0].mean(dim=0)  # over layers, then mean
    x = F.layer_norm(x, x.shape[-1:], p["mlp_layer.0.weight"], p["mlp_layer.0.bias"])
    return F.linear(x, p["mlp_layer.1.weight"], p["mlp_layer.1.bias"])


@pytest.mark.parametrize("low", [False, True])
def test_reference_checkpoint_loads_unchanged_and_computes_tl_tr(tmp_path, low):
    torch.manual_seed(0)
    n_layer, d = SIZES["tiny"]
    source = TaggingHead(
        make_config("tl_tr_low" if low else "tl_tr", n_layer, d, proj_dim=512 if low else None)
    )
    for param in source.parameters():  # non-trivial LayerNorms too
        torch.nn.init.normal_(param, std=0.05)
    state = {f"at_model.{k}": v.clone() for k, v in source.state_dict().items()}
    state["encoder.blocks.0.attn.query.weight"] = torch.zeros(1)  # reference files hold more keys
    path = tmp_path / ("tiny_low.pth" if low else "tiny_ori.pth")
    torch.save(state, path)

    head = import_reference_head(path, n_layer=n_layer, whisper_name="tiny")
    assert head.config.head_type == ("tl_tr_low" if low else "tl_tr")
    assert head.config.encoder_input_seconds == 10.0
    assert n_params(head) == (6.773 if low else 3.752)

    features = torch.randn(n_layer, 25, d)
    expected = reference_tl_tr(
        features, {k[9:]: v for k, v in state.items() if k.startswith("at_model.")}, low
    )
    with torch.no_grad():
        got = head(features[None])[0]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_reference_import_rejects_other_checkpoints(tmp_path):
    path = tmp_path / "not_a_head.pth"
    torch.save({"encoder.conv1.weight": torch.zeros(2)}, path)
    with pytest.raises(HeadError, match="not a Whisper-AT head"):
        import_reference_head(path, n_layer=4)
    with pytest.raises(HeadError, match="not found"):
        import_reference_head(tmp_path / "missing.pth", n_layer=4)


@pytest.mark.parametrize("head_type", HEAD_TYPES)
def test_every_head_saves_and_loads_identically(tmp_path, head_type):
    torch.manual_seed(1)
    config = make_config(
        head_type,
        4,
        384,
        proj_dim=128 if head_type == "tl_tr_low" else None,
        whisper_name="tiny.en",
        trained_classes=[0, 137, 500],
        metrics={"mAP": 0.5},
    )
    head = TaggingHead(config).eval()
    path = tmp_path / "head.safetensors"
    save_head(head, path)
    loaded = load_head(path)
    assert loaded.config == config
    assert loaded.config.reported_classes == [0, 137, 500]
    features = torch.randn(3, 4, 7, 384)  # any number of frames: no positional embeddings
    with torch.no_grad():
        assert torch.equal(head(features), loaded(features))
        assert head(features).shape == (3, 527)


def test_thresholds_and_held_out_sources_round_trip_and_keep_the_tensors(tmp_path):
    thresholds = [0.5] * 527
    thresholds[0], thresholds[137] = 0.75, 0.2
    config = make_config("tl_tr", 4, 384, thresholds=thresholds, held_out_sources=["pkg:a=1"])
    head = TaggingHead(config).eval()
    path = tmp_path / "head.safetensors"
    save_head(head, path)
    loaded = load_head(path)
    assert loaded.config.thresholds == thresholds
    assert loaded.config.held_out_sources == ["pkg:a=1"]
    # a config without them (every head saved before they existed) loads with None
    plain = tmp_path / "plain.safetensors"
    rewrite_head_config(path, plain, dataclasses.replace(config, thresholds=None))
    assert load_head(plain).config.thresholds is None
    with safe_open(str(path), "pt") as a, safe_open(str(plain), "pt") as b:
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())
    with pytest.raises(HeadError, match="2 thresholds for 527 classes"):
        make_config("tl_tr", 4, 384, thresholds=[0.5, 0.5])
    with pytest.raises(HeadError, match=r"probabilities in \[0, 1\]"):
        make_config("tl_tr", 4, 384, thresholds=[1.5] * 527)
    with pytest.raises(HeadError, match="does not match its head config"):
        rewrite_head_config(path, plain, make_config("tl_tr", 4, 256))


def test_head_checks_its_input_shape():
    head = TaggingHead(make_config("tl_tr", 4, 384))
    with pytest.raises(ValueError, match=r"expected features \[batch, 4, time, 384\]"):
        head(torch.zeros(1, 6, 25, 384))


def test_bad_head_checkpoints_are_named(tmp_path):
    with pytest.raises(HeadError, match="not found"):
        load_head(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a safetensors file")
    with pytest.raises(HeadError, match="not a readable safetensors"):
        load_head(junk)

    bare = tmp_path / "bare.safetensors"
    save_file({"x": torch.zeros(1)}, str(bare))
    with pytest.raises(HeadError, match="no whisper-at head config"):
        load_head(bare)
    # a config that does not match the tensors (a base head's config on tiny tensors)
    head = TaggingHead(make_config("tl_tr", 4, 384))
    save_head(head, bare)
    from safetensors import safe_open

    with safe_open(str(bare), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    wrong = make_config("tl_tr", 6, 512)
    save_file(tensors, str(bare), metadata={"whisper_at_head_config": wrong.to_json()})
    with pytest.raises(HeadError, match="does not match its head config"):
        load_head(bare)


def test_config_rejects_unknown_head_types_and_fields():
    with pytest.raises(HeadError, match="unknown head type"):
        make_config("cnn", 4, 384)
    with pytest.raises(HeadError, match="needs proj_dim"):
        make_config("tl_tr_low", 4, 384)
    with pytest.raises(HeadError, match="unknown fields"):
        HeadConfig.from_json('{"head_type": "tl_tr", "bogus": 1}')


class _RunsCode:
    """Unpickling this would create ``marker``: what weights_only=True must prevent."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _not_heads(folder: Path) -> dict[str, Path]:
    """Files a user might pass as --head by mistake, keyed by what they are."""
    files = {
        "text": folder / "notes.pth",
        "noise": folder / "noise.pth",
        "pickled code": folder / "code.pth",
        "tensor list": folder / "list.pth",
        "text .safetensors": folder / "notes.safetensors",
        "torch .safetensors": folder / "torch.safetensors",
    }
    files["text"].write_text("these are my notes, not weights\n")
    files["noise"].write_bytes(bytes(range(256)) * 16)
    torch.save(
        {"at_model.x": torch.zeros(1), "hook": _RunsCode(folder / "ran")}, files["pickled code"]
    )
    torch.save([torch.zeros(2)], files["tensor list"])
    files["text .safetensors"].write_text("{not json")
    torch.save({"at_model.mlp_layer.1.weight": torch.zeros(527, 384)}, files["torch .safetensors"])
    return files


def test_files_that_are_not_heads_are_named_as_such(tmp_path):
    files = _not_heads(tmp_path)
    for kind in ("text", "noise", "pickled code", "tensor list"):
        message = str(_error(import_reference_head, files[kind], 4))
        assert message.startswith(f"{files[kind]} is not a head checkpoint: expected an original")
        assert "<size>_ori.pth" in message and "weights_only" not in message, kind
    assert "could run code" in str(_error(import_reference_head, files["pickled code"], 4))
    assert not (tmp_path / "ran").exists()  # the pickled call was never made
    assert "holds a list" in str(_error(import_reference_head, files["tensor list"], 4))
    for kind in ("text .safetensors", "torch .safetensors"):
        message = str(_error(load_head, files[kind]))
        assert message.startswith(f"{files[kind]} is not a head checkpoint: expected a whisper-at")
    torch_message = str(_error(load_head, files["torch .safetensors"]))
    assert "it is a torch checkpoint (an original Whisper-AT head loads when named .pth)" in (
        torch_message
    )


def _error(load, *args) -> HeadError:
    with pytest.raises(HeadError) as error:
        load(*args)
    return error.value


def test_a_loaded_head_records_its_file(tmp_path):
    assert TaggingHead(make_config("tl_tr", 4, 384)).source is None  # built in memory
    shipped = shipped_head_path("tiny.en")
    digest = hashlib.sha256(shipped.read_bytes()).hexdigest()
    assert load_head(shipped).source == HeadSource(str(shipped.resolve()), digest)
    assert load_model("tiny.en", device="cpu").head.source == load_head(shipped).source
    with pytest.raises(dataclasses.FrozenInstanceError):
        load_head(shipped).source.sha256 = "0" * 64

    reference = tmp_path / "tiny_ori.pth"
    source = TaggingHead(make_config("tl_tr", 4, 384))
    torch.save({f"at_model.{k}": v for k, v in source.state_dict().items()}, reference)
    imported = import_reference_head(reference, n_layer=4)
    assert imported.source == HeadSource(
        str(reference.resolve()), hashlib.sha256(reference.read_bytes()).hexdigest()
    )
