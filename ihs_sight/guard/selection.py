"""How :meth:`~ihs_sight.Guard.fit` chooses: repeated folds, out-of-fold scores, the layer rule, the threshold.

Every prompt is scored, per repeat, by probes that never saw it; the layer is the earliest whose
out-of-fold accuracy reaches the target with one standard error to spare; the threshold is the
cut that flags at most the target false-positive rate of those out-of-fold scores. The surface
baselines are scored on the very same folds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..probe import LayerProbe
from ..probe.baselines import BaselineScores, surface_baselines


def threshold_at_fpr(normal_scores: np.ndarray[Any, Any], target_fpr: float) -> float:
    """The lowest cut ``t`` with ``mean(normal_scores > t) <= target_fpr``, from the scores themselves."""
    s = np.sort(normal_scores)[::-1]  # descending
    allowed = int(np.floor(target_fpr * len(s) + 1e-9))  # normal prompts that may be flagged
    if allowed >= len(s):
        return 0.0
    t = float(s[allowed])
    # Ties at the cut: flagging is strict (>), so every tied score stays unflagged.
    return t


def check_c_values(C: Any) -> list[float | None]:
    values = [C] if isinstance(C, (int, float)) and not isinstance(C, bool) else list(C)
    if not values or any(isinstance(c, bool) or not isinstance(c, (int, float)) or c <= 0 for c in values):
        raise InputError(f"C must be a positive number or a list of them, got {C!r}.")
    return [float(c) for c in values]


def repeated_folds(strata: Sequence[str], cv: int, repeats: int, random_state: int) -> list[list[np.ndarray[Any, Any]]]:
    """``repeats`` lists of ``cv`` test-index arrays, stratified by ``strata`` (sklearn's ``RepeatedStratifiedKFold``)."""
    from sklearn.model_selection import RepeatedStratifiedKFold

    codes = np.unique(np.asarray(strata), return_inverse=True)[1]
    splitter = RepeatedStratifiedKFold(n_splits=cv, n_repeats=repeats, random_state=random_state)
    tests = [test for _, test in splitter.split(np.zeros(len(codes)), codes)]
    return [tests[r * cv:(r + 1) * cv] for r in range(repeats)]


def pick_layer(accuracy: np.ndarray[Any, Any], n: int, target: float) -> tuple[int, bool]:
    """Index of the guard layer in ``accuracy`` (one out-of-fold accuracy per searched layer) and whether it met ``target``.

    The earliest layer whose accuracy reaches ``target`` with one binomial standard error
    (``sqrt(a (1 - a) / n)``) to spare: the first crossing of a noisy accuracy curve sits,
    more often than not, on an upward fluctuation, so a layer that only just reaches the
    target tends to miss it on new prompts. If no layer does, the earliest layer within one
    standard error of the best (a flat curve's maximum is mostly noise; earlier is cheaper).
    """
    se = np.sqrt(accuracy * (1 - accuracy) / n)
    met = np.flatnonzero(accuracy - se >= target)
    if len(met):
        return int(met[0]), True
    top = int(np.argmax(accuracy))
    return int(np.flatnonzero(accuracy >= accuracy[top] - se[top])[0]), False


def out_of_fold(x: torch.Tensor, labels: list[str], folds: list[np.ndarray[Any, Any]], classifier: str,
                 c: float | None, random_state: int) -> np.ndarray[Any, Any]:
    """(n, n_layers) P(malicious) of each prompt from probes fitted on the other folds (all layers at once).

    ``folds``: one split's ``cv`` test-index arrays (an element of :func:`_folds`).
    """
    out = np.zeros((x.shape[0], x.shape[1]))
    kwargs: dict[str, Any] = {} if c is None else {"C": c}
    for test in folds:
        train = np.setdiff1d(np.arange(x.shape[0]), test)
        fitted = LayerProbe(classifier, random_state=random_state, **kwargs).fit(
            x[torch.from_numpy(train)], [labels[i] for i in train])
        proba = fitted.predict_proba(x[torch.from_numpy(test)])
        out[test] = proba[:, :, list(fitted.classes_).index("malicious")]
    return out


def fold_baselines(texts: list[str], y: np.ndarray[Any, Any], splits: list[list[np.ndarray[Any, Any]]],
                       random_state: int) -> BaselineScores:
    """The surface baselines' out-of-fold accuracy on the guard's own folds, averaged over repeats."""
    n = len(texts)
    per_repeat = [surface_baselines(texts, y.astype(np.int64), [(np.setdiff1d(np.arange(n), test), test)
                                                              for test in folds], pooled=True,
                                    random_state=random_state) for folds in splits]
    return BaselineScores(accuracy={name: float(np.mean([r.accuracy[name] for r in per_repeat]))
                                    for name in per_repeat[0].accuracy})

