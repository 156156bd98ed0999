"""How :meth:`~ihs_sight.Guard.fit` chooses: repeated folds, out-of-fold scores, the layer rule, the threshold.

Every prompt is scored, per repeat, by probes that never saw it; the layer is the earliest whose
out-of-fold accuracy reaches the target with one standard error to spare; the threshold is the
cut that flags at most the target false-positive rate of those out-of-fold scores. The surface
baselines are scored on the very same folds. With ``folds="family"`` each wrapper family is one
fold (:func:`family_folds`): its prompts are scored by probes that never saw that wrapper.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..probe import LayerProbe
from ..probe.baselines import BaselineScores, surface_baselines
from .features import TOKEN_POOLS, Pool, TokenStates, pool_scores

IntArray = np.ndarray[Any, Any]


@dataclass(frozen=True)
class Readings:
    """What a guard reads of each prompt at the searched layers: one state (``x``) or every own token (``tokens``)."""

    pool: Pool
    x: torch.Tensor | None = None
    """(n, n_layers, D) for the state pools."""
    tokens: TokenStates | None = None
    """Every own token's states for the token pools."""

    def __len__(self) -> int:
        return int(self.x.shape[0]) if self.x is not None else len(self.tokens)  # type: ignore[arg-type]

    @property
    def n_layers(self) -> int:
        """Layers read."""
        return int(self.x.shape[1] if self.x is not None else self.tokens.states.shape[1])  # type: ignore[union-attr]

    def take(self, idx: Sequence[int] | IntArray) -> Readings:
        """The readings of the prompts ``idx``, in that order."""
        if self.x is not None:
            return Readings(self.pool, x=self.x[torch.as_tensor(np.asarray(idx, dtype=np.int64))])
        assert self.tokens is not None
        t = self.tokens
        counts = torch.tensor([0] + [int(t.offsets[i + 1] - t.offsets[i]) for i in idx], dtype=torch.long)
        return Readings(self.pool, tokens=TokenStates(t.states[t.rows(idx)], counts.cumsum(0)))

    def at(self, k: int) -> Readings:
        """Only the ``k``-th searched layer."""
        if self.x is not None:
            return Readings(self.pool, x=self.x[:, k:k + 1])
        assert self.tokens is not None
        return Readings(self.pool, tokens=TokenStates(self.tokens.states[:, k:k + 1], self.tokens.offsets))

    def fit(self, idx: IntArray, labels: Sequence[str], classifier: str, c: float | None,
            random_state: int) -> LayerProbe:
        """A probe fitted on the prompts ``idx`` (token pools: on their sampled tokens, each with its prompt's label)."""
        kwargs: dict[str, Any] = {} if c is None else {"C": c}
        probe = LayerProbe(classifier, random_state=random_state, **kwargs)
        if self.x is not None:
            return probe.fit(self.x[torch.from_numpy(np.asarray(idx))], [labels[i] for i in idx])
        assert self.tokens is not None
        rows, owner = self.tokens.fit_rows(idx, random_state)
        return probe.fit(self.tokens.states[rows], [labels[int(idx[o])] for o in owner])

    def p_malicious(self, probe: LayerProbe, idx: IntArray) -> np.ndarray[Any, Any]:
        """(len(idx), n_layers) P(malicious) of the prompts ``idx`` (token pools: pooled over all their tokens)."""
        col = list(probe.classes_).index("malicious")
        if self.x is not None:
            return np.asarray(probe.predict_proba(self.x[torch.from_numpy(np.asarray(idx))])[:, :, col])
        assert self.tokens is not None and self.pool in TOKEN_POOLS
        p = probe.predict_proba(self.tokens.states[self.tokens.rows(idx)])[:, :, col]
        return pool_scores(p, self.tokens.owners(idx), len(idx), self.pool)


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


def family_folds(families: Sequence[str | None], strata: Sequence[str], cv: int, repeats: int,
                 random_state: int) -> list[list[IntArray]]:
    """Leave-one-family-out folds: each wrapper family is one fold; the direct prompts (no family)
    are cut into ``cv`` stratified folds, redrawn ``repeats`` times (the family folds stay)."""
    fam = np.array([f or "" for f in families])
    names = [f for f in dict.fromkeys(fam.tolist()) if f]
    if len(names) < 2:
        raise InputError(f"folds='family' needs wrapped prompts of at least two families; found {names or 'none'}. "
                         "Load them with load_prompts(wrapped_train=True).")
    direct = np.flatnonzero(fam == "")
    by_family = [np.flatnonzero(fam == f) for f in names]
    if len(direct) == 0:
        return [by_family for _ in range(repeats)]
    inner = repeated_folds([strata[int(i)] for i in direct], cv, repeats, random_state)
    return [by_family + [direct[t] for t in folds] for folds in inner]


def out_of_fold(readings: Readings, labels: list[str], folds: list[IntArray], classifier: str,
                c: float | None, random_state: int) -> np.ndarray[Any, Any]:
    """(n, n_layers) P(malicious) of each prompt from probes fitted on the other folds (all layers at once).

    ``folds``: one split's test-index arrays (an element of :func:`repeated_folds` or :func:`family_folds`).
    """
    n = len(labels)
    out = np.zeros((n, readings.n_layers))
    for test in folds:
        train = np.setdiff1d(np.arange(n), test)
        fitted = readings.fit(train, labels, classifier, c, random_state)
        out[test] = readings.p_malicious(fitted, test)
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

