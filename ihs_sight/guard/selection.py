"""How :meth:`~ihs_sight.Guard.fit` chooses: repeated folds, out-of-fold scores, the layer rule, the threshold.

Every prompt is scored, per repeat, by probes that never saw it; the layer is the earliest whose
out-of-fold accuracy reaches the target with one standard error to spare; the threshold is the
cut that flags at most the target false-positive rate of those out-of-fold scores. The surface
baselines are scored on the very same folds. With ``folds="family"`` each wrapper family is one
fold (:func:`family_folds`): its prompts are scored by probes that never saw that wrapper.

Also here: what the fit reads (:class:`Readings`, :func:`read`), its checked settings
(:func:`settings`, :func:`fit_prompts`) and its report (:class:`GuardFitReport`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from .. import checks
from ..errors import InputError
from ..layers import check_layer, check_layers
from ..models import Model
from ..probe import LayerProbe
from ..probe.baselines import BaselineScores, surface_baselines
from ..prompts import PromptSet
from .features import POOLS, TOKEN_POOLS, Pool, TokenStates, layer_features, pool_scores, token_states

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CLASSIFIERS: tuple[str, ...] = ("logreg", "svm", "mlp")
"""The probes a guard can read its layer with (:class:`~ihs_sight.LayerProbe`'s torch engine)."""


def check_guard_layer(layer: Any, n_layers: int) -> int:
    """A guard's exit layer: ``1..L`` (layer 0, the embeddings, runs no block to exit after)."""
    return check_layer(layer, n_layers, low=1)


Folds = Literal["stratified", "family"]
FOLDS: tuple[Folds, ...] = ("stratified", "family")
"""How :meth:`~ihs_sight.Guard.fit` folds: ``cv`` stratified folds, or each wrapper family one fold."""

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
    counts = np.unique([strata[int(i)].split("|", 1)[0] for i in direct], return_counts=True)[1]
    if len(direct) and counts.min() < cv:
        raise InputError(f"folds='family' cuts the direct prompts into cv={cv} folds, but a label has only "
                         f"{int(counts.min())} direct prompts; add direct prompts or lower cv.")
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


# ---------------------------------------------------------------------------- the fit's report


class RateRow(BaseModel):
    """A flag rate over a group of prompts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    group: str
    n: int
    flagged: int
    rate: float


class GuardFitReport(BaseModel):
    """How a guard was fitted: the layer search, the calibration, what it met."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    layer: int
    """The layer the guard reads (0 = embeddings, l = block l's output)."""
    n_layers: int
    """L, the model's number of blocks; the guard runs ``layer / L`` of them."""
    pool: str
    """How the layer is read (:mod:`ihs_sight.guard.features`): ``"last"``, ``"user_last"``, ``"mean"``,
    or a per-token probe pooled by ``"max"`` / ``"topk"``."""
    top_k: int | None = None
    """Tokens ``"topk"`` averages (``None`` for the other pools)."""
    classifier: str
    """The probe at that layer."""
    target_accuracy: float
    """Cross-validated accuracy the layer had to reach."""
    target_fpr: float
    """False-positive rate the threshold was calibrated to."""
    target_met: bool
    """Whether some layer reached ``target_accuracy`` with one standard error to spare (if not:
    the earliest layer within one standard error of the best out-of-fold accuracy was taken)."""
    C: float | None
    """Inverse L2 strength of the linear probe, chosen with the layer (``None`` for the MLP)."""
    cv: int
    """Folds of the layer search and of the out-of-fold calibration."""
    cv_repeats: int = 1
    """Times the ``cv``-fold split was redrawn; accuracies are averaged over them, calibration pools them."""
    folds: str = "stratified"
    """``"stratified"`` k-fold, or ``"family"``: each wrapper family one fold (scored by probes that never saw
    it), the direct prompts in ``cv`` stratified folds."""
    cv_layers: list[int]
    """Layers searched."""
    cv_accuracy: list[float]
    """Out-of-fold accuracy of each searched layer, at the chosen ``C`` (mean over repeats); at P = 0.5 for
    the state pools, at each layer's own ``target_fpr`` cut for the token pools."""
    cv_accuracy_by_C: dict[str, list[float]]
    """Out-of-fold accuracy of each searched layer for every ``C`` tried."""
    threshold: float
    """P(malicious) above which a prompt is flagged."""
    calibration_fpr: float
    """Share of normal prompts flagged, out of fold (each scored by a probe that never saw it),
    over all repeats."""
    calibration_tpr: float
    """Share of malicious prompts flagged, out of fold, over all repeats."""
    n_prompts: int
    """Labelled prompts: the final probe is fitted on all of them."""
    random_state: int
    """Seed of the split, the folds and the probe."""
    cv_baselines: BaselineScores | None = None
    """Surface baselines (bag-of-words, form only) out of fold on the same folds, mean over repeats."""
    cv_lift: list[float] | None = None
    """(n_searched,) ``cv_accuracy`` minus the best surface baseline's accuracy: what the layer adds."""
    cv_by_family: list[RateRow] | None = None
    """Out-of-fold flag rates at the chosen layer and threshold per ``label/family`` (direct prompts as
    ``label/direct``), all repeats pooled; with ``folds="family"`` each wrapped family's rates are
    those of probes that never saw its wrapper."""
    fit_seconds: float
    """Wall time of the whole fit, forward passes included."""

    def plot(self, title: str | None = None) -> Figure:
        """Out-of-fold accuracy of each searched layer (per ``C``), the target and the chosen layer."""
        from ..plots.guard import layer_search_plot

        return layer_search_plot(self, title=title)


def flag_rates(keys: Sequence[str | None], hits: Sequence[bool]) -> list[RateRow]:
    groups: dict[str, list[bool]] = {}
    for k, h in zip(keys, hits):
        groups.setdefault(k or "-", []).append(bool(h))
    return [RateRow(group=g, n=len(v), flagged=sum(v), rate=round(sum(v) / len(v), 4)) for g, v in sorted(groups.items())]


def pooled_rate(rows: Sequence[RateRow], label: str) -> RateRow:
    """One rate over every wrapped ``label/<family>`` row of ``flag_rates`` (direct ``label/direct`` rows left out)."""
    chosen = [r for r in rows if r.group.split("/", 1)[0] == label and r.group.split("/", 1)[-1] != "direct"]
    n, k = sum(r.n for r in chosen), sum(r.flagged for r in chosen)
    return RateRow(group=f"{label}/pooled", n=n, flagged=k, rate=round(k / n, 4) if n else 0.0)


# ---------------------------------------------------------------------------- the fit's settings and readings


@dataclass(frozen=True)
class Settings:
    """:meth:`Guard.fit`'s choices, each checked once."""

    search: list[int]
    target_accuracy: float
    target_fpr: float
    pool: Pool
    classifier: str
    c_values: list[float | None]
    cv: int
    cv_repeats: int
    folds: Folds
    random_state: int


def settings(model: Model, *, layer: Any, target_accuracy: Any, target_fpr: Any, pool: Any, classifier: Any,
             C: Any, cv: Any, cv_repeats: Any, folds: Any, random_state: Any) -> Settings:
    """:meth:`Guard.fit`'s arguments, each checked once, as :class:`Settings`."""
    if isinstance(layer, str) and layer == "auto":
        search = list(range(1, model.n_layers + 1))
    elif isinstance(layer, (list, tuple)):
        search = sorted(set(check_layers(list(layer), model.n_layers, low=1, what="layer")))
    else:
        search = [check_guard_layer(layer, model.n_layers)]
    classifier = checks.one_of("classifier", classifier, CLASSIFIERS)
    return Settings(
        search=search,
        target_accuracy=checks.fraction("target_accuracy", target_accuracy),
        target_fpr=checks.fraction("target_fpr", target_fpr),
        pool=checks.one_of("pool", pool, POOLS), classifier=classifier,
        c_values=[None] if classifier == "mlp" else check_c_values(C),
        cv=int(checks.number("cv", cv, low=2, integer=True)),
        cv_repeats=int(checks.number("cv_repeats", cv_repeats, low=1, integer=True)),
        folds=checks.one_of("folds", folds, FOLDS),
        random_state=int(checks.number("random_state", random_state, low=0, integer=True)))


def fit_prompts(prompts: Any, st: Settings, *, lofo: bool = False) -> PromptSet:
    """The labelled prompts a guard is fitted on, checked: normal, malicious or jailbreak, enough of each."""
    if not isinstance(prompts, PromptSet):
        raise InputError("prompts must be a labelled PromptSet (e.g. load_prompts().train), got "
                         f"{type(prompts).__name__}.")
    bad = sorted({str(x) for x in prompts.labels if x not in ("normal", "malicious", "jailbreak")})
    if bad:
        raise InputError(f"Guard.fit needs prompts labelled 'normal', 'malicious' or 'jailbreak'; found {bad}. "
                         "Select them first, e.g. data.normal + data.malicious.")
    labels = fit_labels(prompts)
    if min(labels.count("malicious"), labels.count("normal")) < 2 * st.cv:
        raise InputError(f"Guard.fit needs at least {2 * st.cv} prompts of each label (jailbreaks count as "
                         f"malicious); got {prompts.counts()}.")
    families = sorted({p.family for p in prompts if p.family is not None})
    if lofo and not families:
        raise InputError("leave_one_family_out needs wrapped prompts (with a family) among prompts; load them with "
                         "load_prompts(wrapped_train=True).")
    if st.folds == "family" and len(families) < (3 if lofo else 2):
        raise InputError(f"folds='family' needs wrapped prompts of at least two families{' once one is left out' if lofo else ''}; "
                         f"found {families or 'none'}. Load them with load_prompts(wrapped_train=True).")
    return prompts


def layer_accuracy(oof: np.ndarray[Any, Any], y: np.ndarray[Any, Any], st: Settings) -> np.ndarray[Any, Any]:
    """(n_search,) out-of-fold accuracy of each searched layer, mean over repeats.

    State pools: at P = 0.5. Token pools: at each layer's own ``target_fpr`` cut of the normal
    prompts' scores, since a maximum (or top-k mean) of per-token probabilities is not centred on 0.5.
    """
    if st.pool not in TOKEN_POOLS:
        return np.asarray(((oof > 0.5) == y[None, :, None]).mean((0, 1)))
    cuts = np.array([threshold_at_fpr(oof[:, ~y, j].ravel(), st.target_fpr) for j in range(oof.shape[2])])
    return np.asarray(((oof > cuts[None, None, :]) == y[None, :, None]).mean((0, 1)))


def fit_labels(prompts: PromptSet) -> list[str]:
    """Each prompt's class for the probe: a jailbreak is a malicious request in a wrapper."""
    return ["malicious" if v == "jailbreak" else str(v) for v in prompts.labels]


def read(model: Model, prompts: Any, layers: list[int], pool: Pool, *, batch_size: int, chat: bool,
         system_prompt: str | None, cache: bool | str | Path, progress: bool) -> Readings:
    """The guard's readings of ``prompts`` at ``layers``: one state each, or every own token for the token pools."""
    if pool in TOKEN_POOLS:
        return Readings(pool, tokens=token_states(model, prompts, layers, batch_size=batch_size, chat=chat,
                                                  system_prompt=system_prompt, progress=progress))
    return Readings(pool, x=layer_features(model, prompts, layers, pool=pool, batch_size=batch_size, chat=chat,
                                           system_prompt=system_prompt, cache=cache, progress=progress))
