"""The ablation table of docs/results.md: every head of a folder on the same splits.

For each ``<whisper>.<head>.safetensors`` in HEADS_DIR: the validation metrics stored
in the head (those of the averaged weights), and test-split metrics computed now
with ``whisper_at_research.training.evaluate_head`` on the matching feature store; writes each
head's evaluation (json + md, per-class AP) next to it and prints a markdown table.

    python scripts/ablation_table.py HEADS_DIR FEATURES_DIR [FEATURES_DIR ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from whisper_at.heads import load_head
from whisper_at_research.training.evaluate import evaluate_head

ORDER = ["tl_tr", "tl_tr_low", "wa_tr", "wa_linear", "mean_linear", "last_linear"]
NAMES = {
    "tl_tr": "TL-TR",
    "tl_tr_low": "TL-TR-low-dim",
    "wa_tr": "weighted average + time Transformer (WA-TR)",
    "wa_linear": "weighted average + linear (WA-MLP)",
    "mean_linear": "mean of layers + linear",
    "last_linear": "last layer + linear",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("heads", type=Path)
    parser.add_argument("features", type=Path, nargs="+")
    args = parser.parse_args()
    stores = {json.loads((f / "meta.json").read_text())["whisper_name"]: f for f in args.features}
    print("| Whisper | head | parameters | valid mAP | test mAP | test mAUC | test d' |")
    print("|---|---|---|---|---|---|---|")
    for whisper_name, store in stores.items():
        for head_type in ORDER:
            path = args.heads / f"{whisper_name}.{head_type}.safetensors"
            if not path.is_file():
                continue
            head = load_head(path)
            out = path.with_name(path.name.removesuffix(".safetensors") + ".test.json")
            report = evaluate_head(head, store, split="test", out=out, progress=False)
            params = sum(p.numel() for p in head.parameters()) / 1e6
            name = NAMES[head_type]
            if head.config.proj_dim:
                name += f" ({head.config.proj_dim})"
            print(
                f"| {whisper_name} | {name} | {params:.3f}M | {head.config.metrics['mAP']:.3f} "
                f"| {report['mAP']:.3f} | {report['mAUC']:.3f} | {report['d_prime']:.2f} |"
            )


if __name__ == "__main__":
    main()
