"""Figures 1, 2, 3 and 5 of the paper, and the class-wise statistics (matplotlib, Agg)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

__all__ = [
    "best_layer_figure",
    "classwise",
    "family",
    "figure1",
    "load_results",
]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def load_results(out_dir: str | os.PathLike, kind: str) -> dict[str, dict]:
    """``{model: result}`` of every ``<kind>_<model>.json`` in ``out_dir``."""
    found = {}
    for path in sorted(Path(out_dir).glob(f"{kind}_*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if "model" in data:
            found[data["model"]] = data
    return found


def _save(fig, path: Path) -> list[str]:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return [str(path)]


def figure1(out_dir: str | os.PathLike, path: str | os.PathLike | None = None) -> list[str]:
    """Upper: WER vs SNR with bootstrap 95% intervals; lower: probe accuracy per layer
    (x = layer index, 0 = conv stem, then every block), for every model with results."""
    plt = _plt()
    rob, probe = load_results(out_dir, "robustness"), load_results(out_dir, "probe")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 7.2))
    for model, r in rob.items():
        snr = [p["snr"] for p in r["per_snr"]]
        w = np.array([p["wer"] for p in r["per_snr"]]) * 100
        lo = np.array([p["lo"] for p in r["per_snr"]]) * 100
        hi = np.array([p["hi"] for p in r["per_snr"]]) * 100
        n = len(r["grid"]["prompts"])
        top.errorbar(
            snr,
            w,
            yerr=[w - lo, hi - w],
            marker="o",
            capsize=3,
            label=f"{model} ({n} utt. x {len(r['grid']['classes'])} classes)",
        )
    top.set_xlabel("SNR (dB)")
    top.set_ylabel("WER (%)")
    top.set_yscale("symlog", linthresh=10)
    top.set_title("Speech + real sounds: WER (95% bootstrap CI)")
    top.grid(alpha=0.3)
    if rob:
        top.legend(fontsize=8)
    for model, p in probe.items():
        acc = np.array(p["accuracy"]) * 100
        depth = np.arange(len(acc))
        bottom.errorbar(
            depth,
            acc,
            yerr=np.array(p["accuracy_std"]) * 100,
            marker="o",
            capsize=3,
            label=f"{model} ({len(p['classes'])} classes)",
        )
        chance = p["chance"] * 100
    if probe:
        bottom.axhline(chance, color="grey", ls=":", label="majority class")
        bottom.legend(fontsize=8)
    bottom.set_xlabel("layer (0 = conv stem, then encoder blocks)")
    bottom.set_ylabel("probe accuracy (%)")
    bottom.set_title("Linear probe per layer (GroupKFold by recording)")
    bottom.grid(alpha=0.3)
    return _save(fig, Path(path or Path(out_dir) / "figure1.png"))


def _class_wer(rob: dict, snr: float) -> dict[str, float]:
    out = {}
    for c, rows in rob["per_class"].items():
        for r in rows:
            if float(r["snr"]) == float(snr):
                out[c] = r["wer"]
    return out


def classwise(
    out_dir: str | os.PathLike,
    high_snr: float = 20,
    low_snr: float = -10,
    layer: int = -1,
    path: str | os.PathLike | None = None,
) -> dict:
    """Per noise class: probe F1 (``layer``, default the last block) vs WER increase from
    ``high_snr`` to ``low_snr`` dB; Pearson and Spearman correlations (Figure 2).
    Writes ``classwise.json``/``classwise.csv`` and ``figure2.png``."""
    from scipy import stats

    plt = _plt()
    rob, probe = load_results(out_dir, "robustness"), load_results(out_dir, "probe")
    models = [m for m in rob if m in probe]
    if not models:
        raise FileNotFoundError(f"{out_dir}: needs robustness_<model>.json and probe_<model>.json")
    summary: dict = {"high_snr": high_snr, "low_snr": low_snr, "models": {}}
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 4.4), squeeze=False)
    rows = []
    for ax, model in zip(axes[0], models, strict=True):
        hi, lo = _class_wer(rob[model], high_snr), _class_wer(rob[model], low_snr)
        f1 = probe[model]["per_class_f1"]
        classes = sorted(c for c in hi if c in lo and c in f1)
        x = np.array([f1[c][layer] * 100 for c in classes])
        y = np.array([(lo[c] - hi[c]) * 100 for c in classes])
        entry: dict = {"n_classes": len(classes), "layer": layer % len(next(iter(f1.values())))}
        if len(classes) >= 3 and np.std(x) > 0 and np.std(y) > 0:
            pr, pp = stats.pearsonr(x, y)
            sr, sp = stats.spearmanr(x, y)
            fit = stats.linregress(x, y)
            entry.update(
                pearson_r=float(pr),
                pearson_p=float(pp),
                spearman_rho=float(sr),
                spearman_p=float(sp),
                slope=float(fit.slope),
                intercept=float(fit.intercept),
            )
            xs = np.linspace(x.min(), x.max(), 10)
            ax.plot(xs, fit.intercept + fit.slope * xs, color="C3")
            ax.set_title(
                f"{model}: Pearson r={pr:.2f} (p={pp:.2g}), Spearman {sr:.2f} (p={sp:.2g})",
                fontsize=8,
            )
        else:
            ax.set_title(f"{model}: too few classes for a correlation", fontsize=8)
        ax.scatter(x, y, s=14)
        for c, xi, yi in zip(classes, x, y, strict=True):
            ax.annotate(c[:14], (xi, yi), fontsize=6)
            rows.append((model, c, xi, yi, hi[c] * 100, lo[c] * 100))
        ax.set_xlabel(f"probe F1 of the class (%), layer {entry['layer']}")
        ax.set_ylabel(f"WER increase {high_snr:g} -> {low_snr:g} dB (points)")
        ax.grid(alpha=0.3)
        summary["models"][model] = entry
    _save(fig, Path(path or Path(out_dir) / "figure2.png"))
    (Path(out_dir) / "classwise.json").write_text(json.dumps(summary, indent=1) + "\n")
    with (Path(out_dir) / "classwise.csv").open("w", encoding="utf-8") as f:
        f.write("model,class,probe_f1,wer_increase,wer_high,wer_low\n")
        for m, c, xi, yi, h, lo_ in rows:
            f.write(f'{m},"{c}",{xi:.2f},{yi:.2f},{h:.2f},{lo_:.2f}\n')
    return summary


def best_layer_figure(out_dir: str | os.PathLike, path: str | os.PathLike | None = None) -> dict:
    """Histogram of each class's best probe layer, per model (Figure 3); ``best_layer.json``."""
    plt = _plt()
    probe = load_results(out_dir, "probe")
    if not probe:
        raise FileNotFoundError(f"{out_dir}: no probe_<model>.json")
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    width = 0.8 / len(probe)
    summary = {}
    for k, (model, p) in enumerate(probe.items()):
        n_layers = len(p["accuracy"])
        counts = np.bincount(list(p["best_layer"].values()), minlength=n_layers)
        ax.bar(np.arange(n_layers) + (k - (len(probe) - 1) / 2) * width, counts, width, label=model)
        summary[model] = {"histogram": counts.tolist(), "best_layer": p["best_layer"]}
    ax.set_xlabel("best layer (0 = conv stem)")
    ax.set_ylabel("classes")
    ax.set_title("Layer with the highest probe F1, per class")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    _save(fig, Path(path or Path(out_dir) / "figure3.png"))
    (Path(out_dir) / "best_layer.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def family(
    out_dir: str | os.PathLike,
    heads: list[str | os.PathLike],
    low_snr: float = -10,
    path: str | os.PathLike | None = None,
) -> dict:
    """Tagging mAP of trained heads vs ASR robustness (WER at ``low_snr`` dB and mean over
    SNRs) per Whisper model (Figure 5). Heads: ``whisper-at train`` checkpoints."""
    from whisper_at.heads import load_head

    if not heads:
        raise ValueError(
            "no head checkpoints given: pass --head PATH for each Whisper model "
            "(heads made by `whisper-at train`; their config holds the validation mAP)"
        )
    rob = load_results(out_dir, "robustness")
    rows = []
    for h in heads:
        cfg = load_head(h).config
        name = cfg.whisper_name
        m_ap = cfg.metrics.get("mAP")
        r = rob.get(name)
        row = {"head": str(h), "model": name, "head_type": cfg.head_type, "mAP": m_ap}
        if r is not None:
            row["wer_low_snr"] = _mean_wer(r, low_snr)
            row["wer_mean"] = float(np.mean([p["wer"] for p in r["per_snr"]]))
        rows.append(row)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4))
    for row in rows:
        if row.get("wer_low_snr") is not None and row["mAP"] is not None:
            ax.scatter(row["wer_low_snr"] * 100, row["mAP"] * 100)
            ax.annotate(
                f"{row['model']} {row['head_type']}",
                (row["wer_low_snr"] * 100, row["mAP"] * 100),
                fontsize=8,
            )
    ax.set_xlabel(f"WER at {low_snr:g} dB SNR (%)")
    ax.set_ylabel("tagging mAP of the head (%)")
    ax.set_title("Whisper models: tagging mAP vs ASR robustness", fontsize=9)
    ax.grid(alpha=0.3)
    _save(fig, Path(path or Path(out_dir) / "figure5.png"))
    summary = {"low_snr": low_snr, "rows": rows}
    (Path(out_dir) / "family.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _mean_wer(r: dict, snr: float) -> float | None:
    for p in r["per_snr"]:
        if float(p["snr"]) == float(snr):
            return p["wer"]
    return None
