"""Optional int8 dynamic quantization of the PyTorch Whisper for the CPU.

PyTorch's dynamic quantization stores the weights of ``nn.Linear`` layers in int8 and
quantizes their inputs on the fly; the attention's matrix products, the conv stem and
the layer norms stay in float32. openai-whisper's ``Linear`` is a subclass that
PyTorch's quantizer does not pick up, so each is first swapped for a plain
``nn.Linear`` holding the same tensors. Encoder-block hooks (the feature tap) are
untouched: the blocks stay, only their linear layers change. ``benchmarks/quantization.py``
measures what it costs in tags and transcripts (docs/performance.md).

``torch.ao.quantization`` is deprecated in favour of torchao, but on this project's CPU
torchao 0.18's int8 dynamic configuration ran tiny.en's encoder at 0.62-0.78 s against
0.47-0.50 s here (float32: 0.82-0.86 s), so the older, built-in path stays while the
pinned torch has it; its deprecation warning is silenced.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.ao.quantization import quantize_dynamic
from whisper.model import Linear as WhisperLinear

__all__ = ["quantize_int8"]


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
