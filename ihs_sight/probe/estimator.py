"""LayerProbe: one weak classifier per layer, as a scikit-learn estimator, saved as safetensors + JSON.

``__init__`` only stores; ``fit`` checks its input once (:mod:`.inputs`) and hands trusted
arrays to the engines (:mod:`.solvers`). :func:`fit_encoded` and :func:`predict_encoded` are
that trusted path, for :mod:`.evaluation`.
"""

from __future__ import annotations

import importlib.metadata
import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from sklearn.base import BaseEstimator, clone
from sklearn.exceptions import ConvergenceWarning

from .. import checks
from ..errors import InputError
from ..extract import HiddenStates
from ..io import load_pair, pair_stem, save_pair
from .inputs import FloatArray, IntArray, as_features, as_labels, positive_class, training_set
from .solvers import (
    CLASSIFIERS,
    MLP_BATCH,
    MLP_LR,
    MLP_PATIENCE,
    MLP_TOL,
    NEWTON_MAX_ITER,
    export_sklearn,
    fit_linear,
    fit_mlp,
    mlp_forward,
    mlp_init,
    name_of,
    sklearn_scores,
    sklearn_template,
    standardise,
)

log = logging.getLogger(__name__)

Engine = Literal["torch", "sklearn"]
Preset = Literal["seed"]
ENGINES: tuple[Engine, ...] = ("torch", "sklearn")
PRESETS: tuple[Preset | None, ...] = (None, "seed")
PROBE_FORMAT = "ihs-sight.layer-probe"
PROBE_FORMAT_VERSION = 1
"""Tag and version written into every saved probe; :meth:`LayerProbe.load` accepts only these."""

_LAYER_CHUNK_BYTES = 1 << 30
"""Standardised features of at most this many bytes are trained in one batched model."""


def check_classifier(classifier: Any, preset: Preset | None) -> None:
    """A built-in name, or an unfitted sklearn classifier (not with ``preset="seed"``), else ``InputError``."""
    if isinstance(classifier, str):
        if classifier not in CLASSIFIERS:
            raise InputError(f"Unknown classifier {classifier!r}; choose from {list(CLASSIFIERS)} "
                             "or pass an unfitted sklearn classifier.")
    elif not (hasattr(classifier, "fit") and hasattr(classifier, "predict")):
        raise InputError(f"classifier must be a name in {list(CLASSIFIERS)} or a sklearn classifier, "
                         f"got {type(classifier).__name__}.")
    elif preset == "seed":
        raise InputError("preset='seed' takes a classifier name ('svm', 'mlp', 'logreg'), not an estimator.")


def check_positive(positive: Any) -> str:
    """The positive class's name: a string, else ``InputError``."""
    if not isinstance(positive, str):
        raise InputError(f"positive must be a class name (string), got {positive!r}.")
    return positive


def check_params(probe: LayerProbe) -> None:
    """Every parameter of ``probe`` (what ``fit`` and ``load`` check before anything else)."""
    preset = checks.one_of("preset", probe.preset, PRESETS)
    checks.one_of("engine", probe.engine, ENGINES)
    check_classifier(probe.classifier, preset)
    checks.number("C", probe.C, low=0, low_open=True)
    checks.positive_int("hidden", probe.hidden)
    checks.number("alpha", probe.alpha, low=0)
    if probe.max_iter is not None:
        checks.positive_int("max_iter", probe.max_iter)
    checks.number("random_state", probe.random_state, low=0, integer=True)
    check_positive(probe.positive)


def engine_of(probe: LayerProbe) -> Engine:
    """The engine that fits ``probe``: ``sklearn`` for the seed preset and for sklearn estimators."""
    if probe.preset == "seed" or not isinstance(probe.classifier, str):
        return "sklearn"
    engine: Engine = probe.engine
    return engine


def check_fitted(probe: LayerProbe) -> None:
    """``InputError`` unless ``probe`` has been fitted (or loaded)."""
    if not hasattr(probe, "classes_"):
        raise InputError("This LayerProbe is not fitted yet; call fit(states, labels) first.")


class LayerProbe(BaseEstimator):  # type: ignore[misc]
    """One weak classifier per layer, fitted on last-token states ``(n_prompts, L + 1, d_model)``.

    Args:
        classifier: ``"svm"`` (linear SVM), ``"mlp"`` (one hidden layer of ``hidden`` relu
            units) or ``"logreg"`` (logistic regression); or an unfitted sklearn classifier,
            cloned per layer (``engine`` is then ``"sklearn"``).
        layers: layer indices to probe (``None``: all ``0..L``).
        engine: ``"torch"`` (fast, standardised features): exact Newton fits per layer for the
            linear probes, all layers as one batched model for the MLP; ``"sklearn"`` fits a
            cloned sklearn estimator per layer (``svm``:
            ``SVC(kernel="linear")`` on raw features, ``mlp``: ``StandardScaler`` +
            ``MLPClassifier`` as in the seed, ``logreg``: ``StandardScaler`` + ``LogisticRegression``).
        preset: ``"seed"`` uses the seed code's estimators exactly (sklearn engine, MLP
            ``random_state=42``); labels are coded 0, 1, 2 in the order of ``classes_``.
        positive: the class counted as positive in binary metrics (kept if present).
        C: inverse L2 strength of the torch ``svm`` (squared hinge, as ``LinearSVC``, one-vs-rest
            for more than two classes) and ``logreg`` (as ``LogisticRegression``: binary or
            multinomial), both on standardised features, the intercept not penalised: the fit
            minimises ``C * sum(loss) + ||w||^2 / 2``.
        hidden, alpha: hidden units and L2 strength of the torch ``mlp`` (relu; Adam, learning
            rate 0.01, batches of 200; each layer stops when its training loss stalls).
        max_iter: torch engine only. Linear: most Newton steps per layer (default 100, a cap:
            each layer stops at the optimum, after 2-20 steps on the bundled data; a layer that
            reaches the cap is logged as a warning). MLP: most epochs (default 15): early-stopped,
            L2-regularised probes. Held-out accuracy is flat long before the training loss
            settles (on the bundled data sklearn's MLP runs 50-130 epochs, and its mean accuracy
            over layers is no higher).
        random_state: seeds the torch MLP's initialisation and batches, and sklearn estimators.
        device: torch device for the torch engine (default: where the features are).

    Attributes (after ``fit``): ``classes_`` (``normal`` first, then ``positive``, then the rest
    sorted), ``positive_``, ``layers_``, ``n_features_in_``, ``n_layers_in_`` (``L + 1``),
    ``n_samples_fit_``, ``fit_seconds_``; torch engine: ``mean_``/``scale_`` (n_layers, D),
    ``coef_`` (n_layers, D, K') and ``intercept_`` or ``coefs_``/``intercepts_`` for the MLP, with
    K' = 1 for two classes, and ``n_iter_`` (Newton steps or epochs per layer); sklearn engine: ``estimators_``
    (one per layer). Fitting is deterministic given ``random_state``.

    Examples:
        >>> p = LayerProbe("logreg").fit(states)          # labels from the HiddenStates
        >>> p.predict_proba(other_states).shape            # (n_prompts, n_layers, n_classes)
        >>> p.score(other_states)                          # mean accuracy over layers
    """

    def __init__(
        self,
        classifier: Any = "logreg",
        *,
        layers: Sequence[int] | None = None,
        engine: Engine = "torch",
        preset: Preset | None = None,
        positive: str = "malicious",
        C: float = 1.0,
        hidden: int = 64,
        alpha: float = 0.01,
        max_iter: int | None = None,
        random_state: int = 0,
        device: str | None = None,
    ) -> None:
        self.classifier = classifier
        self.layers = layers
        self.engine = engine
        self.preset = preset
        self.positive = positive
        self.C = C
        self.hidden = hidden
        self.alpha = alpha
        self.max_iter = max_iter
        self.random_state = random_state
        self.device = device

    # -- fitting

    def _template(self) -> Any:
        if not isinstance(self.classifier, str):
            return self.classifier
        return sklearn_template(self.classifier, seed=self.preset == "seed", random_state=self.random_state)

    def fit(self, X: Any, y: Any = None) -> LayerProbe:
        """Fit one classifier per layer.

        Args:
            X: a :class:`HiddenStates` or a tensor / array of shape (n_prompts, L + 1, d_model).
            y: one label per prompt (``None``: the HiddenStates' labels).

        Returns:
            ``self``.
        """
        check_params(self)
        train = training_set(X, y, positive=self.positive, layers=self.layers, what="X")
        return self._fit(train.x, train.codes, train.classes, train.layers)

    def _fit(self, x: torch.Tensor, codes: IntArray, classes: list[str], layers: list[int],
             bar: Any = None) -> LayerProbe:
        """Fit on trusted inputs: (N, L+1, D) features, class codes, class names, layer indices."""
        start = time.perf_counter()
        self.classes_ = np.array(classes)
        self.positive_ = positive_class(classes, self.positive)
        self.layers_ = list(layers)
        self.n_layers_in_ = int(x.shape[1])
        self.n_features_in_ = int(x.shape[2])
        self.n_samples_fit_ = int(x.shape[0])
        if engine_of(self) == "torch":
            self._fit_torch(x, codes, len(classes))
            if bar is not None:
                bar.update(1)
        else:
            self._fit_sklearn(x, codes, bar)
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def _fit_torch(self, x: torch.Tensor, codes: IntArray, n_classes: int) -> None:
        device = torch.device(self.device) if self.device else x.device
        feats = x[:, self.layers_].float()
        mean, scale = standardise(feats)
        y = torch.from_numpy(codes).to(device)
        n, n_layers, d = feats.shape
        k_out = 1 if n_classes == 2 else n_classes
        gen = torch.Generator().manual_seed(int(self.random_state))
        is_mlp = self.classifier == "mlp"
        init = mlp_init(n_layers, d, int(self.hidden), k_out, gen) if is_mlp else []
        chunk = max(1, int(_LAYER_CHUNK_BYTES // (4 * n * d)))
        parts: list[list[torch.Tensor]] = []
        n_iter: list[torch.Tensor] = []
        unconverged = 0
        for lo in range(0, n_layers, chunk):
            sl = slice(lo, lo + chunk)
            z = ((feats[:, sl] - mean[sl]) / scale[sl]).transpose(0, 1).contiguous().to(device)
            if is_mlp:
                weights, epochs = fit_mlp(z, y, [p[sl] for p in init], alpha=float(self.alpha), lr=MLP_LR,
                                          max_iter=int(self.max_iter or 15), batch_size=MLP_BATCH, gen=gen,
                                          tol=MLP_TOL, patience=MLP_PATIENCE)
                parts.append(weights)
                n_iter.append(epochs)
            else:
                loss = "squared_hinge" if self.classifier == "svm" else "log"
                coef, intercept, steps, missed = fit_linear(z, y, n_classes, loss=loss, c=float(self.C),
                                                            max_iter=int(self.max_iter or NEWTON_MAX_ITER))
                parts.append([coef, intercept])
                n_iter.append(torch.tensor(steps))
                unconverged += missed
        if unconverged:
            log.warning("%s: %d of %d layers did not converge in max_iter=%d Newton steps", self.classifier,
                        unconverged, n_layers, int(self.max_iter or NEWTON_MAX_ITER))
        merged = [torch.cat([p[i] for p in parts]).cpu() for i in range(len(parts[0]))]
        self.mean_, self.scale_ = mean.cpu(), scale.cpu()
        self.n_iter_ = [int(v) for v in torch.cat(n_iter)]
        if is_mlp:
            self.kind_, self.link_ = "mlp", ("logistic" if k_out == 1 else "softmax")
            self.coefs_ = (merged[0], merged[2])
            self.intercepts_ = (merged[1], merged[3])
        else:
            self.kind_ = "linear"
            self.link_ = "margin" if self.classifier == "svm" else ("logistic" if k_out == 1 else "softmax")
            self.coef_, self.intercept_ = merged

    def _fit_sklearn(self, x: torch.Tensor, codes: IntArray, bar: Any) -> None:
        template = self._template()
        self.kind_ = self.link_ = "sklearn"
        self.estimators_: list[Any] = []
        n_warn = 0
        for layer in self.layers_:
            feats = np.ascontiguousarray(x[:, layer].cpu().numpy())
            est = clone(template)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                est.fit(feats, codes)
            n_warn += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
            self.estimators_.append(est)
            if bar is not None:
                bar.update(1)
        if n_warn:
            log.info("%s: sklearn reported non-convergence on %d of %d layers", name_of(self.classifier), n_warn,
                     len(self.layers_))

    # -- prediction

    def _eval_features(self, X: Any) -> torch.Tensor:
        check_fitted(self)
        x, _ = as_features(X, "X")
        if x.shape[1] != self.n_layers_in_ or x.shape[2] != self.n_features_in_:
            raise InputError(
                f"X has shape {tuple(x.shape)}, but the probe was fitted on states with {self.n_layers_in_} layers "
                f"and {self.n_features_in_} features; use states of the same model."
            )
        return x

    def predict_proba(self, X: Any) -> FloatArray:
        """(n_prompts, n_layers, n_classes) class probabilities, columns in ``classes_`` order.

        For ``svm`` these are a logistic / softmax squashing of the margins: they rank prompts
        (ROC-AUC) but are not calibrated probabilities.
        """
        return predict_encoded(self, self._eval_features(X))[1]

    def predict(self, X: Any) -> npt.NDArray[np.str_]:
        """(n_prompts, n_layers) predicted class names, one column per entry of ``layers_``."""
        codes, _ = predict_encoded(self, self._eval_features(X))
        out: npt.NDArray[np.str_] = self.classes_[codes]
        return out

    def layer_scores(self, X: Any, y: Any = None) -> list[float]:
        """(n_layers,) accuracy at each layer of ``layers_``."""
        x = self._eval_features(X)
        labels = as_labels(y, X if isinstance(X, HiddenStates) else None, x.shape[0], "X")
        pred = self.classes_[predict_encoded(self, x)[0]]
        truth = np.array(labels)[:, None]
        return [float(v) for v in (pred == truth).mean(0)]

    def score(self, X: Any, y: Any = None) -> float:
        """Mean accuracy over ``layers_`` (a single float, as sklearn's ``score``)."""
        return float(np.mean(self.layer_scores(X, y)))

    # -- saving

    def _export(self) -> tuple[str, str, dict[str, torch.Tensor]]:
        if self.kind_ == "mlp":
            tensors = {"w1": self.coefs_[0], "b1": self.intercepts_[0], "w2": self.coefs_[1], "b2": self.intercepts_[1]}
            return "mlp", self.link_, {"mean": self.mean_, "scale": self.scale_} | tensors
        if self.kind_ == "linear":
            return "linear", self.link_, {"mean": self.mean_, "scale": self.scale_, "coef": self.coef_,
                                          "intercept": self.intercept_}
        layers = [export_sklearn(est, len(self.classes_)) for est in self.estimators_]
        kind, link = layers[0][0], layers[0][1]
        return kind, link, {k: torch.stack([t[k] for _, _, t in layers]) for k in layers[0][2]}

    def save(self, path: str | Path) -> Path:
        """Write ``path.safetensors`` (weights) and ``path.json`` (format tag, classes, layers, params).

        Torch-engine probes are saved as they are. sklearn-engine probes are saved as their
        weights when each layer is an optional ``StandardScaler`` followed by a binary linear
        ``SVC``, a ``LinearSVC``, a ``LogisticRegression`` or a one-hidden-layer relu
        ``MLPClassifier`` (the built-in and seed classifiers); reloaded, they predict with
        torch, equal to sklearn up to float rounding. Anything else raises ``InputError``.

        Returns:
            The path stem (without suffix).
        """
        check_fitted(self)
        kind, link, tensors = self._export()
        params = {k: v for k, v in self.get_params().items() if k not in ("classifier", "layers", "engine", "preset")}
        name = self.classifier if isinstance(self.classifier, str) else _builtin_name(link, kind)
        payload = {
            "format": PROBE_FORMAT,
            "version": PROBE_FORMAT_VERSION,
            "classifier": name,
            "kind": kind,
            "link": link,
            "classes": [str(c) for c in self.classes_],
            "positive": self.positive_,
            "layers": self.layers_,
            "n_layers_in": self.n_layers_in_,
            "n_features_in": self.n_features_in_,
            "n_samples_fit": self.n_samples_fit_,
            "fit_seconds": self.fit_seconds_,
            "fitted_with": {"engine": engine_of(self), "preset": self.preset},
            "params": params,
            "ihs_sight_version": _version(),
        }
        return save_pair(path, payload, tensors, metadata={"format": PROBE_FORMAT, "version": str(PROBE_FORMAT_VERSION)})

    @classmethod
    def load(cls, path: str | Path) -> LayerProbe:
        """Read what :meth:`save` wrote; unknown formats or versions and inconsistent files raise ``InputError``.

        The loaded probe uses the torch engine (``engine="torch"``, ``preset=None``) whatever
        engine fitted it; ``fitted_with`` in the JSON records the original.
        """
        stem = pair_stem(path)
        payload, tensors, meta = load_pair(stem, writer="LayerProbe.save()", what="a probe")
        if payload.get("format") != PROBE_FORMAT:
            raise InputError(f"{stem}.json is not an ihs-sight probe (format "
                             f"{payload.get('format')!r}, expected {PROBE_FORMAT!r}).")
        if payload.get("version") != PROBE_FORMAT_VERSION:
            raise InputError(f"{stem}.json has probe format version {payload.get('version')!r}; "
                             f"this ihs-sight reads version {PROBE_FORMAT_VERSION}. Re-save the probe with it.")
        if meta.get("format") != PROBE_FORMAT or meta.get("version") != str(PROBE_FORMAT_VERSION):
            raise InputError(f"{stem}.safetensors is not an ihs-sight probe weights file "
                             f"(metadata {meta}).")
        try:
            probe = cls._from_payload(payload, tensors)
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{stem} is not a consistent ihs-sight probe: {e}") from e
        return probe

    @classmethod
    def _from_payload(cls, payload: dict[str, Any], tensors: dict[str, torch.Tensor]) -> LayerProbe:
        kind, link = payload["kind"], payload["link"]
        classes = [str(c) for c in payload["classes"]]
        layers = [int(v) for v in payload["layers"]]
        d, n_in = int(payload["n_features_in"]), int(payload["n_layers_in"])
        if kind not in ("linear", "mlp") or link not in ("logistic", "softmax", "margin"):
            raise ValueError(f"unknown kind/link {kind!r}/{link!r}")
        if len(classes) < 2 or not layers or not all(0 <= v < n_in for v in layers):
            raise ValueError("classes or layers out of range")
        k_out = 1 if len(classes) == 2 else len(classes)
        n = len(layers)
        shapes: dict[str, tuple[int, ...]] = {"mean": (n, d), "scale": (n, d)}
        if kind == "linear":
            shapes |= {"coef": (n, d, k_out), "intercept": (n, k_out)}
        else:
            h = tensors["w1"].shape[-1] if "w1" in tensors else -1
            shapes |= {"w1": (n, d, h), "b1": (n, h), "w2": (n, h, k_out), "b2": (n, k_out)}
        if set(tensors) != set(shapes):
            raise ValueError(f"tensors {sorted(tensors)}, expected {sorted(shapes)}")
        for key, shape in shapes.items():
            if tuple(tensors[key].shape) != shape:
                raise ValueError(f"{key} has shape {tuple(tensors[key].shape)}, expected {shape}")
            if not bool(torch.isfinite(tensors[key]).all()):
                raise ValueError(f"{key} holds NaN or inf")
        params = dict(payload["params"])
        probe = cls(classifier=payload["classifier"], layers=layers, engine="torch", preset=None, **params)
        check_params(probe)
        probe.classes_ = np.array(classes)
        probe.positive_ = payload["positive"]
        probe.layers_ = layers
        probe.n_layers_in_, probe.n_features_in_ = n_in, d
        probe.n_samples_fit_ = int(payload["n_samples_fit"])
        probe.fit_seconds_ = float(payload["fit_seconds"])
        probe.kind_, probe.link_ = kind, link
        dtype = tensors["mean"].dtype
        t = {k: v.to(dtype) for k, v in tensors.items()}
        probe.mean_, probe.scale_ = t["mean"], t["scale"]
        if kind == "linear":
            probe.coef_, probe.intercept_ = t["coef"], t["intercept"]
        else:
            probe.coefs_ = (t["w1"], t["w2"])
            probe.intercepts_ = (t["b1"], t["b2"])
        return probe


def fit_encoded(template: LayerProbe, x: torch.Tensor, codes: IntArray, classes: list[str], layers: list[int],
                bar: Any = None) -> LayerProbe:
    """A clone of ``template`` fitted on trusted inputs: (N, L+1, D) features, class codes, class names, layers.

    ``bar`` (a tqdm bar) advances once per fitted model: once in all for the torch engine, once
    per layer for sklearn.
    """
    fitted: LayerProbe = clone(template)._fit(x, codes, classes, layers, bar)
    return fitted


def predict_encoded(probe: LayerProbe, x: torch.Tensor) -> tuple[IntArray, FloatArray]:
    """(N, n_layers) class codes and (N, n_layers, K) class scores of a fitted probe, on trusted features."""
    k = len(probe.classes_)
    if probe.kind_ == "sklearn":
        codes = np.empty((x.shape[0], len(probe.layers_)), dtype=np.int64)
        scores = np.empty((x.shape[0], len(probe.layers_), k))
        for j, (layer, est) in enumerate(zip(probe.layers_, probe.estimators_)):
            feats = np.ascontiguousarray(x[:, layer].cpu().numpy())
            # The estimator's own predict (not argmax of our scores): exact seed parity.
            codes[:, j] = np.asarray(est.predict(feats), dtype=np.int64)
            scores[:, j] = sklearn_scores(est, feats, k)
        return codes, scores
    with torch.no_grad():
        dtype = probe.mean_.dtype
        z = ((x[:, probe.layers_].to(probe.mean_.device, dtype) - probe.mean_) / probe.scale_).transpose(0, 1)
        if probe.kind_ == "mlp":
            out = mlp_forward(z, probe.coefs_[0], probe.intercepts_[0], probe.coefs_[1], probe.intercepts_[1])
        else:
            out = torch.baddbmm(probe.intercept_[:, None, :], z, probe.coef_)
        out = out.transpose(0, 1).double()  # (N, n_layers, K')
        if out.shape[2] == 1:
            p1 = torch.sigmoid(out[..., 0])
            proba = torch.stack([1 - p1, p1], -1)
            pred = (out[..., 0] > 0).long()
        else:
            proba = torch.softmax(out, -1)
            pred = out.argmax(-1)
    return pred.numpy().astype(np.int64), proba.numpy()


def _builtin_name(link: str, kind: str) -> str:
    return "mlp" if kind == "mlp" else ("svm" if link == "margin" else "logreg")


def _version() -> str:
    try:
        return importlib.metadata.version("ihs-sight")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
