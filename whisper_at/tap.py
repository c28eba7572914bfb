"""The encoder feature tap: every block's output, captured in the pass that decoding makes.

:class:`EncoderTap` takes the place of ``whisper_model.encoder``. Forward hooks on
the encoder blocks collect each block's output (not the conv stem, not
``ln_post``) while the unchanged openai-whisper encoder runs, so the decoder
and the tagging head read one and the same forward pass.

It also remembers the last pass: openai-whisper calls the encoder again with
the same window for language detection, for every temperature fallback and for
word-timestamp alignment; those calls get the remembered output instead of a
second encoder run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from whisper.model import AudioEncoder


@dataclass
class EncoderPass:
    """One encoder forward pass over a batch of 30 s windows."""

    mel: torch.Tensor  # [batch, n_mels, 3000], the input as the encoder saw it
    output: torch.Tensor  # [batch, 1500, d_model], what the decoder reads
    layers: torch.Tensor  # [batch, n_layer, 1500, d_model], every block's output
    stem: torch.Tensor | None = None  # [batch, 1500, d_model], block 0's input (keep_stem)


class _EnoughLayers(Exception):
    """Raised by the block hook once the blocks :meth:`EncoderTap.first_layers` needs ran."""


PassListener = Callable[[EncoderPass], None]


class EncoderTap(nn.Module):
    """Wraps a Whisper ``AudioEncoder``; same inputs and outputs, plus per-block features."""

    def __init__(self, encoder: AudioEncoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.listener: PassListener | None = None
        self.last_pass: EncoderPass | None = None
        self.n_passes = 0  # real encoder runs, for tests and benchmarks
        self.keep_stem = False  # also keep the conv stem's output (the analyses' layer 0)
        # what the encoder computes in (None: the input's dtype). The input is kept as given,
        # so a float32 log-mel window stays a view that the engines can place by address
        self.compute_dtype: torch.dtype | None = None
        self._block_outputs: list[torch.Tensor] = []
        self._stem: torch.Tensor | None = None
        self._stop_after: int | None = None
        for block in encoder.blocks:
            block.register_forward_hook(self._keep_block_output)
        encoder.blocks[0].register_forward_pre_hook(self._keep_stem_output)

    def _keep_block_output(self, _module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        self._block_outputs.append(output)
        if len(self._block_outputs) == self._stop_after:
            raise _EnoughLayers

    def _keep_stem_output(self, _module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        self._stem = inputs[0] if self.keep_stem else None

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        last = self.last_pass
        if (
            last is not None
            and last.mel.shape == mel.shape
            and last.mel.dtype == mel.dtype
            and last.mel.device == mel.device
            and torch.equal(last.mel, mel)
        ):
            return last.output
        self._block_outputs = []
        try:
            output = self.encoder(self._as_computed(mel))
            layers = torch.stack(self._block_outputs, dim=1)
        finally:
            self._block_outputs = []
        self.n_passes += 1
        self.last_pass = EncoderPass(mel=mel, output=output, layers=layers, stem=self._stem)
        self._stem = None
        if self.listener is not None:
            self.listener(self.last_pass)
        return output

    def first_layers(self, mel: torch.Tensor, n_layers: int) -> torch.Tensor:
        """``[batch, n_layers, 1500, d]``: the first blocks' outputs; the deeper blocks
        are not run. For tags-only with a head that reads only the first blocks; not
        a pass decoding could use, so it is neither remembered nor announced."""
        self._block_outputs, self._stop_after = [], n_layers
        try:
            self.encoder(self._as_computed(mel))
        except _EnoughLayers:
            pass
        finally:
            layers, self._block_outputs, self._stop_after = self._block_outputs, [], None
            self._stem = None
        self.n_passes += 1
        return torch.stack(layers, dim=1)

    def _as_computed(self, mel: torch.Tensor) -> torch.Tensor:
        return mel if self.compute_dtype is None else mel.to(self.compute_dtype)

    def forget(self) -> None:
        """Drop the remembered pass (between files, so memory is not held)."""
        self.last_pass = None


def install_tap(model: nn.Module) -> EncoderTap:
    """Put an :class:`EncoderTap` in place of ``model.encoder`` (idempotent)."""
    if isinstance(model.encoder, EncoderTap):
        return model.encoder
    tap = EncoderTap(model.encoder)
    model.encoder = tap
    return tap
