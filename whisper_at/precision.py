"""Numeric precision: one setting, checked once, for the encoder and the decoder.

``load_model(..., precision=...)`` takes ``"auto"``, one name (``"float32"``,
``"float16"``, ``"bfloat16"``, ``"int8"``), ``"ENCODER:DECODER"`` (e.g.
``"float32:int8"``: exact tags, an int8 CTranslate2 decoder) or a :class:`Precision`.
One name sets the encoder, and the decoder too where the decoder offers it (a CPU
whose CTranslate2 has no bfloat16 keeps the default decoder). docs/engines.md has the
table of what each costs and changes.

"auto" on the CPU gives, with the ct2 engine, a bfloat16 encoder where the processor
computes bfloat16 natively (AVX512-BF16 or AMX: faster there, and tags move little;
docs/performance.md) and a float32 one elsewhere (emulated bfloat16 is
slower than float32; :func:`auto_cpu_encoder`), and the faster of CTranslate2's float32
and int8 decoders on this CPU: which one wins depends on the processor (int8 was 2x
faster on an Intel CPU with AMX, 20% slower on an AMD EPYC with AVX-512), so it is
measured once per CPU, CTranslate2 version and model, and kept in the cache
(:func:`fastest_cpu_decoder`). The torch engine keeps a float32 encoder (openai-whisper
decodes in float32 or float16 only).

int8 for the encoder is PyTorch's dynamic quantization: the weights of ``nn.Linear``
layers are stored in int8 and their inputs quantized on the fly; the attention's
matrix products, the conv stem and the layer norms stay in float32. openai-whisper's
``Linear`` is a subclass that PyTorch's quantizer does not pick up, so each is first
swapped for a plain ``nn.Linear`` holding the same tensors. Encoder-block hooks (the
feature tap) are untouched: the blocks stay, only their linear layers change.

``torch.ao.quantization`` is deprecated in favour of torchao, but on this project's CPU
torchao 0.18's int8 dynamic configuration ran tiny.en's encoder at 0.62-0.78 s against
0.47-0.50 s here (float32: 0.82-0.86 s), so the older, built-in path stays while the
pinned torch has it; its deprecation warning is silenced.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.ao.quantization import quantize_dynamic
from whisper.model import Linear as WhisperLinear

from .cache import cache_dir

__all__ = [
    "CPU_DECODER_ENV",
    "CPU_ENCODER_ENV",
    "PRECISIONS",
    "Precision",
    "PrecisionError",
    "auto_cpu_encoder",
    "cpu_model_and_flags",
    "fastest_cpu_decoder",
    "quantize_int8",
    "resolve_precision",
]

logger = logging.getLogger("whisper_at")

PRECISIONS = ("float32", "float16", "bfloat16", "int8")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# what "auto" gives each device before the CPU's own checks: (encoder, decoder)
_AUTO = {"cpu": ("float32", "float32"), "cuda": ("float16", "float16")}
# /proc/cpuinfo flags of x86 CPUs whose bfloat16 matrix products run in hardware
_NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


class PrecisionError(ValueError):
    """A precision this device or engine cannot compute in; the message says what can."""


@dataclass(frozen=True)
class Precision:
    """What the PyTorch encoder and the decoder compute in.

    encoder: float32, float16 (GPU), bfloat16, or int8 (dynamic quantization, CPU).
    decoder: for the ct2 engine a CTranslate2 compute type (``int8``, ``float32``,
    ``int8_float32``, ``float16``, ...); for the torch engine float32, float16 (GPU) or
    int8 (CPU).
    """

    encoder: str = "float32"
    decoder: str = "float32"

    @property
    def encoder_dtype(self) -> torch.dtype:
        """The dtype of the encoder's input and activations (int8 layers take float32)."""
        return _DTYPES.get(self.encoder, torch.float32)

    @property
    def quantized_encoder(self) -> bool:
        return self.encoder == "int8"

    def __str__(self) -> str:
        return f"{self.encoder}:{self.decoder}"


def resolve_precision(
    precision: str | Precision,
    device: torch.device,
    engine: str,
    ct2_dir: str | os.PathLike | None = None,
) -> Precision:
    """The precision to run with, or :class:`PrecisionError` naming what this setup offers.

    engine: "ct2" or "torch" (already resolved); ct2_dir: the CTranslate2 model folder,
    where "auto" picks the faster decoder on the CPU (measured once, see
    :func:`fastest_cpu_decoder`).
    """
    auto_encoder, auto_decoder = _AUTO[device.type]
    named = precision if isinstance(precision, str) else ""
    encoder_auto = named == "auto" or named.startswith("auto:")
    if encoder_auto and engine == "ct2" and device.type == "cpu":
        auto_encoder = auto_cpu_encoder()
    decoder_auto = named == "auto" or named.endswith(":auto")  # measure only when asked for
    if decoder_auto and engine == "ct2" and device.type == "cpu" and ct2_dir is not None:
        auto_decoder = fastest_cpu_decoder(ct2_dir)
    if isinstance(precision, Precision):
        wanted = precision
    elif not isinstance(precision, str) or not precision:
        raise PrecisionError(f"precision must be a string or a Precision, got {precision!r}")
    elif precision == "auto":
        wanted = Precision(auto_encoder, auto_decoder)
    elif ":" in precision:
        encoder, _, decoder = precision.partition(":")
        wanted = Precision(
            auto_encoder if encoder == "auto" else encoder,
            auto_decoder if decoder == "auto" else decoder,
        )
    else:
        offered = _decoder_types(device, engine)
        wanted = Precision(precision, precision if precision in offered else auto_decoder)
    _check(wanted, device, engine)
    return wanted


CPU_ENCODER_ENV = "WHISPER_AT_CPU_ENCODER"  # pins "auto"'s CPU encoder: float32 or bfloat16
CPU_DECODER_ENV = "WHISPER_AT_CPU_DECODER"  # pins "auto"'s CPU decoder: float32 or int8
# int8 must beat float32 (exact against plain faster-whisper) by this much to be chosen
_INT8_MARGIN = 0.85


def auto_cpu_encoder() -> str:
    """ "bfloat16" where this CPU multiplies bfloat16 in hardware, else "float32".

    Read from the instruction-set flags rather than timed: the encoder of a large model
    takes tens of seconds per window on a small CPU, too long to measure at first use,
    and the flags decide the outcome (native bfloat16 is much faster than float32,
    emulated bfloat16 slower).
    ``WHISPER_AT_CPU_ENCODER=float32`` (or ``bfloat16``) pins the choice: float32 gives
    tags equal to the float32 training features and transcripts equal to plain
    faster-whisper's.
    """
    pinned = _pinned(CPU_ENCODER_ENV, ("float32", "bfloat16"))
    if pinned:
        return pinned
    _, flags = cpu_model_and_flags()
    return "bfloat16" if _NATIVE_BF16_FLAGS.intersection(flags) else "float32"


def fastest_cpu_decoder(ct2_dir: str | os.PathLike) -> str:
    """ "float32" or "int8": the faster CTranslate2 decoder for this model on this CPU.

    Measured once (greedy and beam 5 decoding of 48 tokens from a fixed encoder output,
    each compute type's best of three; about a second for tiny.en) and cached per CPU,
    CTranslate2 version and model in ``decoder_precision.json`` under the cache folder.
    int8 is chosen only when it takes under 85% of float32's time, since float32's
    transcripts are exactly plain faster-whisper's. ``WHISPER_AT_CPU_DECODER=float32`` (or
    ``int8``) pins the choice instead: the same transcripts on every machine, whatever a
    timing on a busy one said.
    """
    import ctranslate2

    pinned = _pinned(CPU_DECODER_ENV, ("float32", "int8"))
    if pinned:
        return pinned
    if "int8" not in ctranslate2.get_supported_compute_types("cpu"):
        return "float32"
    key = _cpu_key(Path(ct2_dir), ctranslate2.__version__)
    path = cache_dir() / "decoder_precision.json"
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]["decoder"]
    seconds = {kind: _decode_seconds(Path(ct2_dir), kind) for kind in ("float32", "int8")}
    choice = "int8" if seconds["int8"] < _INT8_MARGIN * seconds["float32"] else "float32"
    logger.info("CPU decoder: %s (measured %s)", choice, seconds)
    known[key] = {"decoder": choice, "seconds": seconds, "cpu": cpu_model_and_flags()[0]}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as error:  # a read-only cache measures again next time
        logger.debug("could not keep the decoder choice in %s: %s", path, error)
    return choice


def _pinned(env: str, allowed: tuple[str, str]) -> str | None:
    """The choice the environment variable ``env`` pins, if set; anything else is refused."""
    pinned = os.environ.get(env)
    if pinned and pinned not in allowed:
        raise PrecisionError(f"{env}={pinned!r}: use {' or '.join(allowed)}")
    return pinned or None


def cpu_model_and_flags() -> tuple[str, list[str]]:
    """The CPU's model name and instruction-set flags (Linux's /proc/cpuinfo; elsewhere
    what ``platform`` says and no flags): what decides which kernels run fastest."""
    model, flags = platform.processor() or platform.machine(), []
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return model, flags
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            model = value.strip()
        elif key.strip() == "flags":
            flags = value.split()
            break
    return model, flags


def _cpu_key(ct2_dir: Path, ct2_version: str) -> str:
    """CPU model and instruction-set flags, core count, CTranslate2 version, model size."""
    model, flags = cpu_model_and_flags()
    stat = (ct2_dir / "model.bin").stat()
    parts = [model, " ".join(flags), str(os.cpu_count()), ct2_version, str(stat.st_size)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def _decode_seconds(ct2_dir: Path, compute_type: str) -> float:
    import ctranslate2
    import numpy as np
    import tokenizers
    from faster_whisper.tokenizer import Tokenizer

    model = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type=compute_type)
    tokenizer = Tokenizer(
        tokenizers.Tokenizer.from_file(str(ct2_dir / "tokenizer.json")),
        model.is_multilingual,
        task="transcribe",
        language="en",
    )
    silence = np.zeros((1, model.n_mels, 3000), np.float32)
    encoded = model.encode(ctranslate2.StorageView.from_array(silence))
    prompt = [list(tokenizer.sot_sequence)]
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for beam in (1, 5):  # the end of text suppressed: every run decodes max_length tokens
            model.generate(
                encoded, prompt, beam_size=beam, max_length=48, suppress_tokens=[-1, tokenizer.eot]
            )
        best = min(best, time.perf_counter() - start)
    return round(best, 4)


def _decoder_types(device: torch.device, engine: str) -> set[str]:
    if engine == "ct2":
        import ctranslate2

        return set(ctranslate2.get_supported_compute_types(device.type))
    return {"float32", "int8"} if device.type == "cpu" else {"float32", "float16"}


def _check(precision: Precision, device: torch.device, engine: str) -> None:
    if precision.encoder not in PRECISIONS:
        raise PrecisionError(
            f"unknown encoder precision {precision.encoder!r}; choose from {', '.join(PRECISIONS)}"
        )
    if precision.encoder == "float16" and device.type == "cpu":
        raise PrecisionError("float16 needs a GPU; on the CPU use float32, bfloat16 or int8")
    if precision.encoder == "int8" and device.type != "cpu":
        raise PrecisionError("the int8 encoder (dynamic quantization) runs on the CPU only")
    offered = _decoder_types(device, engine)
    if precision.decoder not in offered:
        where = f"CTranslate2 on this {device.type}" if engine == "ct2" else "openai-whisper"
        raise PrecisionError(
            f"decoder precision {precision.decoder!r} is not offered by {where}; "
            f"choose from {', '.join(sorted(offered))}"
        )
    if engine == "torch" and precision.encoder == "bfloat16":
        raise PrecisionError(
            "a bfloat16 encoder needs the ct2 engine: openai-whisper decodes in float16 "
            "or float32 only (use engine='ct2', or another precision)"
        )
    if engine == "torch" and device.type == "cuda" and precision.encoder != precision.decoder:
        raise PrecisionError("openai-whisper on a GPU runs encoder and decoder in one precision")


def quantize_int8(module: nn.Module) -> nn.Module:
    """Quantize every linear layer of ``module`` (an encoder, a decoder) in place; CPU only."""
    if any(p.device.type != "cpu" for p in module.parameters()):
        raise ValueError("int8 dynamic quantization runs on the CPU only; load with device='cpu'")
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, WhisperLinear):
                bias = child.bias is not None
                plain = nn.Linear(child.in_features, child.out_features, bias=bias)
                plain.weight, plain.bias = child.weight, child.bias
                setattr(parent, name, plain)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(deprecated|will be removed).*")
        return quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8, inplace=True)
