"""Compute per 30 s of audio: Whisper's encoder and decoder against the tagging heads.

Counted with torch's FlopCounterMode on meta tensors (no weights needed, every size):
encoder = one 30 s window; decoder = a window of ``--tokens`` text tokens decoded one
at a time with the key/value cache (cross-attention over 1500 frames); heads = the
three 10 s windows of that 30 s. Standalone taggers of AST and CED-Tiny shape are
counted for three 10 s clips too. Prints a table and the ratios.

    python benchmarks/costs.py [--tokens 100]
"""

from __future__ import annotations

import argparse

import torch
from models import WHISPER_DIMS, ast_like, ced_tiny_like, random_head
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from whisper.model import AudioEncoder, ModelDimensions, TextDecoder, Whisper


def gflops(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


class WhisperParts(nn.Module):
    """Whisper's encoder and decoder without the sparse alignment-head buffer meta lacks."""

    def __init__(self, d: ModelDimensions) -> None:
        super().__init__()
        self.dims = d
        self.encoder = AudioEncoder(
            d.n_mels, d.n_audio_ctx, d.n_audio_state, d.n_audio_head, d.n_audio_layer
        )
        self.decoder = TextDecoder(
            d.n_vocab, d.n_text_ctx, d.n_text_state, d.n_text_head, d.n_text_layer
        )

    install_kv_cache_hooks = Whisper.install_kv_cache_hooks


def whisper_costs(name: str, tokens: int) -> dict[str, float]:
    dims = WHISPER_DIMS[name]
    with torch.device("meta"):
        model = WhisperParts(dims)
        mel = torch.empty(1, dims.n_mels, 3000)
        audio = torch.empty(1, 1500, dims.n_audio_state)
        layers = torch.empty(3, dims.n_audio_layer, 25, dims.n_audio_state)  # 3 x 10 s
        heads = {"tl_tr": random_head(dims), "tl_tr_512": random_head(dims, "tl_tr_low", 512)}

    def decode() -> None:
        cache, hooks = model.install_kv_cache_hooks()
        for _ in range(tokens):
            model.decoder(torch.zeros(1, 1, dtype=torch.long, device="meta"), audio, kv_cache=cache)
        for hook in hooks:
            hook.remove()

    costs = {"encoder": gflops(lambda: model.encoder(mel)), "decoder": gflops(decode)}
    for head_name, head in heads.items():
        costs[head_name] = gflops(lambda h=head: h(layers))
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=100, help="decoded tokens per 30 s window")
    args = parser.parse_args()
    print(f"GFLOPs per 30 s of audio (decoder: {args.tokens} tokens)")
    print(
        "| Whisper | encoder | decoder | TL-TR | TL-TR-512 | TL-TR / encoder | TL-TR / (enc+dec) "
        "| TL-TR-512 / (enc+dec) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in WHISPER_DIMS:
        c = whisper_costs(name, args.tokens)
        asr = c["encoder"] + c["decoder"]
        print(f"| {name} | {c['encoder']:.1f} | {c['decoder']:.1f} | {c['tl_tr']:.2f} | "
              f"{c['tl_tr_512']:.2f} | {c['tl_tr'] / c['encoder']:.2%} | {c['tl_tr'] / asr:.2%} | "
              f"{c['tl_tr_512'] / asr:.2%} |")  # fmt: skip
    for name, build in (("AST-shaped (87M)", ast_like), ("CED-Tiny-shaped", ced_tiny_like)):
        with torch.device("meta"):
            tagger = build()
            clips = torch.empty(3, tagger.n_mels, tagger.frames)
        params = sum(p.numel() for p in tagger.parameters()) / 1e6
        print(f"{name}: {params:.1f}M parameters, {gflops(lambda t=tagger, x=clips: t(x)):.1f} "
              "GFLOPs per 30 s (3 x 10 s clips)")  # fmt: skip


if __name__ == "__main__":
    main()
