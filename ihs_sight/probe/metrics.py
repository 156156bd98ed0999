"""Per-layer metrics of held-out predictions, and the result models that hold them.

Confusion matrices for all layers at once in numpy, with ``sklearn.metrics``' definitions;
:class:`~ihs_sight.probe.ProbeReport` holds one :class:`ClassifierScores` per classifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from .estimator import LayerProbe
from .inputs import EvalSet, FloatArray, IntArray

GroupField = Literal["label", "category", "family"]
GROUP_FIELDS: tuple[GroupField, ...] = ("label", "category", "family")
"""What scored prompts can be grouped by (``group_by``)."""


class ClassMetrics(BaseModel):
    """One class's precision, recall and F1 at each probed layer."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    precision: list[float]
    """(n_layers,) of the prompts predicted as this class, the share that are."""
    recall: list[float]
    """(n_layers,) of this class's prompts, the share predicted as it."""
    f1: list[float]
    """(n_layers,) harmonic mean of precision and recall."""
    support: int
    """() prompts of this class that were scored (summed over folds)."""


class ClassifierScores(BaseModel):
    """One classifier's held-out metrics at each probed layer (means over folds for ``cv``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    classifier: str
    """The classifier's name (``svm``, ``mlp``, ``logreg`` or an sklearn class name)."""
    accuracy: list[float]
    """(n_layers,) share of scored prompts classified correctly."""
    accuracy_std: list[float] | None = None
    """(n_layers,) standard deviation over folds (``cv`` only)."""
    f1: list[float]
    """(n_layers,) F1 of the positive class (binary) or macro F1 (more classes)."""
    f1_std: list[float] | None = None
    """(n_layers,) standard deviation over folds (``cv`` only)."""
    roc_auc: list[float] | None = None
    """(n_layers,) ROC-AUC of the positive class's score (binary, both classes scored)."""
    roc_auc_std: list[float] | None = None
    """(n_layers,) standard deviation over folds (``cv`` only)."""
    fpr: list[float] | None = None
    """(n_layers,) false-positive rate: share of negative prompts flagged positive (binary)."""
    fnr: list[float] | None = None
    """(n_layers,) false-negative rate: share of positive prompts missed (binary)."""
    per_class: dict[str, ClassMetrics]
    """Precision / recall / F1 per class name."""
    best_layer: int
    """() the layer with the highest accuracy (earliest on ties)."""
    first_layer: int | None
    """() the first layer whose accuracy reaches the report's ``threshold`` (``None``: none does)."""
    fit_seconds: float
    """() time spent fitting this classifier on every layer (all folds)."""


class GroupScores(BaseModel):
    """Accuracy within one group of scored prompts (a label, a category or a jailbreak family)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    by: GroupField
    """What the group shares."""
    name: str
    """The shared value; families are ``<label>/<family>`` (jailbreak and wrapped normals share families)."""
    n: int
    """() prompts in the group."""
    classes: dict[str, int]
    """True class (after ``label_map``) -> count in the group."""
    accuracy: dict[str, list[float]]
    """Classifier -> (n_layers,) accuracy within the group."""
    positive_rate: dict[str, list[float]] | None = None
    """Classifier -> (n_layers,) share flagged positive (binary): a detection rate for positive
    groups, a false-positive rate for negative ones."""



@dataclass
class Outcome:
    """One classifier's predictions on the scored prompts, and the metrics of each fold."""

    name: str
    pred: IntArray
    """(n, n_layers) predicted class codes, -1 where a prompt was not scored."""
    fold_metrics: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    probe: LayerProbe | None = None
    """The fitted probe, when there was a single fit (holdout, transfer)."""


def _average_ranks(values: FloatArray) -> FloatArray:
    """1-based ranks of ``values``, ties sharing their average rank."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    out: FloatArray = (ends - (counts - 1) / 2.0)[inverse]
    return out


def layer_metrics(y: IntArray, pred: IntArray, scores: FloatArray, n_classes: int, pos: int | None) -> dict[str, Any]:
    """Per-layer metrics of one set of predictions: ``pred`` (n, L), ``scores`` (n, L, K).

    Computed from (L, K, K) confusion matrices in numpy, all layers at once: the same
    definitions as ``sklearn.metrics`` (``zero_division=0``; ROC-AUC by average ranks, as
    ``roc_auc_score``), without its per-call validation, which cost seconds per sweep.
    """
    n, n_layers = pred.shape
    k = n_classes
    flat = (y[:, None] * k + pred) + (np.arange(n_layers) * k * k)[None, :]
    cm = np.bincount(flat.ravel(), minlength=n_layers * k * k).reshape(n_layers, k, k).astype(np.float64)
    tp = np.diagonal(cm, axis1=1, axis2=2)
    truth, predicted = cm.sum(2), cm.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(truth > 0, tp / truth, 0.0)
        f1_class = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    out: dict[str, Any] = {"accuracy": tp.sum(1) / n, "precision": precision, "recall": recall,
                           "f1_class": f1_class, "support": np.bincount(y, minlength=k),
                           "f1": f1_class.mean(1), "roc_auc": None, "fpr": None, "fnr": None}
    if pos is not None:
        n_pos = int((y == pos).sum())
        n_neg = n - n_pos
        out["f1"] = f1_class[:, pos]
        out["fpr"] = (predicted[:, pos] - tp[:, pos]) / n_neg if n_neg else None
        out["fnr"] = (truth[:, pos] - tp[:, pos]) / n_pos if n_pos else None
        if n_pos and n_neg:
            ranks = np.stack([_average_ranks(scores[:, j, pos]) for j in range(n_layers)], 1)
            out["roc_auc"] = (ranks[y == pos].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return out


def _mean_std(folds: list[dict[str, Any]], key: str) -> tuple[list[float], list[float] | None]:
    """(n_layers,) mean over folds of a metric every fold has, and its std (``None`` for one fold)."""
    arr = np.array([f[key] for f in folds], dtype=np.float64)
    std = [float(v) for v in arr.std(0)] if len(folds) > 1 else None
    return [float(v) for v in arr.mean(0)], std


def _optional_mean_std(folds: list[dict[str, Any]], key: str) -> tuple[list[float] | None, list[float] | None]:
    """As :func:`_mean_std`, or ``(None, None)`` when some fold lacks the metric (e.g. ROC-AUC, one class)."""
    if any(f[key] is None for f in folds):
        return None, None
    return _mean_std(folds, key)


def classifier_scores(o: Outcome, classes: list[str], layers: list[int], threshold: float) -> ClassifierScores:
    """One classifier's metrics: means (and stds) over its folds, per class, best and first layer."""
    acc, acc_std = _mean_std(o.fold_metrics, "accuracy")
    f1, f1_std = _mean_std(o.fold_metrics, "f1")
    auc, auc_std = _optional_mean_std(o.fold_metrics, "roc_auc")
    fpr, _ = _optional_mean_std(o.fold_metrics, "fpr")
    fnr, _ = _optional_mean_std(o.fold_metrics, "fnr")
    per_class = {}
    for k, name in enumerate(classes):
        def col(key: str, k: int = k) -> list[float]:
            return [float(v) for v in np.mean([f[key][:, k] for f in o.fold_metrics], 0)]
        per_class[name] = ClassMetrics(precision=col("precision"), recall=col("recall"), f1=col("f1_class"),
                                       support=int(sum(int(f["support"][k]) for f in o.fold_metrics)))
    best = max(range(len(layers)), key=lambda j: (acc[j], -j))
    first = next((layers[j] for j, a in enumerate(acc) if a >= threshold), None)
    return ClassifierScores(classifier=o.name, accuracy=acc, accuracy_std=acc_std, f1=f1, f1_std=f1_std, roc_auc=auc,
                            roc_auc_std=auc_std, fpr=fpr, fnr=fnr, per_class=per_class, best_layer=layers[best],
                            first_layer=first, fit_seconds=o.seconds)


def group_scores(ev: EvalSet, rows: IntArray, outcomes: list[Outcome], classes: list[str], pos: int | None,
                 group_by: Sequence[GroupField]) -> dict[str, GroupScores]:
    """Accuracy (and share flagged positive) within each label / category / family of the scored ``rows``."""
    members: dict[tuple[GroupField, str], list[int]] = {}
    for i in rows.tolist():
        if "label" in group_by:
            members.setdefault(("label", ev.raw_labels[i]), []).append(i)
        if "category" in group_by and ev.categories is not None and ev.categories[i] is not None:
            members.setdefault(("category", str(ev.categories[i])), []).append(i)
        if "family" in group_by and ev.families is not None and ev.families[i] is not None:
            members.setdefault(("family", f"{ev.raw_labels[i]}/{ev.families[i]}"), []).append(i)
    out = {}
    for (by, name), group in sorted(members.items()):
        idx = np.array(group)
        truth = ev.codes[idx]
        acc, rate = {}, {}
        for o in outcomes:
            pred = o.pred[idx]
            acc[o.name] = [float(v) for v in (pred == truth[:, None]).mean(0)]
            if pos is not None:
                rate[o.name] = [float(v) for v in (pred == pos).mean(0)]
        counts = {classes[c]: int(k) for c, k in enumerate(np.bincount(truth, minlength=len(classes))) if k}
        out[f"{by}:{name}"] = GroupScores(by=by, name=name, n=len(idx), classes=counts, accuracy=acc,
                                          positive_rate=rate if pos is not None else None)
    return out

