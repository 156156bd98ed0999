"""Early-exit safety guard: read one early layer, stop the forward pass there, decide.

If early layers already separate malicious from normal prompts, a guard needs only blocks
``1..layer`` of one forward pass. :meth:`Guard.fit` picks the earliest layer whose
cross-validated accuracy meets a target (with one standard error to spare), fits a probe there
and calibrates its threshold at a chosen false-positive rate on out-of-fold scores of the
training prompts (:mod:`.selection`); :meth:`Guard.score` runs each batch up to that layer
(nnsight's ``tracer.stop()``, :mod:`.features`) and decides.

:meth:`Guard.jailbreak_signal` is the paper's jailbreak signature as a second signal: a
prompt the guard recognises as malicious whose logit lens over the conversion band (by default
the last quarter of the layers, :func:`~ihs_sight.layers.conversion_band`) carries more
positive than negative emotion mass was recognised but not converted into a refusal.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from .. import checks, io
from ..deprecations import warn
from ..errors import InputError
from ..layers import band_layers, check_band, conversion_band
from ..lens import logit_lens
from ..models import Model
from ..probe import LayerProbe
from ..prompts import PromptSet, load_prompts, template_fingerprint
from .features import (
    POOLS,
    TOKEN_POOLS,
    TOP_K,
    Pool,
    layer_features,
    template_prefix,
    template_suffix,
    token_states,
)
from .selection import (
    Folds,
    GuardFitReport,
    RateRow,
    Readings,
    Settings,
    family_folds,
    fit_labels,
    fit_prompts,
    flag_rates,
    fold_baselines,
    layer_accuracy,
    out_of_fold,
    pick_layer,
    pooled_rate,
    read,
    repeated_folds,
    settings,
    threshold_at_fpr,
)

log = logging.getLogger(__name__)

GUARD_FORMAT = "ihs-sight.guard"
GUARD_FORMAT_VERSION = 3
"""2: ``probe_sha256`` recorded and checked; bundles written whole under a temporary name.
3: a ``features`` record (pool, and what the pool depends on: ``top_k``, the template's closing
tokens) checked on load. Bundles of versions 1 and 2 (pools ``last`` and ``mean``) load as they did before 3."""


class ModelMismatchError(InputError):
    """A saved guard was fitted on other weights or another chat template than the model given."""


# ---------------------------------------------------------------------------- results


class GuardScores(BaseModel):
    """P(malicious) and the decision for each prompt, from one early-exit forward pass."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    prompts: list[str]
    """(n,) prompt texts."""
    p_malicious: list[float]
    """(n,) the probe's probability of ``malicious`` at the guard layer."""
    flagged: list[bool]
    """(n,) ``p_malicious > threshold``."""
    layer: int
    """Guard layer."""
    threshold: float
    """Decision threshold."""
    labels: list[str | None] | None = None
    """(n,) labels, when the prompts came with them."""
    families: list[str | None] | None = None
    """(n,) jailbreak families, when the prompts came with them."""
    seconds: float
    """Wall time of scoring."""


class GuardEvaluation(BaseModel):
    """Flag rates of a guard on a labelled prompt set (from :meth:`Guard.evaluate`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    layer: int
    """Guard layer."""
    threshold: float
    """Decision threshold."""
    tpr: float | None
    """Share of direct malicious prompts flagged (``None`` without any)."""
    fpr: float | None
    """Share of direct normal prompts flagged (``None`` without any)."""
    n_malicious: int
    """Direct malicious prompts scored."""
    n_normal: int
    """Direct normal prompts scored (look-alikes included)."""
    lookalike_fpr: float | None
    """Share of look-alike normal prompts flagged (``None`` without any)."""
    n_lookalike: int
    """Look-alike normal prompts scored."""
    by_family: list[RateRow]
    """Flag rate per ``label/family`` of the wrapped prompts (jailbreaks and wrapped normals)."""
    seconds: float
    """Wall time of scoring."""

    def __getitem__(self, key: str) -> Any:
        """Dict-style access, as when ``evaluate`` returned a dict (deprecated: use the attribute)."""
        warn(f"GuardEvaluation[{key!r}]", f"the attribute .{key}")
        return self.model_dump(mode="json")[key]


class JailbreakSignal(BaseModel):
    """"Recognised but not converted": flagged early, yet positive emotion where refusals form."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    prompts: list[str]
    """(n,) prompt texts."""
    p_malicious: list[float]
    """(n,) guard probability at the guard layer."""
    recognised: list[bool]
    """(n,) flagged by the guard."""
    emotion_score: list[float]
    """(n,) mean over the band of (positive - negative) lens probability mass at the last token."""
    not_converted: list[bool]
    """(n,) ``emotion_score > 0``: the band leans positive (no refusal forming)."""
    signal: list[bool]
    """(n,) recognised and not converted: a likely jailbreak."""
    band: tuple[int, int]
    """Layers whose lens was read (inclusive)."""
    layer: int
    """Guard layer."""
    labels: list[str | None] | None = None
    families: list[str | None] | None = None

    def rates(self, by: Literal["family", "label"] = "family") -> list[RateRow]:
        """Share of prompts with the signal per family (or label); prompts without one count as ``"-"``."""
        keys = self.families if by == "family" else self.labels
        keys = keys if keys is not None else [None] * len(self.prompts)
        return flag_rates(keys, self.signal)


class LeftOutFit(BaseModel):
    """One family of :meth:`Guard.leave_one_family_out`: the guard fitted without it, and its rates."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    family: str
    layer: int
    threshold: float
    C: float | None
    rates: list[RateRow]
    """Flag rates of the family's scored prompts, per ``label/family``."""


class LeftOutEvaluation(BaseModel):
    """Leave-one-family-out flag rates: every wrapped family scored by a guard that never saw its wrapper."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    pool: str
    """How the guards read their layer."""
    folds: str
    """The folds each refit chose its layer and threshold with."""
    rows: list[RateRow]
    """Flag rate per ``label/family`` (``jailbreak/<family>`` is the TPR, ``normal/<family>`` the FPR)."""
    fits: list[LeftOutFit]
    """Each left-out family's guard."""
    seconds: float

    def pooled(self, label: str) -> RateRow:
        """All families' prompts of one label (``"jailbreak"`` or ``"normal"``) as one rate."""
        return pooled_rate(self.rows, label)


def _default_train() -> PromptSet:
    data = load_prompts().train
    return data.normal + data.malicious


class Guard:
    """An early-exit malicious-prompt detector reading one layer of a model.

    Build with :meth:`fit` or :meth:`load`; then :meth:`score`, :meth:`evaluate`,
    :meth:`jailbreak_signal`, :meth:`save`.

    Examples:
        >>> guard = Guard.fit(model)                         # canonical train split
        >>> guard.layer, guard.threshold
        >>> guard.score(["How do I pick a lock to break into my neighbour's house?"]).flagged
        [True]
    """

    def __init__(self, model: Model, probe_: LayerProbe, *, layer: int, threshold: float, pool: Pool,
                 chat: bool, system_prompt: str | None, report: GuardFitReport) -> None:
        self.model = model
        self.probe = probe_
        self.layer = layer
        self.threshold = threshold
        self.pool: Pool = pool
        self.chat = chat
        self.system_prompt = system_prompt
        self.report = report

    def __repr__(self) -> str:
        return (f"Guard(model={self.model.name!r}, layer={self.layer}/{self.model.n_layers}, pool={self.pool!r}, "
                f"threshold={self.threshold:.4f})")

    # -- fitting

    @classmethod
    def fit(
        cls,
        model: Model,
        prompts: PromptSet | None = None,
        *,
        layer: int | Sequence[int] | Literal["auto"] = "auto",
        target_accuracy: float = 0.95,
        target_fpr: float = 0.05,
        pool: Pool = "mean",
        classifier: str = "logreg",
        C: float | Sequence[float] = (0.003, 0.01, 0.03, 0.1),
        cv: int = 5,
        cv_repeats: int = 3,
        folds: Folds = "stratified",
        random_state: int = 0,
        batch_size: int = 16,
        chat: bool = True,
        system_prompt: str | None = None,
        cache: bool | str | Path = True,
        progress: bool = True,
    ) -> Guard:
        """Pick the layer, fit the probe, calibrate the threshold (cross-fitting).

        The labelled prompts (default: the canonical train split's normal and malicious
        prompts, look-alikes among the normals) are cut into ``cv`` folds stratified by label,
        look-alike flag and wrapper family, ``cv_repeats`` times over. Each fold is scored by
        probes fitted on the other folds, at every searched layer and every ``C``, so every
        prompt gets an out-of-fold P(malicious) per repeat; accuracies are averaged over repeats.
        Wrapped prompts may be among them (``load_prompts(wrapped_train=True).train``): their
        ``jailbreak`` label counts as malicious, so a wrapper carries no label when both labels
        come in it. With ``folds="family"`` each wrapper family is one fold instead: the layer,
        ``C`` and threshold are then chosen on scores of wrappers the probe never saw, and
        ``report.cv_by_family`` gives each family's out-of-family flag rates.

        With ``layer="auto"`` the earliest layer whose out-of-fold accuracy reaches
        ``target_accuracy`` with one binomial standard error to spare is taken, with its best
        ``C``: the first layer that only just reaches the target sits, more often than not, on an
        upward fluctuation. If none does, the earliest layer within one standard error of the
        best accuracy is taken (with a warning).

        The threshold is the cut that flags at most ``target_fpr`` of the normal prompts'
        out-of-fold scores, all repeats pooled; the final probe is then fitted on all prompts.
        Every prompt thus serves both for fitting and, held out, for calibration: with a few
        hundred prompts a separate calibration split would leave the threshold noisy (on
        SmolLM2, a 25% split calibrated to 5% gave 9% on the test split). How the whole
        procedure does on prompts it never saw: ``scripts/guard_heldout.py``.

        Args:
            model: the model the guard reads.
            prompts: a labelled :class:`PromptSet` of ``normal`` and ``malicious`` (or ``jailbreak``) prompts.
            layer: ``"auto"`` (search every layer 1..L), a list of layers to search, or one layer index.
            target_accuracy: cross-validated accuracy the chosen layer must reach.
            target_fpr: false-positive rate of the calibrated threshold.
            pool: how the layer is read: ``"last"``, ``"user_last"``, ``"mean"`` (a state per prompt), or
                ``"max"`` / ``"topk"`` (a per-token probe's scores pooled); :mod:`ihs_sight.guard.features`.
            classifier: ``"logreg"``, ``"svm"`` or ``"mlp"`` (torch engine of :class:`LayerProbe`).
            C: inverse L2 strength(s) of the linear probe to choose from (ignored for ``"mlp"``).
            cv: folds of the search and of the out-of-fold calibration (of the direct prompts, with
                ``folds="family"``).
            cv_repeats: times the folds are redrawn (``RepeatedStratifiedKFold``); more repeats
                make the layer choice and the threshold less dependent on one split.
            folds: ``"stratified"`` or ``"family"`` (leave each wrapper family out in turn).
            random_state: seeds the split, the folds, the probe and the token draw of the token pools.
            batch_size, chat, system_prompt, cache, progress: as in :func:`ihs_sight.extract`
                (the token pools are not cached).
        """
        t0 = time.perf_counter()
        st = settings(model, layer=layer, target_accuracy=target_accuracy, target_fpr=target_fpr, pool=pool,
                      classifier=classifier, C=C, cv=cv, cv_repeats=cv_repeats, folds=folds, random_state=random_state)
        prompts = fit_prompts(_default_train() if prompts is None else prompts, st)
        readings = read(model, prompts, st.search, st.pool, batch_size=batch_size, chat=chat,
                        system_prompt=system_prompt, cache=cache, progress=progress)
        return cls._fit(model, prompts, readings, st, chat=chat, system_prompt=system_prompt, t0=t0)

    @classmethod
    def _fit(cls, model: Model, prompts: PromptSet, readings: Readings, st: Settings, *, chat: bool,
             system_prompt: str | None, t0: float) -> Guard:
        """The layer search, the calibration and the final probe on readings already taken."""
        labels = fit_labels(prompts)
        y = np.array([v == "malicious" for v in labels])
        strata = [f"{p.label}|{p.lookalike}|{p.family}" for p in prompts]
        if st.folds == "family":
            splits = family_folds([p.family for p in prompts], strata, st.cv, st.cv_repeats, st.random_state)
        else:
            splits = repeated_folds(strata, st.cv, st.cv_repeats, st.random_state)
        oof, acc = {}, {}
        for c in st.c_values:
            oof[c] = np.stack([out_of_fold(readings, labels, folds, st.classifier, c, st.random_state)
                               for folds in splits])
            acc[c] = layer_accuracy(oof[c], y, st)  # (n_search,) mean over repeats
        baselines = fold_baselines(prompts.texts, y, splits, st.random_state)
        best_per_layer = np.max(np.stack([acc[c] for c in st.c_values]), 0)
        pick, met = pick_layer(best_per_layer, len(y), st.target_accuracy)
        if not met:
            log.warning("no layer reaches %.3f out-of-fold accuracy with a standard error to spare (best %.3f); "
                        "taking layer %d (%.3f), the earliest within one standard error of the best",
                        st.target_accuracy, best_per_layer.max(), st.search[pick], best_per_layer[pick])
        c_pick = max(st.c_values, key=lambda c: (acc[c][pick], -st.c_values.index(c)))
        chosen = st.search[pick]
        # Calibrated on every repeat's scores pooled: each is one probe's score on a prompt it
        # never saw, as the final probe's will be. (Averaged over repeats, scores are less
        # spread than one probe's, and the cut falls too low: more than target_fpr flagged.)
        scores = oof[c_pick][:, :, pick]  # (repeats, n)
        threshold = threshold_at_fpr(scores[:, ~y].ravel(), st.target_fpr)
        fitted = readings.at(pick).fit(np.arange(len(prompts)), labels, st.classifier, c_pick, st.random_state)
        groups = [f"{p.label}/{p.family or 'direct'}" for p in prompts]
        fit_report = GuardFitReport(
            layer=chosen, n_layers=model.n_layers, pool=st.pool, top_k=TOP_K if st.pool == "topk" else None,
            classifier=st.classifier, target_accuracy=st.target_accuracy, target_fpr=st.target_fpr, target_met=met,
            C=c_pick, cv=st.cv, cv_repeats=st.cv_repeats, folds=st.folds,
            cv_layers=st.search, cv_accuracy=[round(float(a), 6) for a in acc[c_pick]],
            cv_accuracy_by_C={str(c): [round(float(a), 6) for a in acc[c]] for c in st.c_values},
            threshold=threshold, calibration_fpr=float((scores[:, ~y] > threshold).mean()),
            calibration_tpr=float((scores[:, y] > threshold).mean()), n_prompts=len(prompts),
            random_state=st.random_state, cv_baselines=baselines,
            cv_lift=[round(float(a) - baselines.best, 6) for a in acc[c_pick]],
            cv_by_family=flag_rates([g for _ in scores for g in groups], (scores > threshold).ravel().tolist()),
            fit_seconds=round(time.perf_counter() - t0, 3),
        )
        return cls(model, fitted, layer=chosen, threshold=threshold, pool=st.pool, chat=chat,
                   system_prompt=system_prompt, report=fit_report)

    @classmethod
    def leave_one_family_out(
        cls,
        model: Model,
        prompts: PromptSet,
        score: PromptSet | None = None,
        *,
        layer: int | Sequence[int] | Literal["auto"] = "auto",
        target_accuracy: float = 0.95,
        target_fpr: float = 0.05,
        pool: Pool = "mean",
        classifier: str = "logreg",
        C: float | Sequence[float] = (0.003, 0.01, 0.03, 0.1),
        cv: int = 5,
        cv_repeats: int = 3,
        folds: Folds = "stratified",
        random_state: int = 0,
        batch_size: int = 16,
        chat: bool = True,
        system_prompt: str | None = None,
        cache: bool | str | Path = True,
        progress: bool = True,
    ) -> LeftOutEvaluation:
        """Each wrapper family left out in turn: a guard fitted without it scores that family's prompts.

        For every family among ``prompts``' wrapped prompts, :meth:`fit` (same arguments) runs on
        every prompt but that family's, and the guard scores the family's prompts in ``score``
        (default: its prompts in ``prompts``), jailbreaks and wrapped normals. The readings are
        taken once for ``prompts`` and ``score`` together, so each refit costs no forward pass.
        """
        t0 = time.perf_counter()
        st = settings(model, layer=layer, target_accuracy=target_accuracy, target_fpr=target_fpr, pool=pool,
                      classifier=classifier, C=C, cv=cv, cv_repeats=cv_repeats, folds=folds, random_state=random_state)
        prompts = fit_prompts(prompts, st, lofo=True)
        if score is not None and not isinstance(score, PromptSet):
            raise InputError(f"score must be a labelled PromptSet, got {type(score).__name__}.")
        scored = prompts if score is None else score
        families = list(dict.fromkeys(p.family for p in prompts if p.family is not None))
        missing = sorted({f for f in families if not any(q.family == f for q in scored)})
        if missing:
            raise InputError(f"score has no prompts of the families {missing}; pass prompts of every wrapped family.")
        both = prompts + scored if score is not None else prompts
        readings = read(model, both, st.search, st.pool, batch_size=batch_size, chat=chat,
                        system_prompt=system_prompt, cache=cache, progress=progress)
        offset = len(prompts) if score is not None else 0
        rows: list[RateRow] = []
        fits: list[LeftOutFit] = []
        for family in families:
            keep = [i for i, p in enumerate(prompts) if p.family != family]
            test = [offset + i for i, p in enumerate(scored) if p.family == family]
            sub = fit_prompts(PromptSet(items=[prompts[i] for i in keep]), st)
            guard = cls._fit(model, sub, readings.take(keep), st, chat=chat, system_prompt=system_prompt,
                             t0=time.perf_counter())
            p = guard._p(readings.at(st.search.index(guard.layer)).take(test))
            hits = (p > guard.threshold).tolist()
            fam_rows = flag_rates([f"{both[i].label!s}/{family}" for i in test], hits)
            rows += fam_rows
            fits.append(LeftOutFit(family=family, layer=guard.layer, threshold=guard.threshold, C=guard.report.C,
                                   rates=fam_rows))
        return LeftOutEvaluation(pool=st.pool, folds=st.folds, rows=rows, fits=fits,
                                 seconds=round(time.perf_counter() - t0, 3))

    def _p(self, readings: Readings) -> np.ndarray[Any, Any]:
        """P(malicious) of readings taken at the guard layer alone."""
        return readings.p_malicious(self.probe, np.arange(len(readings)))[:, 0]

    # -- scoring

    def features(self, prompts: Any, *, batch_size: int = 16, cache: bool | str | Path = False,
                 progress: bool = False, pack: bool | int = False, compile: bool = False) -> torch.Tensor:
        """(n, D) features at the guard layer (blocks ``1..layer`` run, then the pass stops).

        Only for the state pools; a token-pool guard reads every token (:func:`token_states`).
        """
        if self.pool in TOKEN_POOLS:
            raise InputError(f"This guard pools a per-token probe (pool={self.pool!r}): it has no one feature vector "
                             "per prompt. Use score(), or token_states() for the token states.")
        return layer_features(self.model, prompts, [self.layer], pool=self.pool, batch_size=batch_size,
                              chat=self.chat, system_prompt=self.system_prompt, cache=cache,
                              progress=progress, pack=pack, compile=compile)[:, 0]

    def score(self, prompts: Any, *, batch_size: int = 16, cache: bool | str | Path = False,
              progress: bool = False, pack: bool | int = False, compile: bool = False) -> GuardScores:
        """P(malicious) and the decision for each prompt, reading only blocks ``1..layer``.

        Args:
            prompts: strings or a :class:`PromptSet` (labels and families travel along).
            batch_size: prompts per forward pass (with ``pack``: packed rows per forward pass).
            cache: ``False`` (default) runs every prompt; ``True`` or a path caches the features
                (state pools only).
            progress: show a progress bar.
            pack, compile: as in :func:`ihs_sight.extract` (state pools only).
        """
        t0 = time.perf_counter()
        if self.pool in TOKEN_POOLS:
            if pack or compile:
                raise InputError(f"pack and compile apply to the state pools; this guard reads every token "
                                 f"(pool={self.pool!r}). Drop them.")
            tokens = token_states(self.model, prompts, [self.layer], batch_size=batch_size, chat=self.chat,
                                  system_prompt=self.system_prompt, progress=progress)
            p = self._p(Readings(self.pool, tokens=tokens))
        else:
            x = self.features(prompts, batch_size=batch_size, cache=cache, progress=progress, pack=pack,
                              compile=compile)
            p = self._p(Readings(self.pool, x=x[:, None]))
        texts = list(prompts.texts) if isinstance(prompts, PromptSet) else list(prompts)
        return GuardScores(
            prompts=texts, p_malicious=[float(v) for v in p], flagged=[bool(v > self.threshold) for v in p],
            layer=self.layer, threshold=self.threshold,
            labels=list(prompts.labels) if isinstance(prompts, PromptSet) else None,
            families=list(prompts.families) if isinstance(prompts, PromptSet) else None,
            seconds=round(time.perf_counter() - t0, 4),
        )

    def evaluate(self, prompts: PromptSet, *, batch_size: int = 16, cache: bool | str | Path = False,
                 progress: bool = False) -> GuardEvaluation:
        """Flag rates of a labelled set: TPR on malicious, FPR on normal, and per family / look-alikes.

        Direct prompts (no family) give ``tpr`` and ``fpr``; jailbreak and wrapped-normal prompts
        are reported per ``label/family`` in ``by_family``.
        """
        if not isinstance(prompts, PromptSet):
            raise InputError("evaluate() needs a labelled PromptSet.")
        s = self.score(prompts, batch_size=batch_size, cache=cache, progress=progress)
        flags = np.array(s.flagged)
        lab = np.array([str(x) for x in prompts.labels])
        fam = [p.family for p in prompts.items]
        look = np.array([p.lookalike for p in prompts.items])
        plain = np.array([f is None for f in fam])
        mal = (lab == "malicious") & plain
        nor = (lab == "normal") & plain

        def rate(mask: np.ndarray[Any, Any]) -> float | None:
            return round(float(flags[mask].mean()), 4) if mask.any() else None

        fam_rows = flag_rates([f"{lab[i]}/{f}" for i, f in enumerate(fam) if f is not None],
                          [bool(flags[i]) for i, f in enumerate(fam) if f is not None])
        return GuardEvaluation(layer=self.layer, threshold=self.threshold, tpr=rate(mal), fpr=rate(nor),
                               n_malicious=int(mal.sum()), n_normal=int(nor.sum()), lookalike_fpr=rate(nor & look),
                               n_lookalike=int((nor & look).sum()), by_family=fam_rows, seconds=s.seconds)

    def jailbreak_signal(self, prompts: Any, *, band: tuple[int, int] | None = None, lexicon: str = "v1",
                         batch_size: int = 16, progress: bool = False) -> JailbreakSignal:
        """Recognised early but not converted: guard-flagged prompts whose conversion band leans positive.

        Reads the guard layer (one early-exit pass) and the logit lens over ``band`` (default
        :func:`conversion_band`; one full pass). The emotion score is the mean over the band of
        the positive minus the negative lexicon's probability mass at the last token.
        """
        lo, hi = check_band(band, self.model.n_layers) if band is not None else conversion_band(self.model.n_layers)
        s = self.score(prompts, batch_size=batch_size, progress=progress)
        lens = logit_lens(self.model, prompts, top_k=1, layers=band_layers((lo, hi)), lexicon=lexicon,
                          batch_size=batch_size, chat=self.chat, system_prompt=self.system_prompt,
                          progress=progress)
        cats = lens.categories
        if "positive" not in cats or "negative" not in cats:
            raise InputError(f"lexicon {lexicon!r} needs 'positive' and 'negative' categories; it has {cats}.")
        mass = lens.emotion_mass
        emo = (mass[..., cats.index("positive")] - mass[..., cats.index("negative")]).mean(1)
        not_conv = [bool(v > 0) for v in emo]
        return JailbreakSignal(
            prompts=s.prompts, p_malicious=s.p_malicious, recognised=s.flagged,
            emotion_score=[float(v) for v in emo], not_converted=not_conv,
            signal=[r and n for r, n in zip(s.flagged, not_conv)], band=(lo, hi), layer=self.layer,
            labels=s.labels, families=s.families,
        )

    # -- persistence

    def save(self, path: str | Path) -> Path:
        """Write the bundle into directory ``path``: ``guard.json`` and the probe (safetensors + JSON). No pickle."""
        root = Path(path)
        if root.exists() and (not root.is_dir() or (any(root.iterdir()) and not (root / "guard.json").is_file())):
            raise InputError(f"{root} exists and is not a guard bundle; save the guard to a new or empty directory "
                             "(an existing bundle there is replaced).")
        payload = {
            "format": GUARD_FORMAT, "version": GUARD_FORMAT_VERSION, "layer": self.layer,
            "threshold": self.threshold, "pool": self.pool, "chat": self.chat, "system_prompt": self.system_prompt,
            "model_name": self.model.name, "weights_hash": self.model.weights_hash,
            "template": template_fingerprint(self.model.tokenizer, chat=self.chat, system_prompt=self.system_prompt),
            "prefix_tokens": template_prefix(self.model, chat=self.chat, system_prompt=self.system_prompt),
            "features": _features_record(self.model, self.pool, chat=self.chat, system_prompt=self.system_prompt),
            "report": self.report.model_dump(),
        }

        def build(tmp: Path) -> None:
            self.probe.save(tmp / "probe")
            payload["probe_sha256"] = _sha256(tmp / "probe.safetensors")
            io.write_json(tmp / "guard.json", payload)

        # Built under a temporary name and renamed into place: a crash never pairs an old layer and
        # threshold with a new probe, and an existing bundle is replaced only once the new one is whole.
        return io.replace_dir(root, build)

    @classmethod
    def load(cls, path: str | Path, model: Model, *, pool: Pool | None = None) -> Guard:
        """Read a bundle written by :meth:`save`; refuses unknown formats, other models' bundles, and a
        feature record that does not match the model (or ``pool``, when given: the reading the caller expects)."""
        root = Path(path)
        meta_path = root / "guard.json"
        if not meta_path.is_file():
            raise InputError(f"{root} holds no guard.json; Guard.save() writes a directory with guard.json.")
        payload = io.read_json(meta_path)
        if not isinstance(payload, dict) or payload.get("format") != GUARD_FORMAT:
            raise InputError(f"{meta_path} is not an ihs-sight guard bundle.")
        version = payload.get("version")
        if pool is not None:
            pool = checks.one_of("pool", pool, POOLS)
        if type(version) is not int or version not in (1, 2, GUARD_FORMAT_VERSION):
            raise InputError(f"{meta_path} has guard format version {version!r}; this ihs-sight reads versions 1 "
                             f"to {GUARD_FORMAT_VERSION}.")
        if payload.get("weights_hash") != model.weights_hash:
            raise ModelMismatchError(
                f"The guard in {root} was fitted on {payload.get('model_name')!r} (weights {payload.get('weights_hash')}); "
                f"{model.name!r} has weights {model.weights_hash}. Fit a guard on this model.")
        try:
            chat, system_prompt = bool(payload["chat"]), payload["system_prompt"]
            layer, threshold, saved_pool = int(payload["layer"]), float(payload["threshold"]), payload["pool"]
            record = payload["features"] if version == GUARD_FORMAT_VERSION else {"pool": saved_pool}
            report = GuardFitReport.model_validate(payload["report"])
            probe_sha = str(payload["probe_sha256"]) if version != 1 else None
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{meta_path} is incomplete or malformed: {e}") from e
        if not 0.0 <= threshold <= 1.0:  # NaN fails too: a NaN threshold would never flag anything
            raise InputError(f"{meta_path} is malformed: threshold {threshold!r} is not a probability in [0, 1].")
        if probe_sha is None:
            log.warning("%s is a version-1 guard bundle: its probe file is not checked; save it again", meta_path)
        elif not (root / "probe.safetensors").is_file() or _sha256(root / "probe.safetensors") != probe_sha:
            raise InputError(f"The probe in {root} is not the one guard.json was written with (sha256 differs); "
                             "the bundle is damaged or was edited. Fit and save the guard again.")
        legacy = ("last", "mean")  # the pools versions 1 and 2 knew
        if saved_pool not in (POOLS if version == GUARD_FORMAT_VERSION else legacy) or not 1 <= layer <= model.n_layers:
            raise InputError(f"{meta_path} is malformed (pool {saved_pool!r}, layer {layer}).")
        if not isinstance(record, dict) or record.get("pool") != saved_pool or report.pool != saved_pool:
            raise InputError(f"{meta_path} is malformed: its feature record {record!r} does not match its pool "
                             f"{saved_pool!r} (report: {report.pool!r}).")
        if pool is not None and pool != saved_pool:
            raise InputError(f"The guard in {root} reads its layer with pool={saved_pool!r}, not {pool!r}; load it "
                             f"without pool= or fit a guard with pool={pool!r}.")
        if version == GUARD_FORMAT_VERSION and record != _features_record(model, saved_pool, chat=chat,
                                                                          system_prompt=system_prompt):
            raise ModelMismatchError(
                f"The guard in {root} was fitted with features {record!r}; with {model.name!r} this ihs-sight reads "
                f"{_features_record(model, saved_pool, chat=chat, system_prompt=system_prompt)!r}. Fit the guard again.")
        template = template_fingerprint(model.tokenizer, chat=chat, system_prompt=system_prompt)
        if payload.get("template") != template or payload.get("prefix_tokens") != (
            template_prefix(model, chat=chat, system_prompt=system_prompt)
        ):
            raise ModelMismatchError(f"The guard in {root} was fitted with another chat template or tokenizer "
                                     f"than {model.name!r} has.")
        probe_ = LayerProbe.load(root / "probe")
        if probe_.n_features_in_ != model.d_model:
            raise InputError(f"The probe in {root} expects {probe_.n_features_in_} features; the model has "
                             f"{model.d_model}.")
        return cls(model, probe_, layer=layer, threshold=threshold, pool=saved_pool, chat=chat,
                   system_prompt=system_prompt, report=report)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _features_record(model: Model, pool: Pool, *, chat: bool, system_prompt: str | None) -> dict[str, Any]:
    """What a guard's scoring depends on besides the layer and probe: the pool, the tokens it averages or picks
    (not how the probe was fitted, e.g. ``FIT_TOKENS``: that changes no score)."""
    record: dict[str, Any] = {"pool": pool}
    if pool == "topk":
        record["top_k"] = TOP_K
    if pool == "user_last":
        record["suffix_tokens"] = template_suffix(model, chat=chat, system_prompt=system_prompt)
    return record
