"""Training side of whisper-at: feature extraction, head training, evaluation.

``extract_features`` packs 10 s manifest clips three to a 30 s encoder window and
stores every block's pooled output; ``train_head`` trains any head type on them
with the Whisper-AT recipe; ``evaluate_head`` reports mAP / mAUC / d' and
confusions. See docs/training.md.
"""

from .evaluate import evaluate_head
from .features import (
    ExtractionReport,
    FeatureSet,
    FeatureStoreError,
    extract_features,
    load_features,
)
from .manifest import ManifestError, labels_from_manifest, read_label_file, read_manifest
from .metrics import Metrics, d_prime, tagging_metrics
from .train import TrainOptions, TrainResult, train_head

__all__ = [
    "ExtractionReport",
    "FeatureSet",
    "FeatureStoreError",
    "ManifestError",
    "Metrics",
    "TrainOptions",
    "TrainResult",
    "d_prime",
    "evaluate_head",
    "extract_features",
    "labels_from_manifest",
    "load_features",
    "read_label_file",
    "read_manifest",
    "tagging_metrics",
    "train_head",
]
