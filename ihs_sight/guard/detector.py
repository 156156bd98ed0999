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
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from .. import checks, io
from ..deprecations import warn
from ..errors import InputError
from ..layers import band_layers, check_band, check_layer, conversion_band
from ..lens import logit_lens
from ..models import Model
from ..probe import LayerProbe
from ..probe.baselines import BaselineScores
from ..prompts import PromptSet, load_prompts, template_fingerprint
from .features import POOLS, Pool, layer_features, template_prefix
from .selection import (
    check_c_values,
    fold_baselines,
    out_of_fold,
    pick_layer,
    repeated_folds,
    threshold_at_fpr,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

GUARD_FORMAT = "ihs-sight.guard"
GUARD_FORMAT_VERSION = 2
"""2: ``probe_sha256`` recorded and checked; bundles written whole under a temporary name."""
CLASSIFIERS: tuple[str, ...] = ("logreg", "svm", "mlp")
"""The probes a guard can read its layer with (:class:`~ihs_sight.LayerProbe`'s torch engine)."""

def check_guard_layer(layer: Any, n_layers: int) -> int:
    """A guard's exit layer: ``1..L`` (layer 0, the embeddings, runs no block to exit after)."""
    return check_layer(layer, n_layers, low=1)


class ModelMismatchError(InputError):
    """A saved guard was fitted on other weights or another chat template than the model given."""


# ---------------------------------------------------------------------------- results


class GuardFitReport(BaseModel):
    """How a guard was fitted: the layer search, the calibration, what it met."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    layer: int
    """The layer the guard reads (0 = embeddings, l = block l's output)."""
    n_layers: int
    """L, the model's number of blocks; the guard runs ``layer / L`` of them."""
    pool: str
    """``"last"`` token or ``"mean"`` over the prompt's tokens."""
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
    cv_layers: list[int]
    """Layers searched."""
    cv_accuracy: list[float]
    """Out-of-fold accuracy of each searched layer, at the chosen ``C`` (mean over repeats)."""
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
    fit_seconds: float
    """Wall time of the whole fit, forward passes included."""

    def plot(self, title: str | None = None) -> Figure:
        """Out-of-fold accuracy of each searched layer (per ``C``), the target and the chosen layer."""
        from ..plots.guard import layer_search_plot

        return layer_search_plot(self, title=title)


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


class RateRow(BaseModel):
    """A flag rate over a group of prompts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    group: str
    n: int
    flagged: int
    rate: float


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


def flag_rates(keys: Sequence[str | None], hits: Sequence[bool]) -> list[RateRow]:
    groups: dict[str, list[bool]] = {}
    for k, h in zip(keys, hits):
        groups.setdefault(k or "-", []).append(bool(h))
    return [RateRow(group=g, n=len(v), flagged=sum(v), rate=round(sum(v) / len(v), 4)) for g, v in sorted(groups.items())]


# ---------------------------------------------------------------------------- the guard


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
        layer: int | Literal["auto"] = "auto",
        target_accuracy: float = 0.95,
        target_fpr: float = 0.05,
        pool: Pool = "mean",
        classifier: str = "logreg",
        C: float | Sequence[float] = (0.003, 0.01, 0.03, 0.1),
        cv: int = 5,
        cv_repeats: int = 3,
        random_state: int = 0,
        batch_size: int = 16,
        chat: bool = True,
        system_prompt: str | None = None,
        cache: bool | str | Path = True,
        progress: bool = True,
    ) -> Guard:
        """Pick the layer, fit the probe, calibrate the threshold (cross-fitting).

        The labelled prompts (default: the canonical train split's normal and malicious
        prompts, look-alikes among the normals) are cut into ``cv`` folds stratified by label
        and look-alike flag, ``cv_repeats`` times over. Each fold is scored by probes fitted on
        the other folds, at every searched layer and every ``C``, so every prompt gets an
        out-of-fold P(malicious) per repeat; accuracies are averaged over repeats.

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
            prompts: a labelled :class:`PromptSet` of ``normal`` and ``malicious`` prompts.
            layer: ``"auto"`` or a layer index (1..L).
            target_accuracy: cross-validated accuracy the chosen layer must reach.
            target_fpr: false-positive rate of the calibrated threshold.
            pool: ``"mean"`` over the prompt's tokens or the ``"last"`` token (module doc).
            classifier: ``"logreg"``, ``"svm"`` or ``"mlp"`` (torch engine of :class:`LayerProbe`).
            C: inverse L2 strength(s) of the linear probe to choose from (ignored for ``"mlp"``).
            cv: folds of the search and of the out-of-fold calibration.
            cv_repeats: times the folds are redrawn (``RepeatedStratifiedKFold``); more repeats
                make the layer choice and the threshold less dependent on one split.
            random_state: seeds the split, the folds and the probe.
            batch_size, chat, system_prompt, cache, progress: as in :func:`ihs_sight.extract`.
        """
        t0 = time.perf_counter()
        target_accuracy = checks.fraction("target_accuracy", target_accuracy)
        target_fpr = checks.fraction("target_fpr", target_fpr)
        pool = checks.one_of("pool", pool, POOLS)
        cv = int(checks.number("cv", cv, low=2, integer=True))
        cv_repeats = int(checks.number("cv_repeats", cv_repeats, low=1, integer=True))
        if layer != "auto":
            layer = check_guard_layer(layer, model.n_layers)
        classifier = checks.one_of("classifier", classifier, CLASSIFIERS)
        prompts = _default_train() if prompts is None else prompts
        if not isinstance(prompts, PromptSet):
            raise InputError("prompts must be a labelled PromptSet (e.g. load_prompts().train), got "
                             f"{type(prompts).__name__}.")
        bad = sorted({str(x) for x in prompts.labels if x not in ("normal", "malicious")})
        if bad:
            raise InputError(f"Guard.fit needs prompts labelled 'normal' or 'malicious'; found {bad}. Select them "
                             "first, e.g. data.normal + data.malicious.")
        counts = prompts.counts()
        if min(counts.get("normal", 0), counts.get("malicious", 0)) < 2 * cv:
            raise InputError(f"Guard.fit needs at least {2 * cv} prompts of each label; got {counts}.")
        c_values: list[float | None] = [None] if classifier == "mlp" else check_c_values(C)
        search = list(range(1, model.n_layers + 1)) if layer == "auto" else [int(layer)]
        x = layer_features(model, prompts, search, pool=pool, batch_size=batch_size, chat=chat,
                           system_prompt=system_prompt, cache=cache, progress=progress)
        labels = [str(v) for v in prompts.labels]  # all normal or malicious (checked above)
        y = np.array([v == "malicious" for v in labels])
        splits = repeated_folds([f"{p.label}|{p.lookalike}" for p in prompts], cv, cv_repeats, random_state)
        oof, acc = {}, {}
        for c in c_values:
            oof[c] = np.stack([out_of_fold(x, labels, folds, classifier, c, random_state) for folds in splits])
            acc[c] = ((oof[c] > 0.5) == y[None, :, None]).mean((0, 1))  # (n_search,) mean over repeats
        baselines = fold_baselines(prompts.texts, y, splits, random_state)
        best_per_layer = np.max(np.stack([acc[c] for c in c_values]), 0)
        pick, met = pick_layer(best_per_layer, len(y), target_accuracy)
        if not met:
            log.warning("no layer reaches %.3f out-of-fold accuracy with a standard error to spare (best %.3f); "
                        "taking layer %d (%.3f), the earliest within one standard error of the best",
                        target_accuracy, best_per_layer.max(), search[pick], best_per_layer[pick])
        c_pick = max(c_values, key=lambda c: (acc[c][pick], -c_values.index(c)))
        chosen = search[pick]
        # Calibrated on every repeat's scores pooled: each is one probe's score on a prompt it
        # never saw, as the final probe's will be. (Averaged over repeats, scores are less
        # spread than one probe's, and the cut falls too low: more than target_fpr flagged.)
        scores = oof[c_pick][:, :, pick]  # (repeats, n)
        threshold = threshold_at_fpr(scores[:, ~y].ravel(), target_fpr)
        kwargs: dict[str, Any] = {} if c_pick is None else {"C": c_pick}
        fitted = LayerProbe(classifier, random_state=random_state, **kwargs).fit(x[:, pick:pick + 1], labels)
        fit_report = GuardFitReport(
            layer=chosen, n_layers=model.n_layers, pool=pool, classifier=classifier,
            target_accuracy=target_accuracy, target_fpr=target_fpr, target_met=met, C=c_pick, cv=cv, cv_repeats=cv_repeats,
            cv_layers=search, cv_accuracy=[round(float(a), 6) for a in acc[c_pick]],
            cv_accuracy_by_C={str(c): [round(float(a), 6) for a in acc[c]] for c in c_values},
            threshold=threshold, calibration_fpr=float((scores[:, ~y] > threshold).mean()),
            calibration_tpr=float((scores[:, y] > threshold).mean()), n_prompts=len(prompts),
            random_state=random_state, cv_baselines=baselines,
            cv_lift=[round(float(a) - baselines.best, 6) for a in acc[c_pick]],
            fit_seconds=round(time.perf_counter() - t0, 3),
        )
        return cls(model, fitted, layer=chosen, threshold=threshold, pool=pool, chat=chat,
                   system_prompt=system_prompt, report=fit_report)

    # -- scoring

    def features(self, prompts: Any, *, batch_size: int = 16, cache: bool | str | Path = False,
                 progress: bool = False, pack: bool | int = False, compile: bool = False) -> torch.Tensor:
        """(n, D) features at the guard layer (blocks ``1..layer`` run, then the pass stops)."""
        return layer_features(self.model, prompts, [self.layer], pool=self.pool, batch_size=batch_size,
                              chat=self.chat, system_prompt=self.system_prompt, cache=cache,
                              progress=progress, pack=pack, compile=compile)[:, 0]

    def score(self, prompts: Any, *, batch_size: int = 16, cache: bool | str | Path = False,
              progress: bool = False, pack: bool | int = False, compile: bool = False) -> GuardScores:
        """P(malicious) and the decision for each prompt, reading only blocks ``1..layer``.

        Args:
            prompts: strings or a :class:`PromptSet` (labels and families travel along).
            batch_size: prompts per forward pass (with ``pack``: packed rows per forward pass).
            cache: ``False`` (default) runs every prompt; ``True`` or a path caches the features.
            progress: show a progress bar.
            pack, compile: as in :func:`ihs_sight.extract`.
        """
        t0 = time.perf_counter()
        x = self.features(prompts, batch_size=batch_size, cache=cache, progress=progress, pack=pack,
                          compile=compile)
        p = _p_malicious(self.probe, x[:, None])
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
    def load(cls, path: str | Path, model: Model) -> Guard:
        """Read a bundle written by :meth:`save`; refuses unknown formats and other models' bundles."""
        root = Path(path)
        meta_path = root / "guard.json"
        if not meta_path.is_file():
            raise InputError(f"{root} holds no guard.json; Guard.save() writes a directory with guard.json.")
        payload = io.read_json(meta_path)
        if not isinstance(payload, dict) or payload.get("format") != GUARD_FORMAT:
            raise InputError(f"{meta_path} is not an ihs-sight guard bundle.")
        version = payload.get("version")
        if version not in (1, GUARD_FORMAT_VERSION):
            raise InputError(f"{meta_path} has guard format version {version!r}; this ihs-sight reads versions 1 "
                             f"and {GUARD_FORMAT_VERSION}.")
        if payload.get("weights_hash") != model.weights_hash:
            raise ModelMismatchError(
                f"The guard in {root} was fitted on {payload.get('model_name')!r} (weights {payload.get('weights_hash')}); "
                f"{model.name!r} has weights {model.weights_hash}. Fit a guard on this model.")
        try:
            chat, system_prompt = bool(payload["chat"]), payload["system_prompt"]
            layer, threshold, pool = int(payload["layer"]), float(payload["threshold"]), payload["pool"]
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
        if pool not in POOLS or not 1 <= layer <= model.n_layers:
            raise InputError(f"{meta_path} is malformed (pool {pool!r}, layer {layer}).")
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
        return cls(model, probe_, layer=layer, threshold=threshold, pool=pool, chat=chat,
                   system_prompt=system_prompt, report=report)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _p_malicious(fitted: LayerProbe, x: torch.Tensor) -> np.ndarray[Any, Any]:
    """P(malicious) of features (n, 1, D) from a one-layer probe."""
    proba = fitted.predict_proba(x)
    return np.asarray(proba[:, 0, list(fitted.classes_).index("malicious")], dtype=np.float64)
