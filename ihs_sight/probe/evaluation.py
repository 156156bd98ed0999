"""probe() and probe_transfer(): hold prompts out, fit per-layer probes, score them -> ProbeReport.

:func:`probe` checks its parameters once, plans what is held out (a split, k folds, whole
categories, or another set), fits each classifier once per fold and scores prompts its probes
never saw; :func:`probe_transfer` scores fitted probes on new prompts.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, PrivateAttr
from sklearn.model_selection import LeaveOneGroupOut, StratifiedKFold, train_test_split
from tqdm.auto import tqdm

from .. import checks
from ..errors import InputError
from ..extract import ExtractMeta, HiddenStates
from .baselines import BaselineScores, surface_baselines
from .estimator import (
    ENGINES,
    PRESETS,
    Engine,
    LayerProbe,
    Preset,
    check_classifier,
    check_fitted,
    check_positive,
    engine_of,
    fit_encoded,
    predict_encoded,
)
from .inputs import (
    EvalSet,
    IntArray,
    TrainingSet,
    as_features,
    as_labels,
    encode,
    positive_class,
    training_set,
)
from .metrics import (
    GROUP_FIELDS,
    ClassifierScores,
    GroupField,
    GroupScores,
    Outcome,
    classifier_scores,
    group_scores,
    layer_metrics,
)
from .solvers import CLASSIFIERS, SEED_RANDOM_STATE, SEED_TEST_SIZE, name_of

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

DEFAULT_LABEL_MAP = {"jailbreak": "malicious"}
"""Applied to evaluation labels the probe was not trained on: a jailbreak is a malicious request."""

Evaluation = Literal["holdout", "cv", "category", "family", "transfer"]
Folds = list[tuple[IntArray, IntArray]]
"""(train rows, scored rows) of each fit."""


class ProbeReport(BaseModel):
    """Per-layer probe metrics: which layers separate the classes, and how honestly.

    ``evaluation`` says what was held out: ``holdout`` (one split), ``cv`` (k folds, metrics
    are means with stds), ``category`` (leave one category out; metrics pooled over the
    held-out predictions) or ``transfer`` (fitted on one set, scored on another).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    evaluation: Evaluation
    """How the scored prompts were kept from the probes: holdout, cv, category or transfer."""
    layers: list[int]
    """(n_layers,) the probed layer indices; 0 = embeddings, l = output of block l."""
    n_layers: int
    """() ``L``, the model's number of blocks (states have ``L + 1`` layers)."""
    classes: list[str]
    """(n_classes,) class names, ``normal`` first, then ``positive``, then the rest sorted."""
    positive: str | None
    """The positive class of the binary metrics (FPR, FNR, F1, ROC-AUC); ``None`` for more classes."""
    classifiers: list[str]
    """The classifiers, in the order given."""
    scores: dict[str, ClassifierScores]
    """Classifier -> its per-layer metrics."""
    groups: dict[str, GroupScores] = {}
    """``<by>:<name>`` -> accuracy within that group of scored prompts."""
    threshold: float
    """() the accuracy that ``first_layer`` looks for."""
    n_train: int
    """() prompts each probe was fitted on (mean over folds)."""
    n_test: int
    """() prompts scored (each once)."""
    folds: int | None = None
    """() number of fits per classifier for ``cv`` / ``category``."""
    test_size: float | None = None
    """() held-out share for ``holdout``."""
    random_state: int
    """() seed of the split / folds and of the probes."""
    engine: str
    """``torch`` or ``sklearn``."""
    preset: str | None = None
    """``seed`` when the seed code's exact settings were used."""
    label_map: dict[str, str] = {}
    """Evaluation label -> trained class, for labels the probes never saw (e.g. jailbreak -> malicious)."""
    fit_seconds: float
    """() wall time spent fitting all probes (all classifiers and folds)."""
    baselines: BaselineScores | None = None
    """Surface baselines (bag-of-words, form only) fit and scored on the same prompts as the probes;
    ``None`` when the states carried no prompt texts (a tensor) and for :func:`probe_transfer`, which
    has fitted probes but not the texts they were fitted on."""
    lift: dict[str, list[float]] | None = None
    """Classifier -> (n_layers,) accuracy minus the best surface baseline's: what the hidden states add."""
    meta: ExtractMeta | None = None
    """Provenance of the training states, when they were a HiddenStates."""
    test_meta: ExtractMeta | None = None
    """Provenance of the scored states (``transfer``), when they were a HiddenStates."""

    _probes: dict[str, LayerProbe] = PrivateAttr(default_factory=dict)

    def __eq__(self, other: object) -> bool:
        # The fitted probes are a process-local extra, not part of the result: a report read
        # back from its JSON equals the one that wrote it.
        if not isinstance(other, ProbeReport):
            return NotImplemented
        return self.__dict__ == other.__dict__

    @property
    def best_layer(self) -> int:
        """The layer with the highest accuracy of any classifier (earliest on ties)."""
        best = max((acc, -layer) for s in self.scores.values() for layer, acc in zip(self.layers, s.accuracy))
        return -best[1]

    @property
    def first_layer(self) -> int | None:
        """The first layer at which some classifier's accuracy reaches ``threshold``."""
        return self.first_layer_at(self.threshold)

    def first_layer_at(self, threshold: float, classifier: str | None = None) -> int | None:
        """The first layer whose accuracy reaches ``threshold`` (one classifier, or any)."""
        names = [classifier] if classifier is not None else list(self.scores)
        for name in names:
            if name not in self.scores:
                raise InputError(f"No classifier {name!r} in this report; it has {list(self.scores)}.")
        hits = [layer for name in names for layer, acc in zip(self.layers, self.scores[name].accuracy)
                if acc >= threshold]
        return min(hits) if hits else None

    def summary(self) -> str:
        """A few lines: per classifier, the best layer and the first layer reaching ``threshold``."""
        lines = [(f"{self.evaluation} evaluation, {self.n_train} train / {self.n_test} scored prompts, "
                  f"classes {self.classes}, fit {self.fit_seconds:.1f} s")]
        if self.baselines is not None:
            lines.append("surface baselines (same prompts): " + ", ".join(
                f"{name} {acc:.3f}" for name, acc in self.baselines.accuracy.items()))
        for name, s in self.scores.items():
            best = s.accuracy[self.layers.index(s.best_layer)]
            first = "none" if s.first_layer is None else str(s.first_layer)
            lift = "" if self.lift is None else f", lift {self.lift[name][self.layers.index(s.best_layer)]:+.3f}"
            lines.append(f"{name}: best layer {s.best_layer} ({best:.3f}{lift}); first layer >= {self.threshold:g}: "
                         f"{first}")
        return "\n".join(lines)

    @property
    def probes(self) -> dict[str, LayerProbe]:
        """Classifier -> the fitted :class:`LayerProbe` (``holdout`` / ``transfer`` reports made in this process)."""
        if not self._probes:
            raise InputError(
                "This report holds no fitted probes: they are kept for holdout and train/test evaluations in the "
                "process that ran probe(), never in the JSON. Refit with probe(states, test=...) or LayerProbe.fit."
            )
        return dict(self._probes)

    def transfer(self, states: Any, labels: Any = None, *, label_map: Mapping[str, str] | None = None,
                 group_by: Sequence[str] | None = ("label", "family"), progress: bool = True) -> ProbeReport:
        """Score this report's fitted probes on other prompts (see :func:`probe_transfer`)."""
        report = probe_transfer(self.probes, states, labels, label_map=label_map, group_by=group_by,
                                threshold=self.threshold, progress=progress)
        return report.model_copy(update={"meta": self.meta, "random_state": self.random_state,
                                          "engine": self.engine, "preset": self.preset})

    def plot(self, metric: str = "accuracy", *, classifiers: Sequence[str] | None = None,
             group_by: str | None = None) -> Figure:
        """Metric vs layer (x = layer index, 0 = embeddings); see :func:`ihs_sight.plots.probe.plot_probe`."""
        from ..plots.probe import plot_probe

        return plot_probe(self, metric=metric, classifiers=classifiers, group_by=group_by)


# ---------------------------------------------------------------------------- parameters


def _check_args(*, preset: Any, engine: Any, threshold: Any, random_state: Any, cv: Any, test: Any,
                test_size: Any, positive: Any) -> None:
    """probe()'s scalar parameters, each checked once."""
    checks.one_of("preset", preset, PRESETS)
    checks.one_of("engine", engine, ENGINES)
    checks.number("threshold", threshold, low=0, high=1, low_open=True)
    checks.number("random_state", random_state, low=0, integer=True)
    check_positive(positive)
    if cv is not None and test is not None:
        raise InputError("Pass either cv= or test=, not both: test= already fixes what is held out.")
    if cv is not None and cv not in ("category", "family"):
        checks.number("cv", cv, low=2, integer=True)
    if cv is None and test is None:
        checks.fraction("test_size", test_size)
    if preset == "seed":
        if cv is not None:
            raise InputError("preset='seed' reproduces the seed's single hold-out split; drop cv= (or drop the preset).")
        if test is None and test_size != SEED_TEST_SIZE:
            raise InputError(f"preset='seed' uses the seed's test_size={SEED_TEST_SIZE}; drop test_size=.")


def _check_classifiers(classifiers: Any, preset: Preset | None) -> list[Any]:
    items = [classifiers] if isinstance(classifiers, str) or hasattr(classifiers, "fit") else list(classifiers)
    if not items:
        raise InputError(f"classifiers is empty; pass some of {list(CLASSIFIERS)}.")
    names = [name_of(c) for c in items]
    if len(set(names)) != len(names):
        raise InputError(f"classifiers has repeated names {names}; pass each classifier once.")
    for c in items:
        check_classifier(c, preset)
    return items


def _check_group_by(group_by: Sequence[str] | None) -> tuple[GroupField, ...]:
    if group_by is None:
        return ()
    items = (group_by,) if isinstance(group_by, str) else tuple(group_by)
    bad = [g for g in items if g not in GROUP_FIELDS]
    if bad:
        raise InputError(f"group_by entries must be among {list(GROUP_FIELDS)}, got {bad}.")
    return tuple(g for g in GROUP_FIELDS if g in items)


def _default_group_by(group_by: Sequence[str] | None, cv: Any, test: Any) -> Sequence[str] | None:
    """``group_by`` as given, or by default label and family for ``test`` and ``cv="family"``, category for
    ``cv="category"``."""
    if group_by is not None:
        return group_by
    if test is not None or cv == "family":
        return ("label", "family")
    return ("category",) if cv == "category" else None


def _check_probes(probes: LayerProbe | Mapping[str, LayerProbe] | ProbeReport) -> dict[str, LayerProbe]:
    """Fitted probes by name, all with the same classes and layers."""
    if isinstance(probes, ProbeReport):
        probes = probes.probes
    fitted = {name_of(probes.classifier): probes} if isinstance(probes, LayerProbe) else dict(probes)
    if not fitted:
        raise InputError("probes is empty; pass a fitted LayerProbe or a dict of them.")
    for p in fitted.values():
        if not isinstance(p, LayerProbe):
            raise InputError(f"probes must be LayerProbe objects, got {type(p).__name__}.")
        check_fitted(p)
    first = next(iter(fitted.values()))
    for name, p in fitted.items():
        if [str(c) for c in p.classes_] != [str(c) for c in first.classes_] or p.layers_ != first.layers_:
            raise InputError(f"Probe {name!r} has other classes or layers than the first; transfer them separately.")
    return fitted


def _label_map(label_map: Mapping[str, str] | None, classes: list[str]) -> dict[str, str]:
    mapping = {k: v for k, v in DEFAULT_LABEL_MAP.items() if v in classes and k not in classes}
    if label_map is not None:
        if not isinstance(label_map, Mapping):
            raise InputError(f"label_map must be a dict {{label: class}}, got {type(label_map).__name__}.")
        mapping |= {str(k): str(v) for k, v in label_map.items()}
    return mapping


def _eval_set(states: Any, labels: Any, classes: list[str], mapping: Mapping[str, str], what: str,
              shape: tuple[int, int]) -> tuple[EvalSet, HiddenStates | None]:
    """Prompts to score, checked against the probes' states shape and classes (after ``mapping``)."""
    x, hs = as_features(states, what)
    if tuple(x.shape[1:]) != shape:
        raise InputError(f"{what} have shape {tuple(x.shape)}, but the probes were fitted on states with "
                         f"{shape[0]} layers and {shape[1]} features; use states of the same model.")
    raw = as_labels(labels, hs, x.shape[0], what)
    mapped = [mapping.get(v, v) for v in raw]
    unknown = sorted(set(mapped) - set(classes))
    if unknown:
        raise InputError(f"{what} have labels {unknown} the probes were not trained on (classes {classes}); "
                         "pass label_map={label: trained_class}.")
    return EvalSet.of(x, encode(mapped, classes), raw, hs), hs


def _family_labels(states: Any, labels: Any) -> Any:
    """Labels for ``cv="family"``: ``jailbreak`` read as ``malicious`` (a malicious request in a wrapper) when
    ``malicious`` is among them, so a wrapper carries no class of its own."""
    x, hs = as_features(states, "states")
    raw = as_labels(labels, hs, x.shape[0], "states")
    if "malicious" not in raw:
        return labels
    return [DEFAULT_LABEL_MAP.get(v, v) for v in raw]


def _index_of(classes: list[str], name: str | None) -> int | None:
    return classes.index(name) if name is not None else None


# ---------------------------------------------------------------------------- what is held out


@dataclass
class _Plan:
    """What probe() holds out: the prompts scored, the folds, and how results are broken down."""

    evaluation: Evaluation
    ev: EvalSet
    folds: Folds
    groups: tuple[GroupField, ...]
    label_map: dict[str, str]
    test_meta: ExtractMeta | None = None


def _plan(train: TrainingSet, *, cv: int | Literal["category", "family"] | None, test: Any, test_labels: Any,
          label_map: Mapping[str, str] | None, groups: tuple[GroupField, ...], test_size: float,
          random_state: int, seed: bool) -> _Plan:
    if test is not None:
        mapping = _label_map(label_map, train.classes)
        shape = (int(train.x.shape[1]), int(train.x.shape[2]))
        ev, hs = _eval_set(test, test_labels, train.classes, mapping, "test", shape)
        folds = [(np.arange(len(train.codes)), np.arange(len(ev.codes)))]
        return _Plan("transfer", ev, folds, groups, mapping, hs.meta if hs is not None else None)
    ev = EvalSet.of(train.x, train.codes, train.labels, train.hs)
    if cv == "category":
        return _Plan("category", ev, _category_folds(ev, train.classes), groups, {})
    if cv == "family":
        return _Plan("family", ev, _family_folds(ev, train.classes), groups, {})
    if cv is not None:
        return _Plan("cv", ev, _cv_folds(train, int(cv), random_state), groups, {})
    return _Plan("holdout", ev, [_holdout(train, test_size, random_state, seed=seed)], groups, {})


def _holdout(train: TrainingSet, test_size: float, random_state: int, *, seed: bool) -> tuple[IntArray, IntArray]:
    codes, classes = train.codes, train.classes
    n = len(codes)
    idx = np.arange(n)
    if seed:
        # The seed: unstratified, random_state=42, over the prompts in the order given.
        tr, te = train_test_split(idx, test_size=SEED_TEST_SIZE, random_state=SEED_RANDOM_STATE)
        if len(set(codes[tr].tolist())) < len(classes):
            raise InputError("The seed's unstratified split left a class out of the training part; "
                             "add prompts or drop preset='seed'.")
        return np.asarray(tr), np.asarray(te)
    counts = np.bincount(codes, minlength=len(classes))
    n_test = math.ceil(test_size * n)
    if counts.min() < 2 or n_test < len(classes) or n - n_test < len(classes):
        small = classes[int(counts.argmin())]
        raise InputError(
            f"Too few prompts for a stratified split with test_size={test_size}: {n} prompts, {len(classes)} classes, "
            f"{small!r} has {int(counts.min())}. Each class needs at least 2 prompts, and each part one of each class."
        )
    tr, te = train_test_split(idx, test_size=test_size, random_state=random_state, stratify=codes)
    return np.asarray(tr), np.asarray(te)


def _cv_folds(train: TrainingSet, k: int, random_state: int) -> Folds:
    counts = np.bincount(train.codes, minlength=len(train.classes))
    if counts.min() < k:
        small = train.classes[int(counts.argmin())]
        raise InputError(f"cv={k} needs at least {k} prompts of each class; {small!r} has {int(counts.min())}. "
                         "Use a smaller cv or add prompts.")
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=random_state)
    return [(tr, te) for tr, te in splitter.split(np.zeros(len(train.codes)), train.codes)]


def _category_folds(ev: EvalSet, classes: list[str]) -> list[tuple[IntArray, IntArray]]:
    cats = ev.categories
    if cats is None or any(c is None for c in cats):
        missing = len(ev.codes) if cats is None else sum(c is None for c in cats)
        raise InputError(f"cv='category' needs a HiddenStates whose prompts all have a category ({missing} have none).")
    names = np.array([str(c) for c in cats])
    if len(set(names.tolist())) < 2:
        raise InputError("cv='category' needs at least two categories.")
    folds = []
    for tr, te in LeaveOneGroupOut().split(np.zeros(len(names)), ev.codes, names):
        missing_classes = sorted(set(range(len(classes))) - set(ev.codes[tr].tolist()))
        if missing_classes:
            raise InputError(
                f"Leaving out category {names[te[0]]!r} removes every {classes[missing_classes[0]]!r} prompt from "
                "training; each class needs prompts from at least two categories."
            )
        folds.append((np.asarray(tr), np.asarray(te)))
    return folds


def _family_folds(ev: EvalSet, classes: list[str]) -> list[tuple[IntArray, IntArray]]:
    """Each wrapper family's prompts held out in turn; the direct prompts (no family) are always fitted."""
    fams = ev.families
    names = np.array(["" if fams is None or fams[i] is None else str(fams[i]) for i in range(len(ev.codes))])
    wrapped = [f for f in dict.fromkeys(names.tolist()) if f]
    if len(wrapped) < 2:
        raise InputError(f"cv='family' needs a HiddenStates with wrapped prompts of at least two families; found "
                         f"{wrapped or 'none'}. Extract load_prompts(wrapped_train=True).train.")
    folds = []
    for f in wrapped:
        tr, te = np.flatnonzero(names != f), np.flatnonzero(names == f)
        missing_classes = sorted(set(range(len(classes))) - set(ev.codes[tr].tolist()))
        if missing_classes:
            raise InputError(f"Leaving out family {f!r} removes every {classes[missing_classes[0]]!r} prompt from "
                             "training.")
        folds.append((tr, te))
    return folds


# ---------------------------------------------------------------------------- fitting and scoring


def _fit_and_score(templates: list[LayerProbe], train: TrainingSet, plan: _Plan, pos: int | None,
                   progress: bool) -> list[Outcome]:
    """Every classifier fitted on each fold's training rows and scored on its held-out rows."""
    per_fit = [len(train.layers) if engine_of(t) == "sklearn" else 1 for t in templates]
    with tqdm(total=sum(per_fit) * len(plan.folds), desc="probe", unit="fit", disable=not progress) as bar:
        return [_fit_folds(t, train, plan, pos, bar) for t in templates]


def _fit_folds(template: LayerProbe, train: TrainingSet, plan: _Plan, pos: int | None, bar: Any) -> Outcome:
    """One classifier over every fold; ``category`` metrics are pooled over the held-out predictions."""
    ev, k = plan.ev, len(train.classes)
    pooled = plan.evaluation in ("category", "family")
    pred_all = np.full((len(ev.codes), len(train.layers)), -1, dtype=np.int64)
    score_all = np.zeros((len(ev.codes), len(train.layers), k))
    o = Outcome(name=name_of(template.classifier), pred=pred_all)
    for tr, te in plan.folds:
        fitted = fit_encoded(template, train.x[torch.from_numpy(tr)], train.codes[tr], train.classes, train.layers,
                             bar)
        o.seconds += fitted.fit_seconds_
        pred, scores = predict_encoded(fitted, ev.x[torch.from_numpy(te)])
        pred_all[te], score_all[te] = pred, scores
        if not pooled:
            o.fold_metrics.append(layer_metrics(ev.codes[te], pred, scores, k, pos))
        if len(plan.folds) == 1:
            o.probe = fitted
    if pooled:
        scored = np.concatenate([te for _, te in plan.folds])
        o.fold_metrics.append(layer_metrics(ev.codes[scored], pred_all[scored], score_all[scored], k, pos))
    return o


def _baselines(train: TrainingSet, plan: _Plan, random_state: int) -> BaselineScores | None:
    """The surface baselines on the probes' own folds, when both sides carry prompt texts."""
    if train.hs is None or plan.ev.texts is None:
        return None
    scored = None if plan.evaluation != "transfer" else plan.ev
    return surface_baselines(list(train.hs.prompts), train.codes, plan.folds,
                             scored_texts=None if scored is None else scored.texts,
                             scored_codes=None if scored is None else scored.codes,
                             pooled=plan.evaluation in ("category", "family"), random_state=random_state)


def _report(outcomes: list[Outcome], ev: EvalSet, rows: IntArray, *, classes: list[str], layers: list[int],
            positive: str | None, groups: tuple[GroupField, ...], threshold: float, **fields: Any) -> ProbeReport:
    """The report of scored ``rows`` of ``ev``; it keeps the probes of single-fit outcomes."""
    report = ProbeReport(
        layers=layers,
        classes=classes,
        positive=positive,
        classifiers=[o.name for o in outcomes],
        scores={o.name: classifier_scores(o, classes, layers, threshold) for o in outcomes},
        groups=group_scores(ev, rows, outcomes, classes, _index_of(classes, positive), groups),
        threshold=threshold,
        fit_seconds=sum(o.seconds for o in outcomes),
        **fields,
    )
    report._probes = {o.name: o.probe for o in outcomes if o.probe is not None}
    return report


# ---------------------------------------------------------------------------- entry points


def probe(
    states: Any,
    labels: Any = None,
    *,
    classifiers: Sequence[Any] = CLASSIFIERS,
    layers: Sequence[int] | None = None,
    test_size: float = 0.3,
    cv: int | Literal["category", "family"] | None = None,
    random_state: int = 0,
    preset: Preset | None = None,
    engine: Engine = "torch",
    test: Any = None,
    test_labels: Any = None,
    label_map: Mapping[str, str] | None = None,
    group_by: Sequence[str] | None = None,
    positive: str = "malicious",
    threshold: float = 0.95,
    progress: bool = True,
) -> ProbeReport:
    """Fit weak classifiers on every layer's last-token state and score them on held-out prompts.

    Args:
        states: a :class:`HiddenStates` or a tensor / array (n_prompts, L + 1, d_model).
        labels: one label per prompt (``None``: the HiddenStates' labels). Two or more classes.
        classifiers: names among ``svm``, ``mlp``, ``logreg``, or unfitted sklearn classifiers.
        layers: layer indices to probe (``None``: all ``0..L``; 0 = embeddings).
        test_size: held-out share of a stratified split (``holdout``, the default evaluation).
        cv: ``k`` for stratified k-fold cross-validation (metrics are fold means, with stds),
            or ``"category"`` to leave each prompt category out in turn (needs a HiddenStates
            with categories): every prompt is scored by a probe that never saw its category; or
            ``"family"`` to leave each wrapper family out in turn: a family's wrapped prompts are
            scored by probes fitted on every other prompt (direct prompts are always fitted, never
            scored), and a ``jailbreak`` label counts as ``malicious`` when that class is present.
        random_state: seeds the split, the folds and the probes.
        preset: ``"seed"`` reproduces the seed code exactly: sklearn ``SVC(kernel="linear")``
            on raw features and ``StandardScaler`` + ``MLPClassifier((100,), max_iter=300,
            alpha=0.01, solver="adam", learning_rate_init=0.01, random_state=42)``, each on one
            unstratified ``train_test_split(test_size=0.3, random_state=42)`` of the prompts in
            the order given (the seed stacked all normal prompts, then all malicious ones), labels
            coded normal=0, malicious=1. ``random_state`` is then not used; ``logreg`` (not in the
            seed) is ``StandardScaler`` + ``LogisticRegression``.
        engine: ``"torch"``: all layers trained as one batched model on standardised features
            (``svm``: L2 linear SVM, squared hinge; ``logreg``; ``mlp``: 64 relu units), see
            :class:`LayerProbe`. ``"sklearn"``: one cloned sklearn estimator per layer.
        test: other states to score instead of splitting (train on ``states``, test on these).
        test_labels: labels of ``test`` (``None``: from the HiddenStates).
        label_map: evaluation label -> trained class for labels the probes never saw; by
            default ``jailbreak`` -> ``malicious`` when the probes know ``malicious``.
        group_by: break scored prompts down by ``label`` / ``category`` / ``family``
            (default: label and family for ``test``, category for ``cv="category"``).
        positive: the positive class of binary metrics (FPR, FNR, F1, ROC-AUC).
        threshold: the accuracy ``first_layer`` looks for.
        progress: show a progress bar.

    Returns:
        A :class:`ProbeReport`; holdout and ``test`` reports also hold the fitted probes
        (``report.probes``, ``report.transfer(...)``).

    Examples:
        >>> report = probe(states)                       # stratified 70/30 split, svm + mlp + logreg
        >>> report.first_layer, report.best_layer
        >>> report = probe(states, cv=5)                  # means and stds over 5 folds
        >>> report = probe(states, cv="category")         # leave-one-category-out
        >>> report = probe(wrapped_train_states, cv="family")   # leave-one-wrapper-family-out
        >>> report = probe(train_states, test=test_states).transfer(jailbreak_states)
        >>> report.plot().savefig("probe.png")
    """
    start = time.perf_counter()
    _check_args(preset=preset, engine=engine, threshold=threshold, random_state=random_state, cv=cv, test=test,
                test_size=test_size, positive=positive)
    items = _check_classifiers(classifiers, preset)
    groups = _check_group_by(_default_group_by(group_by, cv, test))
    if cv == "family":
        labels = _family_labels(states, labels)
    train = training_set(states, labels, positive=positive, layers=layers, what="states")
    plan = _plan(train, cv=cv, test=test, test_labels=test_labels, label_map=label_map, groups=groups,
                 test_size=test_size, random_state=random_state, seed=preset == "seed")
    templates = [LayerProbe(c, layers=train.layers, engine=engine, preset=preset, positive=positive,
                            random_state=random_state) for c in items]
    pos_name = positive_class(train.classes, positive)
    outcomes = _fit_and_score(templates, train, plan, _index_of(train.classes, pos_name), progress)
    baselines = _baselines(train, plan, random_state)
    scored = np.unique(np.concatenate([te for _, te in plan.folds]))
    report = _report(
        outcomes, plan.ev, scored, classes=train.classes, layers=train.layers, positive=pos_name, groups=plan.groups,
        threshold=threshold, evaluation=plan.evaluation, n_layers=train.x.shape[1] - 1,
        n_train=round(float(np.mean([len(tr) for tr, _ in plan.folds]))), n_test=len(scored),
        folds=len(plan.folds) if plan.evaluation in ("cv", "category", "family") else None,
        test_size=test_size if plan.evaluation == "holdout" else None,
        random_state=SEED_RANDOM_STATE if preset == "seed" else random_state,
        engine="sklearn" if preset == "seed" else engine, preset=preset, label_map=plan.label_map,
        meta=train.hs.meta if train.hs is not None else None, test_meta=plan.test_meta, baselines=baselines,
    )
    if baselines is not None:
        report = report.model_copy(update={"lift": {name: [round(a - baselines.best, 6) for a in s.accuracy]
                                                    for name, s in report.scores.items()}})
        report._probes = {o.name: o.probe for o in outcomes if o.probe is not None}
    log.info("probe: %s in %.1f s\n%s", plan.evaluation, time.perf_counter() - start, report.summary())
    return report


def probe_transfer(
    probes: LayerProbe | Mapping[str, LayerProbe] | ProbeReport,
    states: Any,
    labels: Any = None,
    *,
    label_map: Mapping[str, str] | None = None,
    group_by: Sequence[str] | None = ("label", "family"),
    threshold: float = 0.95,
    progress: bool = True,
) -> ProbeReport:
    """Score fitted probes on prompts they never saw, with per-label / per-family breakdown.

    Labels the probes were not trained on are mapped through ``label_map`` (by default
    ``jailbreak`` -> ``malicious``), so e.g. probes fitted on normal vs malicious report the
    share of jailbreak variants flagged malicious (``positive_rate`` of each
    ``family:jailbreak/<family>`` group) and the false-positive rate on wrapped normal
    prompts (``family:normal/<family>``), with overall FPR / FNR per layer.

    Args:
        probes: a fitted :class:`LayerProbe`, a dict name -> LayerProbe, or a report holding probes.
        states: a :class:`HiddenStates` or a tensor / array (n_prompts, L + 1, d_model).
        labels: one label per prompt (``None``: the HiddenStates' labels).
        label_map: evaluation label -> trained class.
        group_by: break results down by ``label`` / ``category`` / ``family``.
        threshold: the accuracy ``first_layer`` looks for.
        progress: show a progress bar.

    Returns:
        A :class:`ProbeReport` with ``evaluation="transfer"``.
    """
    start = time.perf_counter()
    fitted = _check_probes(probes)
    checks.number("threshold", threshold, low=0, high=1, low_open=True)
    groups = _check_group_by(group_by)
    first = next(iter(fitted.values()))
    classes = [str(c) for c in first.classes_]
    mapping = _label_map(label_map, classes)
    ev, hs = _eval_set(states, labels, classes, mapping, "states", (first.n_layers_in_, first.n_features_in_))
    pos = _index_of(classes, first.positive_)
    outcomes = []
    for name, p in tqdm(fitted.items(), desc="transfer", unit="probe", disable=not progress):
        pred, scores = predict_encoded(p, ev.x)
        outcomes.append(Outcome(name=name, pred=pred, seconds=p.fit_seconds_, probe=p,
                                fold_metrics=[layer_metrics(ev.codes, pred, scores, len(classes), pos)]))
    report = _report(
        outcomes, ev, np.arange(len(ev.codes)), classes=classes, layers=list(first.layers_), positive=first.positive_,
        groups=groups, threshold=threshold, evaluation="transfer", n_layers=first.n_layers_in_ - 1,
        n_train=first.n_samples_fit_, n_test=len(ev.codes), random_state=int(first.random_state),
        engine=engine_of(first), preset=first.preset, label_map=mapping, test_meta=hs.meta if hs is not None else None,
    )
    log.info("probe_transfer: %d prompts in %.1f s", len(ev.codes), time.perf_counter() - start)
    return report
