"""Weak classifiers on each layer's last-token state ("probes") -> :class:`ProbeReport`.

Mental model:
1. A probe is one small classifier per layer index ``l = 0..L`` (0 = embeddings, ``l`` = output
   of block ``l``), all fitted on the same prompts' states ``(n_prompts, L + 1, d_model)``.
   :class:`LayerProbe` is that estimator, with scikit-learn habits: ``__init__`` only stores,
   ``fit`` learns ``classes_``, ``layers_`` and the weights (names ending in ``_``).
2. The default engine (``engine="torch"``) standardises features per layer, then fits logistic
   regression or a linear SVM (squared hinge) layer by layer to the optimum of sklearn's
   objective by Newton's method (a layer's probe depends only on its own layer's features), or
   trains every layer's one-hidden-layer MLP at once by mini-batch Adam with ``torch.bmm``
   over layers. ``engine="sklearn"`` clones a real sklearn estimator per layer.
3. ``preset="seed"`` reproduces the original paper code exactly: ``SVC(kernel="linear")`` on
   raw features, ``StandardScaler`` + ``MLPClassifier((100,), max_iter=300, alpha=0.01,
   solver="adam", learning_rate_init=0.01, random_state=42)``, and one unstratified
   ``train_test_split(test_size=0.3, random_state=42)`` over the prompts in the order given.
   The library's own defaults (stratified split, ``random_state=0``) are unaffected.
4. :func:`probe` holds prompts out (a split, k folds, whole categories, or another set), fits,
   and scores every layer with ``sklearn.metrics``. In-distribution accuracy overstates what a
   probe learned (it can learn a dataset's style), so the report keeps false-positive and
   false-negative rates apart and breaks results down by label, category and jailbreak family.
5. A report keeps its fitted probes (not in its JSON): ``report.transfer(other_states)`` scores
   them on prompts they never saw. Probes are saved as safetensors + JSON, never pickled.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, PrivateAttr
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from sklearn.base import BaseEstimator, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import LeaveOneGroupOut, StratifiedKFold, train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC
from tqdm.auto import tqdm

from .errors import InputError
from .extract import ExtractMeta, HiddenStates

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

CLASSIFIERS = ("svm", "mlp", "logreg")
"""Built-in classifier names: linear SVM, one-hidden-layer MLP, logistic regression."""
SEED_TEST_SIZE = 0.3
SEED_RANDOM_STATE = 42
"""The seed code's split and MLP seed (``preset="seed"``)."""
PROBE_FORMAT = "ihs-sight.layer-probe"
PROBE_FORMAT_VERSION = 1
"""Tag and version written into every saved probe; :meth:`LayerProbe.load` accepts only these."""
GROUP_FIELDS = ("label", "category", "family")
DEFAULT_LABEL_MAP = {"jailbreak": "malicious"}
"""Applied to evaluation labels the probe was not trained on: a jailbreak is a malicious request."""

Engine = Literal["torch", "sklearn"]
Preset = Literal["seed"]
Evaluation = Literal["holdout", "cv", "category", "transfer"]
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

MLP_LR, MLP_BATCH, MLP_TOL, MLP_PATIENCE = 0.01, 200, 1e-3, 5
"""Torch MLP training: Adam learning rate, batch size, and the per-layer early stop (training loss
not improved by ``MLP_TOL`` for more than ``MLP_PATIENCE`` epochs; sklearn uses 1e-4 / 10)."""

NEWTON_MAX_ITER, NEWTON_TOL, NEWTON_MAX_HALVINGS = 100, 1e-8, 30
"""Torch linear probes: most Newton steps per layer (``max_iter``'s default), the stop (gradient norm
below ``NEWTON_TOL`` times its norm at zero; Newton reaches it in 2-20 steps), most step halvings."""
NEWTON_KERNEL_RATIO = 2.0
"""Binary linear probes use the n x n Gram-matrix Newton up to this many prompts per feature."""
NEWTON_RIDGE = 1e-10
"""Relative ridge on the intercepts' explicit-Hessian diagonal (a squared hinge may have no curvature there)."""

_LAYER_CHUNK_BYTES = 1 << 30
"""Standardised features of at most this many bytes are trained in one batched model."""


# ---------------------------------------------------------------------------- input checks


def _features(states: Any, what: str) -> tuple[torch.Tensor, HiddenStates | None]:
    """(N, L+1, D) float features and the HiddenStates they came from, if any."""
    hs = states if isinstance(states, HiddenStates) else None
    if hs is not None:
        x = hs.states
    elif isinstance(states, torch.Tensor):
        x = states
    elif isinstance(states, np.ndarray):
        if not np.issubdtype(states.dtype, np.number):
            raise InputError(f"{what} must hold numbers, got a numpy array of dtype {states.dtype}.")
        x = torch.from_numpy(np.asarray(states))
    else:
        raise InputError(
            f"{what} must be a HiddenStates, a torch.Tensor or a numpy array of shape (n_prompts, L + 1, d_model); "
            f"got {type(states).__name__}."
        )
    if x.ndim != 3:
        raise InputError(
            f"{what} must have shape (n_prompts, L + 1, d_model); got {tuple(x.shape)}. "
            "For a single layer l of an [N, L+1, D] tensor pass the whole tensor and layers=[l]."
        )
    if min(x.shape) == 0:
        raise InputError(f"{what} is empty (shape {tuple(x.shape)}).")
    x = x.detach()
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = (~finite).nonzero()[0].tolist()
        rows = int((~finite).flatten(1).any(1).sum())
        raise InputError(
            f"{what} hold NaN or inf values (first at prompt {bad[0]}, layer {bad[1]}; {rows} prompt(s) affected). "
            "Drop those prompts or re-extract them (a float16 model can overflow: try dtype='float32')."
        )
    return x, hs


def _labels(labels: Any, hs: HiddenStates | None, n: int, what: str) -> list[str]:
    """One string label per prompt (from ``labels`` or the HiddenStates)."""
    if labels is None:
        if hs is None or hs.labels is None:
            raise InputError(f"{what} carry no labels; pass labels= with one label per prompt.")
        labels = hs.labels
    if isinstance(labels, str):
        raise InputError("labels must be a sequence with one label per prompt, not a single string.")
    if isinstance(labels, (torch.Tensor, np.ndarray)):
        if labels.ndim != 1:
            raise InputError(f"labels must be one-dimensional; got shape {tuple(labels.shape)}.")
        labels = labels.tolist()
    try:
        items = list(labels)
    except TypeError:
        raise InputError(f"labels must be a sequence, got {type(labels).__name__}.") from None
    if len(items) != n:
        raise InputError(f"{len(items)} labels for {n} prompts in {what}; pass exactly one label per prompt.")
    for i, v in enumerate(items):
        if v is None:
            raise InputError(f"labels[{i}] is None; every prompt needs a label (drop unlabelled prompts).")
    return [str(v) for v in items]


def _class_order(labels: Sequence[str], positive: str) -> list[str]:
    """``normal`` first, then the positive class, then the rest sorted (the seed's 0, 1, 2 order)."""
    present = sorted(set(labels))
    head = list(dict.fromkeys(c for c in ("normal", positive) if c in present))
    return head + [c for c in present if c not in head]


def _require_classes(labels: Sequence[str], what: str) -> None:
    counts = {c: labels.count(c) for c in sorted(set(labels))}
    if len(counts) < 2:
        only = next(iter(counts))
        raise InputError(
            f"{what} hold a single class ({only!r}, {counts[only]} prompts); a probe needs at least two. "
            "Add prompts with another label (e.g. normal and malicious)."
        )


def _positive_class(classes: Sequence[str], positive: str) -> str | None:
    if len(classes) != 2:
        return None
    return positive if positive in classes else classes[1]


def _layer_list(layers: Any, n_index: int) -> list[int]:
    if layers is None:
        return list(range(n_index))
    if isinstance(layers, (int, np.integer)) and not isinstance(layers, bool):
        layers = [int(layers)]
    try:
        items = list(layers)
    except TypeError:
        raise InputError(f"layers must be a list of layer indices, got {type(layers).__name__}.") from None
    if not items:
        raise InputError("layers is empty; pass None for all layers or a list of indices.")
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise InputError(f"layer indices must be integers, got {v!r}.")
        if not 0 <= int(v) < n_index:
            raise InputError(
                f"layer {int(v)} is out of range; these states have layers 0..{n_index - 1} (0 = embeddings)."
            )
        out.append(int(v))
    return sorted(set(out))


def _check_number(name: str, value: Any, *, low: float, high: float | None = None, integer: bool = False,
                  low_open: bool = False) -> None:
    kind = int if integer else (int, float)
    ok = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        rng = f"{'>' if low_open else '>='} {low}" + (f" and <= {high}" if high is not None else "")
        raise InputError(f"{name} must be {'an integer' if integer else 'a number'} {rng}, got {value!r}.")


# ---------------------------------------------------------------------------- torch engine


def _standardise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, D) mean and scale of (N, L, D) features; constant features get scale 1 (as StandardScaler)."""
    x64 = x.double()
    mean = x64.mean(0)
    std = x64.std(0, unbiased=False)
    # Layer 0 is often one unique row (the same template token for every prompt): its
    # "variance" is rounding noise, which must not be blown up to unit scale.
    constant = std <= 10 * torch.finfo(torch.float32).eps * mean.abs().clamp(min=1.0)
    scale = torch.where(constant, torch.ones_like(std), std)
    return mean.float(), scale.float()


def _margin_loss(m: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """Summed loss of one binary model's margins ``m`` (n,) for labels ``y`` = +-1."""
    if loss == "log":
        return F.softplus(-y * m).sum()
    return F.relu(1 - y * m).pow(2).sum()


def _margin_derivatives(m: torch.Tensor, y: torch.Tensor, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, v) per sample: ``u**2`` is the loss's second derivative in the margin, ``u * v`` its first.

    Written as a square root so that the Gram-matrix Newton system stays symmetric, in closed
    forms (no division of the first derivative by ``u``): logistic u = 1 / (2 cosh(m/2)),
    v = -y exp(-y m / 2); squared hinge (generalised Hessian, as liblinear's primal Newton)
    u = sqrt(2) on samples inside the margin (y m < 1), else 0.
    """
    if loss == "log":
        return 0.5 / torch.cosh(0.5 * m), -y * torch.exp(-0.5 * y * m)
    slack = F.relu(1 - y * m)
    inside = (slack > 0).to(m.dtype)
    return math.sqrt(2.0) * inside, -math.sqrt(2.0) * y * slack


def _armijo(data_loss: Callable[[torch.Tensor], float], m: torch.Tensor, dm: torch.Tensor,
            penalty: tuple[float, float, float], slope: float) -> float:
    """The largest step 1, 1/2, 1/4, ... along a Newton direction with enough decrease (Armijo), or 0.0.

    The objective at step ``s`` is ``data_loss(m + s * dm) + q0 + s * q1 + s**2 * q2 / 2`` (the
    L2 penalty is quadratic in ``s``; ``penalty = (q0, q1, q2)``) and ``slope`` its derivative at
    0: a non-negative slope (no descent left, only rounding) or no decrease at all gives 0.0.
    """
    q0, q1, q2 = penalty
    f0 = data_loss(m) + q0
    step = 1.0
    for _ in range(NEWTON_MAX_HALVINGS if slope < 0 else 0):
        if data_loss(m + step * dm) + q0 + step * q1 + 0.5 * step * step * q2 <= f0 + 1e-4 * step * slope:
            return step
        step /= 2
    return 0.0


def _newton_kernel(gram: torch.Tensor, y: torch.Tensor, *, loss: str, c: float, max_iter: int,
                   tol: float) -> tuple[torch.Tensor, float, int, bool]:
    """Dual weights ``a`` (n,), intercept, iterations and convergence of one binary linear model.

    Minimises ``c * sum(loss(y * (w @ z + b))) + ||w||^2 / 2`` (``b`` free) by Newton's method
    in the span of the samples (``w = Z.T @ a``, where the optimum lies), from the Gram matrix
    ``gram = Z @ Z.T`` alone. Each step is the exact primal Newton step: with ``u``, ``v`` from
    :func:`_margin_derivatives` at the margins ``m``, the Newton point is ``a' = u * t``, ``b'``
    where ``(I + c * outer(u, u) * gram) t + c u b' = c (u m - v)`` and ``u @ t = 0`` (the free
    intercept): one positive definite solve over the samples with ``u > 0`` (for the squared
    hinge, its active set), cheaper than the (D+1)-square Hessian while n is not much above D.
    Steps are backtracked (Armijo) on the objective. Stops when the gradient norm is below
    ``tol`` times its norm at zero, or when no step decreases the objective (rounding).
    """
    n = gram.shape[0]
    a, b = gram.new_zeros(n), 0.0

    def data_loss(margins: torch.Tensor) -> float:
        return c * float(_margin_loss(margins, y, loss))

    m = gram.new_zeros(n)
    g0 = -1.0
    for it in range(max_iter + 1):
        u, v = _margin_derivatives(m, y, loss)
        d = u * v
        r = a + c * d  # gradient in w is Z.T @ r
        grad = math.sqrt(max(float(r @ (gram @ r)), 0.0) + (c * float(d.sum())) ** 2)
        g0 = grad if g0 < 0 else g0
        if grad <= tol * g0:
            return a, b, it, True
        if it == max_iter:
            break
        act = (u > 0).nonzero()[:, 0]
        every = len(act) == n
        ua, va, ma = (u, v, m) if every else (u[act], v[act], m[act])
        sub = gram if every else gram.view(-1).index_select(0, (act[:, None] * n + act).view(-1)).view(len(act), -1)
        system = torch.outer(c * ua, ua).mul_(sub)
        system.diagonal().add_(1.0)
        sol = torch.cholesky_solve(torch.stack([c * (ua * ma - va), c * ua], 1), torch.linalg.cholesky(system))
        den = float(ua @ sol[:, 1])
        b_new = float(ua @ sol[:, 0]) / den if den > 0 else b
        a_new = ua * (sol[:, 0] - b_new * sol[:, 1])
        if not every:
            a_new = torch.zeros_like(a).index_copy_(0, act, a_new)
        m_new = gram @ a_new + b_new
        da, dm = a_new - a, m_new - m
        k_a, k_da = m - b, dm - (b_new - b)  # gram @ a and gram @ da
        penalty = (0.5 * float(a @ k_a), float(da @ k_a), float(da @ k_da))
        step = _armijo(data_loss, m, dm, penalty, c * float(d @ dm) + penalty[1])
        if step == 0.0:
            return a, b, it, True  # no decrease left: converged to rounding
        if step == 1.0:
            a, b, m = a_new, b_new, m_new
        else:
            a, b = a + step * da, b + step * (b_new - b)
            m = gram @ a + b
    return a, b, max_iter, False


def _sum_to_zero_basis(k: int, like: torch.Tensor) -> torch.Tensor:
    """(k - 1, k) orthonormal rows orthogonal to the all-ones vector (Helmert contrasts)."""
    rows = like.new_zeros(k - 1, k)
    for j in range(1, k):
        rows[j - 1, :j] = 1.0
        rows[j - 1, j] = -float(j)
        rows[j - 1] /= math.sqrt(j * (j + 1))
    return rows


def _newton_primal(x: torch.Tensor, target: torch.Tensor, *, loss: str, c: float, max_iter: int,
                   tol: float) -> tuple[torch.Tensor, torch.Tensor, int, bool]:
    """Weights (D, K'), intercepts (K'), iterations and convergence of one linear model on ``x``.

    Newton's method with the explicit Hessian, for one binary model (``target`` (n, 1) of +-1)
    or multinomial logistic regression (``target`` one-hot (n, K); objective
    ``c * sum(cross-entropy) + ||W||^2 / 2``). The multinomial optimum has weights and (up to
    an irrelevant shift) intercepts summing to zero over classes, so it is solved exactly in
    K - 1 orthonormal contrasts (``W = V @ E``, ``||W|| = ||V||``): a positive definite
    (D+1)(K-1) Hessian instead of a singular (D+1)K one. Intercepts are not penalised (a
    relative ``NEWTON_RIDGE`` on their Hessian diagonal guards a squared hinge with no sample
    inside the margin). Steps are backtracked (Armijo); stops as :func:`_newton_kernel`.
    """
    n, d = x.shape
    basis = _sum_to_zero_basis(target.shape[1], x) if target.shape[1] > 1 else None
    k = 1 if basis is None else basis.shape[0]
    xb = torch.cat([x, x.new_ones(n, 1)], 1)
    pen = torch.ones(d + 1, 1, dtype=x.dtype, device=x.device)
    pen[-1] = 0.0
    theta = x.new_zeros(d + 1, k)

    def data_loss(m: torch.Tensor) -> float:
        if basis is None:
            return c * float(_margin_loss(m[:, 0], target[:, 0], loss))
        full = m @ basis
        return c * float((torch.logsumexp(full, 1) - (target * full).sum(1)).sum())

    g0 = -1.0
    for it in range(max_iter + 1):
        m = xb @ theta
        if basis is None:
            u, v = _margin_derivatives(m[:, 0], target[:, 0], loss)
            grad_m, curv = (u * v)[:, None], (u * u)[:, None, None]
        else:
            prob = torch.softmax(m @ basis, 1)
            grad_m = (prob - target) @ basis.T
            pb = prob @ basis.T
            curv = torch.einsum("nk,ik,jk->nij", prob, basis, basis) - pb[:, :, None] * pb[:, None, :]
        g = c * xb.T @ grad_m + pen * theta
        grad = float(torch.linalg.vector_norm(g))
        g0 = grad if g0 < 0 else g0
        if grad <= tol * g0:
            break
        if it == max_iter:
            return _primal_weights(theta, basis) + (max_iter, False)
        hess = x.new_zeros(k, d + 1, k, d + 1)
        for i in range(k):
            for j in range(i, k):
                block = c * xb.T @ (xb * curv[:, i, j, None])
                hess[i, :, j] = block
                hess[j, :, i] = block.T
        hess = hess.reshape(k * (d + 1), k * (d + 1))
        ridge = pen.expand(d + 1, k).T.reshape(-1)
        hess.diagonal().add_(torch.where(ridge > 0, ridge, NEWTON_RIDGE * (1.0 + hess.diagonal())))
        dtheta = -torch.cholesky_solve(g.T.reshape(-1, 1), torch.linalg.cholesky(hess)).reshape(k, d + 1).T
        dm = xb @ dtheta
        penalty = (0.5 * float((pen * theta * theta).sum()), float((pen * theta * dtheta).sum()),
                   float((pen * dtheta * dtheta).sum()))
        step = _armijo(data_loss, m, dm, penalty, float((g * dtheta).sum()))
        if step == 0.0:
            break
        theta = theta + step * dtheta
    return _primal_weights(theta, basis) + (it, True)


def _primal_weights(theta: torch.Tensor, basis: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(D, K') weights and (K') intercepts from the Newton parameters (contrasts mapped back)."""
    full = theta if basis is None else theta @ basis
    return full[:-1], full[-1]


def _fit_linear(z: torch.Tensor, y: torch.Tensor, n_classes: int, *, loss: str, c: float,
                max_iter: int) -> tuple[torch.Tensor, torch.Tensor, list[int], int]:
    """(L, D, K') weights, (L, K') intercepts, iterations per layer and unconverged layers.

    Every layer is fitted on its own (a Python loop; each layer's result depends only on its
    own features) to the optimum of sklearn's objective ``c * sum(loss) + ||w||^2 / 2``, the
    intercept unpenalised: logistic (``LogisticRegression``: binary, or multinomial for K > 2)
    or squared hinge (``LinearSVC``, one-vs-rest for K > 2, each class its own binary model).
    Binary models use the Gram-matrix Newton (:func:`_newton_kernel`: an n x n system, n the
    prompts, cheaper than a (D+1)-square Hessian while n is not much above D); softmax models,
    and binary ones on many more prompts than features, the explicit Hessian. Features of rank
    below D are first rotated onto their row space (exact: the optimal weights lie in it).
    The solve runs in float64 (the standardised features it receives were computed in their own
    dtype); the results are cast back to ``z``'s dtype.
    """
    n_layers, n, d = z.shape
    k_out = 1 if n_classes == 2 else n_classes
    softmax = loss == "log" and k_out > 1
    weights = z.new_zeros(n_layers, d, k_out)
    bias = z.new_zeros(n_layers, k_out)
    n_iter, unconverged = [0] * n_layers, 0
    y = y.to(z.device)
    onehot = F.one_hot(y, n_classes).double()
    signs = (2 * onehot - 1)[:, 1:] if k_out == 1 else 2 * onehot - 1
    for layer in range(n_layers):
        x = z[layer].double()
        if softmax or n > NEWTON_KERNEL_RATIO * (d + 1):
            rot = None
            if n < d:  # onto the row space (exact: the optimal weights lie in it): x = x_new @ rot.T
                rot, tri = torch.linalg.qr(x.T)
                x = tri.T
            targets = [onehot] if softmax else [signs[:, j:j + 1] for j in range(k_out)]
            primal = [_newton_primal(x, t, loss=loss, c=c, max_iter=max_iter, tol=NEWTON_TOL) for t in targets]
            w = torch.cat([f[0] for f in primal], 1)
            w, b = (w if rot is None else rot @ w), torch.cat([f[1] for f in primal])
            steps, done = [f[2] for f in primal], all(f[3] for f in primal)
        else:
            gram = x @ x.T
            dual = [_newton_kernel(gram, signs[:, j], loss=loss, c=c, max_iter=max_iter, tol=NEWTON_TOL)
                    for j in range(k_out)]
            w = x.T @ torch.stack([f[0] for f in dual], 1)
            b = torch.tensor([f[1] for f in dual], dtype=x.dtype, device=x.device)
            steps, done = [f[2] for f in dual], all(f[3] for f in dual)
        weights[layer], bias[layer] = w.to(z.dtype), b.to(z.dtype)
        n_iter[layer] = max(steps)
        unconverged += not done
    return weights, bias, n_iter, unconverged


def _mlp_init(n_layers: int, d: int, hidden: int, k_out: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Glorot-uniform weights and biases for every layer's MLP (sklearn's relu factor 6)."""
    def uniform(shape: tuple[int, ...], fan_in: int, fan_out: int) -> torch.Tensor:
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        return (torch.rand(shape, generator=gen) * 2 - 1) * bound

    return [
        uniform((n_layers, d, hidden), d, hidden),
        uniform((n_layers, hidden), d, hidden),
        uniform((n_layers, hidden, k_out), hidden, k_out),
        uniform((n_layers, k_out), hidden, k_out),
    ]


def _mlp_forward(z: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                 b2: torch.Tensor) -> torch.Tensor:
    hidden = torch.relu(torch.baddbmm(b1[:, None, :], z, w1))
    return torch.baddbmm(b2[:, None, :], hidden, w2)


def _log_loss_per_layer(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(L,) mean log-loss of each layer's logits ``out`` (L, n, K')."""
    if out.shape[2] == 1:
        target = y.to(out.dtype).expand_as(out[..., 0])
        return F.binary_cross_entropy_with_logits(out[..., 0], target, reduction="none").mean(1)
    flat = F.cross_entropy(out.reshape(-1, out.shape[2]), y.repeat(out.shape[0]), reduction="none")
    return flat.view(out.shape[0], -1).mean(1)


def _take_rows(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return torch.index_select(t, 0, rows)


def _fit_mlp(z: torch.Tensor, y: torch.Tensor, init: list[torch.Tensor], *, alpha: float, lr: float,
             max_iter: int, batch_size: int, gen: torch.Generator, tol: float,
             patience: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Weights and (L,) epochs run of one-hidden-layer relu MLPs for L layers at once.

    Mini-batch Adam on sklearn's objective (mean log-loss + ``alpha / 2 * ||W||^2 / batch``).
    Each layer stops on its own when its epoch training loss has not improved by ``tol`` for
    more than ``patience`` epochs (sklearn's rule); stopped layers leave the batch, so an
    epoch gets cheaper as layers converge. Adam is written out because its state must follow
    the layers still training. Batches are gathered one at a time: a whole-epoch shuffled copy
    of the features is a fresh allocation of ``L * N * D`` floats per epoch, which was slower
    than the matrix products themselves.
    """
    n_layers, n, _ = z.shape
    params = [p.to(z.device, z.dtype).clone() for p in init]
    moment1 = [torch.zeros_like(p) for p in params]
    moment2 = [torch.zeros_like(p) for p in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    best = torch.full((n_layers,), math.inf, dtype=torch.float64)
    stall = torch.zeros(n_layers, dtype=torch.long)
    active = torch.arange(n_layers)
    epochs = torch.zeros(n_layers, dtype=torch.long)
    batch, step = min(batch_size, n), 0
    for _ in range(max_iter):
        if len(active) == 0:
            break
        perm = torch.randperm(n, generator=gen).to(z.device)
        everyone = len(active) == n_layers
        rows = active.to(z.device)
        take = (lambda t: t) if everyone else functools.partial(_take_rows, rows=rows)
        pa = [take(p).detach().requires_grad_(True) for p in params]
        m1, m2 = [take(m) for m in moment1], [take(m) for m in moment2]
        epoch_loss = torch.zeros(len(active), dtype=torch.float64)
        for start in range(0, n, batch):
            idx = perm[start:start + batch]
            zb, yb = take(torch.index_select(z, 1, idx)), y[idx]
            data = _log_loss_per_layer(_mlp_forward(zb, *pa), yb)
            grads = torch.autograd.grad(data.sum(), pa)
            step += 1
            with torch.no_grad():
                decay = alpha / len(idx)
                penalty = 0.5 * decay * (torch.linalg.vector_norm(pa[0], dim=(1, 2)) ** 2
                                         + torch.linalg.vector_norm(pa[2], dim=(1, 2)) ** 2)
                # Adam with bias correction folded into the step size and epsilon.
                scale1, scale2 = 1 - beta1 ** step, math.sqrt(1 - beta2 ** step)
                for i, (p, g, a, b) in enumerate(zip(pa, grads, m1, m2)):
                    if i in (0, 2):  # the penalty's gradient, added by hand (weights only, as sklearn)
                        g.add_(p, alpha=decay)
                    a.lerp_(g, 1 - beta1)
                    b.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    p.addcdiv_(a, b.sqrt().add_(eps * scale2), value=-lr * scale2 / scale1)
            epoch_loss += (data.detach() + penalty).double().cpu() * len(idx)
        if everyone:
            params = [p.detach() for p in pa]
        else:
            for full, part in zip(params + moment1 + moment2, pa + m1 + m2):
                full[rows] = part.detach()
        epoch_loss /= n
        epochs[active] += 1
        improved = epoch_loss <= best[active] - tol
        stall[active] = torch.where(improved, torch.zeros_like(stall[active]), stall[active] + 1)
        best[active] = torch.minimum(best[active], epoch_loss)
        active = active[stall[active] <= patience]
    return params, epochs


# ---------------------------------------------------------------------------- sklearn engine


def _sklearn_template(name: str, *, seed: bool, random_state: int) -> Any:
    """A fresh sklearn estimator for a built-in name (``seed``: the paper code's exact settings)."""
    rs = SEED_RANDOM_STATE if seed else random_state
    if name == "svm":
        return SVC(kernel="linear")
    if name == "mlp":
        return make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(100,), max_iter=300, alpha=0.01,
                                                             solver="adam", learning_rate_init=0.01, random_state=rs))
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=rs))


def _sklearn_scores(est: Any, x: npt.NDArray[Any], n_classes: int) -> FloatArray:
    """(n, K) class scores of one fitted sklearn estimator, columns in code order."""
    codes = np.asarray(est.classes_, dtype=np.int64)
    proba = getattr(est, "predict_proba", None)
    if proba is not None:
        raw = np.asarray(proba(x), dtype=np.float64)
    else:
        dec = np.asarray(est.decision_function(x), dtype=np.float64)
        if dec.ndim == 1:
            p1 = 1.0 / (1.0 + np.exp(-dec))
            raw = np.stack([1 - p1, p1], 1)
        else:
            e = np.exp(dec - dec.max(1, keepdims=True))
            raw = e / e.sum(1, keepdims=True)
    out = np.zeros((x.shape[0], n_classes))
    out[:, codes] = raw
    return out


def _export_sklearn(est: Any, n_classes: int) -> tuple[str, str, dict[str, torch.Tensor]]:
    """(kind, link, tensors) of one fitted sklearn layer model, or InputError if it has no safe form."""
    steps = list(est.steps) if isinstance(est, Pipeline) else [("model", est)]
    *pre, (_, final) = steps
    d = int(final.n_features_in_)
    mean, scale = np.zeros(d), np.ones(d)
    if len(pre) > 1 or (pre and not isinstance(pre[0][1], StandardScaler)):
        raise InputError("Only an optional StandardScaler followed by one classifier can be saved without pickle.")
    if pre:
        scaler = pre[0][1]
        if scaler.mean_ is not None:
            mean = np.asarray(scaler.mean_, dtype=np.float64)
        if scaler.scale_ is not None:
            scale = np.asarray(scaler.scale_, dtype=np.float64)
    base = {"mean": torch.from_numpy(mean), "scale": torch.from_numpy(scale)}
    if isinstance(final, MLPClassifier) and len(final.coefs_) == 2 and final.activation == "relu":
        link = "logistic" if final.out_activation_ == "logistic" else "softmax"
        tensors = {"w1": final.coefs_[0], "b1": final.intercepts_[0], "w2": final.coefs_[1], "b2": final.intercepts_[1]}
        return "mlp", link, base | {k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in tensors.items()}
    if isinstance(final, (SVC, LinearSVC, LogisticRegression)):
        if isinstance(final, SVC) and (final.kernel != "linear" or n_classes != 2):
            raise InputError("Only a binary linear-kernel SVC can be saved without pickle (its weights are coef_).")
        coef = np.asarray(final.coef_.toarray() if hasattr(final.coef_, "toarray") else final.coef_, dtype=np.float64)
        link = "margin" if isinstance(final, (SVC, LinearSVC)) else ("logistic" if coef.shape[0] == 1 else "softmax")
        if coef.shape[0] not in (1, n_classes):
            raise InputError(f"Cannot save a {type(final).__name__} with {coef.shape[0]} weight rows for {n_classes} classes.")
        return "linear", link, base | {"coef": torch.from_numpy(coef.T.copy()),
                                       "intercept": torch.from_numpy(np.asarray(final.intercept_, dtype=np.float64))}
    raise InputError(
        f"A {type(final).__name__} cannot be saved without pickle; ihs-sight saves linear models (SVC linear, "
        "LinearSVC, LogisticRegression) and one-hidden-layer relu MLPClassifiers. Save other estimators yourself."
    )


def _name_of(classifier: Any) -> str:
    if isinstance(classifier, str):
        return classifier
    final = classifier.steps[-1][1] if isinstance(classifier, Pipeline) else classifier
    return type(final).__name__


# ---------------------------------------------------------------------------- the estimator


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

    # -- parameters

    def _check_params(self) -> None:
        if self.preset not in (None, "seed"):
            raise InputError(f"preset must be None or 'seed', got {self.preset!r}.")
        if self.engine not in ("torch", "sklearn"):
            raise InputError(f"engine must be 'torch' or 'sklearn', got {self.engine!r}.")
        if isinstance(self.classifier, str):
            if self.classifier not in CLASSIFIERS:
                raise InputError(f"Unknown classifier {self.classifier!r}; choose from {list(CLASSIFIERS)} "
                                 "or pass an unfitted sklearn classifier.")
        elif not (hasattr(self.classifier, "fit") and hasattr(self.classifier, "predict")):
            raise InputError(f"classifier must be a name in {list(CLASSIFIERS)} or a sklearn classifier, "
                             f"got {type(self.classifier).__name__}.")
        elif self.preset == "seed":
            raise InputError("preset='seed' takes a classifier name ('svm', 'mlp', 'logreg'), not an estimator.")
        _check_number("C", self.C, low=0, low_open=True)
        _check_number("hidden", self.hidden, low=1, integer=True)
        _check_number("alpha", self.alpha, low=0)
        if self.max_iter is not None:
            _check_number("max_iter", self.max_iter, low=1, integer=True)
        _check_number("random_state", self.random_state, low=0, integer=True)
        if not isinstance(self.positive, str):
            raise InputError(f"positive must be a class name (string), got {self.positive!r}.")

    def _resolved_engine(self) -> Engine:
        if self.preset == "seed" or not isinstance(self.classifier, str):
            return "sklearn"
        return self.engine

    def _template(self) -> Any:
        if not isinstance(self.classifier, str):
            return self.classifier
        return _sklearn_template(self.classifier, seed=self.preset == "seed", random_state=self.random_state)

    # -- fitting

    def fit(self, X: Any, y: Any = None) -> LayerProbe:
        """Fit one classifier per layer.

        Args:
            X: a :class:`HiddenStates` or a tensor / array of shape (n_prompts, L + 1, d_model).
            y: one label per prompt (``None``: the HiddenStates' labels).

        Returns:
            ``self``.
        """
        self._check_params()
        x, hs = _features(X, "X")
        labels = _labels(y, hs, x.shape[0], "X")
        _require_classes(labels, "The training labels")
        classes = _class_order(labels, self.positive)
        layers = _layer_list(self.layers, x.shape[1])
        index = {c: i for i, c in enumerate(classes)}
        codes = np.array([index[v] for v in labels], dtype=np.int64)
        return self._fit(x, codes, classes, layers)

    def _fit(self, x: torch.Tensor, codes: IntArray, classes: list[str], layers: list[int],
             bar: Any = None) -> LayerProbe:
        """Fit on trusted inputs: (N, L+1, D) features, class codes, class names, layer indices."""
        start = time.perf_counter()
        self.classes_ = np.array(classes)
        self.positive_ = _positive_class(classes, self.positive)
        self.layers_ = list(layers)
        self.n_layers_in_ = int(x.shape[1])
        self.n_features_in_ = int(x.shape[2])
        self.n_samples_fit_ = int(x.shape[0])
        if self._resolved_engine() == "torch":
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
        mean, scale = _standardise(feats)
        y = torch.from_numpy(codes).to(device)
        n, n_layers, d = feats.shape
        k_out = 1 if n_classes == 2 else n_classes
        gen = torch.Generator().manual_seed(int(self.random_state))
        is_mlp = self.classifier == "mlp"
        init = _mlp_init(n_layers, d, int(self.hidden), k_out, gen) if is_mlp else []
        chunk = max(1, int(_LAYER_CHUNK_BYTES // (4 * n * d)))
        parts: list[list[torch.Tensor]] = []
        n_iter: list[torch.Tensor] = []
        unconverged = 0
        for lo in range(0, n_layers, chunk):
            sl = slice(lo, lo + chunk)
            z = ((feats[:, sl] - mean[sl]) / scale[sl]).transpose(0, 1).contiguous().to(device)
            if is_mlp:
                weights, epochs = _fit_mlp(z, y, [p[sl] for p in init], alpha=float(self.alpha), lr=MLP_LR,
                                           max_iter=int(self.max_iter or 15), batch_size=MLP_BATCH, gen=gen,
                                           tol=MLP_TOL, patience=MLP_PATIENCE)
                parts.append(weights)
                n_iter.append(epochs)
            else:
                loss = "squared_hinge" if self.classifier == "svm" else "log"
                coef, intercept, steps, missed = _fit_linear(z, y, n_classes, loss=loss, c=float(self.C),
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
            log.info("%s: sklearn reported non-convergence on %d of %d layers", _name_of(self.classifier), n_warn,
                     len(self.layers_))

    # -- prediction

    def _check_fitted(self) -> None:
        if not hasattr(self, "classes_"):
            raise InputError("This LayerProbe is not fitted yet; call fit(states, labels) first.")

    def _eval_features(self, X: Any) -> torch.Tensor:
        self._check_fitted()
        x, _ = _features(X, "X")
        if x.shape[1] != self.n_layers_in_ or x.shape[2] != self.n_features_in_:
            raise InputError(
                f"X has shape {tuple(x.shape)}, but the probe was fitted on states with {self.n_layers_in_} layers "
                f"and {self.n_features_in_} features; use states of the same model."
            )
        return x

    def _predict(self, x: torch.Tensor) -> tuple[IntArray, FloatArray]:
        """(N, n_layers) class codes and (N, n_layers, K) class scores, on trusted features."""
        k = len(self.classes_)
        if self.kind_ == "sklearn":
            codes = np.empty((x.shape[0], len(self.layers_)), dtype=np.int64)
            scores = np.empty((x.shape[0], len(self.layers_), k))
            for j, (layer, est) in enumerate(zip(self.layers_, self.estimators_)):
                feats = np.ascontiguousarray(x[:, layer].cpu().numpy())
                # The estimator's own predict (not argmax of our scores): exact seed parity.
                codes[:, j] = np.asarray(est.predict(feats), dtype=np.int64)
                scores[:, j] = _sklearn_scores(est, feats, k)
            return codes, scores
        with torch.no_grad():
            dtype = self.mean_.dtype
            z = ((x[:, self.layers_].to(self.mean_.device, dtype) - self.mean_) / self.scale_).transpose(0, 1)
            if self.kind_ == "mlp":
                out = _mlp_forward(z, self.coefs_[0], self.intercepts_[0], self.coefs_[1], self.intercepts_[1])
            else:
                out = torch.baddbmm(self.intercept_[:, None, :], z, self.coef_)
            out = out.transpose(0, 1).double()  # (N, n_layers, K')
            if out.shape[2] == 1:
                p1 = torch.sigmoid(out[..., 0])
                proba = torch.stack([1 - p1, p1], -1)
                pred = (out[..., 0] > 0).long()
            else:
                proba = torch.softmax(out, -1)
                pred = out.argmax(-1)
        return pred.numpy().astype(np.int64), proba.numpy()

    def predict_proba(self, X: Any) -> FloatArray:
        """(n_prompts, n_layers, n_classes) class probabilities, columns in ``classes_`` order.

        For ``svm`` these are a logistic / softmax squashing of the margins: they rank prompts
        (ROC-AUC) but are not calibrated probabilities.
        """
        return self._predict(self._eval_features(X))[1]

    def predict(self, X: Any) -> npt.NDArray[np.str_]:
        """(n_prompts, n_layers) predicted class names, one column per entry of ``layers_``."""
        codes, _ = self._predict(self._eval_features(X))
        out: npt.NDArray[np.str_] = self.classes_[codes]
        return out

    def layer_scores(self, X: Any, y: Any = None) -> list[float]:
        """(n_layers,) accuracy at each layer of ``layers_``."""
        x = self._eval_features(X)
        labels = _labels(y, X if isinstance(X, HiddenStates) else None, x.shape[0], "X")
        pred = self.classes_[self._predict(x)[0]]
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
        layers = [_export_sklearn(est, len(self.classes_)) for est in self.estimators_]
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
        self._check_fitted()
        kind, link, tensors = self._export()
        stem = Path(path).with_suffix("")
        stem.parent.mkdir(parents=True, exist_ok=True)
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
            "fitted_with": {"engine": self._resolved_engine(), "preset": self.preset},
            "params": params,
            "ihs_sight_version": _version(),
        }
        meta = {"format": PROBE_FORMAT, "version": str(PROBE_FORMAT_VERSION)}
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(stem.with_suffix(".safetensors")), metadata=meta)
        stem.with_suffix(".json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
        return stem

    @classmethod
    def load(cls, path: str | Path) -> LayerProbe:
        """Read what :meth:`save` wrote; unknown formats or versions and inconsistent files raise ``InputError``.

        The loaded probe uses the torch engine (``engine="torch"``, ``preset=None``) whatever
        engine fitted it; ``fitted_with`` in the JSON records the original.
        """
        stem = Path(path).with_suffix("")
        for suffix in (".json", ".safetensors"):
            if not stem.with_suffix(suffix).is_file():
                raise InputError(f"Missing {stem.with_suffix(suffix)}; LayerProbe.save() writes a .json and a "
                                 ".safetensors file.")
        try:
            payload = json.loads(stem.with_suffix(".json").read_text(encoding="utf-8"))
        except (ValueError, OSError) as e:
            raise InputError(f"Cannot read {stem.with_suffix('.json')}: {e}") from e
        if not isinstance(payload, dict) or payload.get("format") != PROBE_FORMAT:
            found = payload.get("format") if isinstance(payload, dict) else None
            raise InputError(f"{stem.with_suffix('.json')} is not an ihs-sight probe (format {found!r}, expected "
                             f"{PROBE_FORMAT!r}).")
        if payload.get("version") != PROBE_FORMAT_VERSION:
            raise InputError(f"{stem.with_suffix('.json')} has probe format version {payload.get('version')!r}; "
                             f"this ihs-sight reads version {PROBE_FORMAT_VERSION}. Re-save the probe with it.")
        try:
            with safe_open(str(stem.with_suffix(".safetensors")), framework="pt") as f:
                meta = f.metadata() or {}
            tensors = load_file(str(stem.with_suffix(".safetensors")))
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise InputError(f"Cannot read {stem.with_suffix('.safetensors')}: {e}") from e
        if meta.get("format") != PROBE_FORMAT or meta.get("version") != str(PROBE_FORMAT_VERSION):
            raise InputError(f"{stem.with_suffix('.safetensors')} is not an ihs-sight probe weights file "
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
        probe._check_params()
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


def _builtin_name(link: str, kind: str) -> str:
    return "mlp" if kind == "mlp" else ("svm" if link == "margin" else "logreg")


def _version() -> str:
    try:
        return importlib.metadata.version("ihs-sight")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------------------- results


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

    by: Literal["label", "category", "family"]
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
        for name, s in self.scores.items():
            best = s.accuracy[self.layers.index(s.best_layer)]
            first = "none" if s.first_layer is None else str(s.first_layer)
            lines.append(f"{name}: best layer {s.best_layer} ({best:.3f}); first layer >= {self.threshold:g}: {first}")
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
        from .plots.probe import plot_probe

        return plot_probe(self, metric=metric, classifiers=classifiers, group_by=group_by)


# ---------------------------------------------------------------------------- evaluation


@dataclass
class _EvalSet:
    """Prompts to score: features, class codes, and what to group them by."""

    x: torch.Tensor
    codes: IntArray
    raw_labels: list[str]
    categories: list[str | None] | None
    families: list[str | None] | None


@dataclass
class _Outcome:
    name: str
    fold_metrics: list[dict[str, Any]] = field(default_factory=list)
    pred: IntArray | None = None
    seconds: float = 0.0
    probe: LayerProbe | None = None


def _average_ranks(values: FloatArray) -> FloatArray:
    """1-based ranks of ``values``, ties sharing their average rank."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    out: FloatArray = (ends - (counts - 1) / 2.0)[inverse]
    return out


def _layer_metrics(y: IntArray, pred: IntArray, scores: FloatArray, n_classes: int, pos: int | None) -> dict[str, Any]:
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


def _mean_std(folds: list[dict[str, Any]], key: str) -> tuple[list[float] | None, list[float] | None]:
    rows = [f[key] for f in folds]
    if any(r is None for r in rows):
        return None, None
    arr = np.array(rows, dtype=np.float64)
    std = [float(v) for v in arr.std(0)] if len(rows) > 1 else None
    return [float(v) for v in arr.mean(0)], std


def _classifier_scores(o: _Outcome, classes: list[str], layers: list[int], threshold: float) -> ClassifierScores:
    acc, acc_std = _mean_std(o.fold_metrics, "accuracy")
    f1, f1_std = _mean_std(o.fold_metrics, "f1")
    auc, auc_std = _mean_std(o.fold_metrics, "roc_auc")
    fpr, _ = _mean_std(o.fold_metrics, "fpr")
    fnr, _ = _mean_std(o.fold_metrics, "fnr")
    assert acc is not None and f1 is not None
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


def _group_scores(ev: _EvalSet, outcomes: list[_Outcome], classes: list[str], pos: int | None,
                  group_by: Sequence[str]) -> dict[str, GroupScores]:
    members: dict[tuple[str, str], list[int]] = {}
    for i in range(len(ev.codes)):
        if "label" in group_by:
            members.setdefault(("label", ev.raw_labels[i]), []).append(i)
        if "category" in group_by and ev.categories is not None and ev.categories[i] is not None:
            members.setdefault(("category", str(ev.categories[i])), []).append(i)
        if "family" in group_by and ev.families is not None and ev.families[i] is not None:
            members.setdefault(("family", f"{ev.raw_labels[i]}/{ev.families[i]}"), []).append(i)
    out = {}
    for (by, name), rows in sorted(members.items()):
        idx = np.array(rows)
        truth = ev.codes[idx]
        acc, rate = {}, {}
        for o in outcomes:
            assert o.pred is not None
            pred = o.pred[idx]
            acc[o.name] = [float(v) for v in (pred == truth[:, None]).mean(0)]
            if pos is not None:
                rate[o.name] = [float(v) for v in (pred == pos).mean(0)]
        counts = {classes[c]: int(k) for c, k in enumerate(np.bincount(truth, minlength=len(classes))) if k}
        out[f"{by}:{name}"] = GroupScores(by=by, name=name, n=len(idx), classes=counts,  # type: ignore[arg-type]
                                          accuracy=acc, positive_rate=rate if pos is not None else None)
    return out


def _eval_set(states: Any, labels: Any, classes: list[str], mapping: Mapping[str, str], what: str,
              shape: tuple[int, int] | None) -> tuple[_EvalSet, HiddenStates | None]:
    x, hs = _features(states, what)
    if shape is not None and tuple(x.shape[1:]) != shape:
        raise InputError(f"{what} have shape {tuple(x.shape)}, but the probes were fitted on states with "
                         f"{shape[0]} layers and {shape[1]} features; use states of the same model.")
    raw = _labels(labels, hs, x.shape[0], what)
    mapped = [mapping.get(v, v) for v in raw]
    unknown = sorted(set(mapped) - set(classes))
    if unknown:
        raise InputError(f"{what} have labels {unknown} the probes were not trained on (classes {classes}); "
                         "pass label_map={label: trained_class}.")
    index = {c: i for i, c in enumerate(classes)}
    ev = _EvalSet(x=x, codes=np.array([index[v] for v in mapped], dtype=np.int64), raw_labels=raw,
                  categories=list(hs.categories) if hs is not None and hs.categories is not None else None,
                  families=list(hs.families) if hs is not None and hs.families is not None else None)
    return ev, hs


def _label_map(label_map: Mapping[str, str] | None, classes: list[str]) -> dict[str, str]:
    mapping = {k: v for k, v in DEFAULT_LABEL_MAP.items() if v in classes and k not in classes}
    if label_map is not None:
        if not isinstance(label_map, Mapping):
            raise InputError(f"label_map must be a dict {{label: class}}, got {type(label_map).__name__}.")
        mapping |= {str(k): str(v) for k, v in label_map.items()}
    return mapping


def _check_group_by(group_by: Sequence[str] | None) -> tuple[str, ...]:
    if group_by is None:
        return ()
    items = (group_by,) if isinstance(group_by, str) else tuple(group_by)
    bad = [g for g in items if g not in GROUP_FIELDS]
    if bad:
        raise InputError(f"group_by entries must be among {list(GROUP_FIELDS)}, got {bad}.")
    return items


def _check_classifiers(classifiers: Any) -> list[Any]:
    items = [classifiers] if isinstance(classifiers, str) or hasattr(classifiers, "fit") else list(classifiers)
    if not items:
        raise InputError(f"classifiers is empty; pass some of {list(CLASSIFIERS)}.")
    names = [_name_of(c) for c in items]
    if len(set(names)) != len(names):
        raise InputError(f"classifiers has repeated names {names}; pass each classifier once.")
    return items


def probe(
    states: Any,
    labels: Any = None,
    *,
    classifiers: Sequence[Any] = CLASSIFIERS,
    layers: Sequence[int] | None = None,
    test_size: float = 0.3,
    cv: int | Literal["category"] | None = None,
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
            with categories): every prompt is scored by a probe that never saw its category.
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
        >>> report = probe(train_states, test=test_states).transfer(jailbreak_states)
        >>> report.plot().savefig("probe.png")
    """
    start = time.perf_counter()
    items = _check_classifiers(classifiers)
    if preset not in (None, "seed"):
        raise InputError(f"preset must be None or 'seed', got {preset!r}.")
    if engine not in ("torch", "sklearn"):
        raise InputError(f"engine must be 'torch' or 'sklearn', got {engine!r}.")
    _check_number("threshold", threshold, low=0, high=1, low_open=True)
    _check_number("random_state", random_state, low=0, integer=True)
    if cv is not None and test is not None:
        raise InputError("Pass either cv= or test=, not both: test= already fixes what is held out.")
    if cv is not None and cv != "category":
        _check_number("cv", cv, low=2, integer=True)
    if cv is None and test is None:
        _check_number("test_size", test_size, low=0, high=1, low_open=True)
        if test_size >= 1:
            raise InputError(f"test_size must be between 0 and 1 (exclusive), got {test_size}.")
    if preset == "seed":
        if cv is not None:
            raise InputError("preset='seed' reproduces the seed's single hold-out split; drop cv= (or drop the preset).")
        if test is None and test_size != SEED_TEST_SIZE:
            raise InputError(f"preset='seed' uses the seed's test_size={SEED_TEST_SIZE}; drop test_size=.")
    x, hs = _features(states, "states")
    raw = _labels(labels, hs, x.shape[0], "states")
    _require_classes(raw, "The labels")
    classes = _class_order(raw, positive)
    pos_name = _positive_class(classes, positive)
    pos = classes.index(pos_name) if pos_name is not None else None
    layer_list = _layer_list(layers, x.shape[1])
    index = {c: i for i, c in enumerate(classes)}
    codes = np.array([index[v] for v in raw], dtype=np.int64)
    templates = [LayerProbe(c, layers=layer_list, engine=engine, preset=preset, positive=positive,
                            random_state=random_state) for c in items]
    for t in templates:
        t._check_params()
    n = len(raw)
    counts = np.bincount(codes, minlength=len(classes))
    mapping: dict[str, str] = {}
    test_meta = None
    pooled = False
    if test is not None:
        evaluation: Evaluation = "transfer"
        mapping = _label_map(label_map, classes)
        ev, hs_test = _eval_set(test, test_labels, classes, mapping, "test", (x.shape[1], x.shape[2]))
        test_meta = hs_test.meta if hs_test is not None else None
        folds = [(np.arange(n), np.arange(len(ev.codes)))]
        groups = _check_group_by(("label", "family") if group_by is None else group_by)
    else:
        ev = _EvalSet(x=x, codes=codes, raw_labels=raw,
                      categories=list(hs.categories) if hs is not None and hs.categories is not None else None,
                      families=list(hs.families) if hs is not None and hs.families is not None else None)
        if cv == "category":
            evaluation, pooled = "category", True
            folds = _category_folds(ev, classes)
            groups = _check_group_by(("category",) if group_by is None else group_by)
        elif cv is not None:
            evaluation = "cv"
            k = int(cv)
            if counts.min() < k:
                small = classes[int(counts.argmin())]
                raise InputError(f"cv={k} needs at least {k} prompts of each class; {small!r} has {int(counts.min())}. "
                                 "Use a smaller cv or add prompts.")
            splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=random_state)
            folds = [(tr, te) for tr, te in splitter.split(np.zeros(n), codes)]
            groups = _check_group_by(group_by)
        else:
            evaluation = "holdout"
            folds = [_holdout(codes, classes, counts, test_size, random_state, seed=preset == "seed")]
            groups = _check_group_by(group_by)
    n_scored = len(ev.codes) if evaluation != "holdout" else len(folds[0][1])
    per_fit = [len(layer_list) if t._resolved_engine() == "sklearn" else 1 for t in templates]
    outcomes = []
    with tqdm(total=sum(per_fit) * len(folds), desc="probe", unit="fit", disable=not progress) as bar:
        for template in templates:
            o = _Outcome(name=_name_of(template.classifier))
            pred_all = np.full((len(ev.codes), len(layer_list)), -1, dtype=np.int64)
            score_all = np.zeros((len(ev.codes), len(layer_list), len(classes)))
            for tr, te in folds:
                fitted = clone(template)._fit(x[torch.from_numpy(tr)], codes[tr], classes, layer_list, bar)
                o.seconds += fitted.fit_seconds_
                pred, scores = fitted._predict(ev.x[torch.from_numpy(te)])
                pred_all[te], score_all[te] = pred, scores
                if not pooled:
                    o.fold_metrics.append(_layer_metrics(ev.codes[te], pred, scores, len(classes), pos))
                if len(folds) == 1:
                    o.probe = fitted
            scored = np.concatenate([te for _, te in folds])
            if pooled:
                o.fold_metrics.append(_layer_metrics(ev.codes[scored], pred_all[scored], score_all[scored],
                                                     len(classes), pos))
            o.pred = pred_all
            outcomes.append(o)
    scored_idx = np.unique(np.concatenate([te for _, te in folds]))
    sub = _EvalSet(x=ev.x, codes=ev.codes[scored_idx], raw_labels=[ev.raw_labels[i] for i in scored_idx],
                   categories=[ev.categories[i] for i in scored_idx] if ev.categories is not None else None,
                   families=[ev.families[i] for i in scored_idx] if ev.families is not None else None)
    for o in outcomes:
        assert o.pred is not None
        o.pred = o.pred[scored_idx]
    report = ProbeReport(
        evaluation=evaluation,
        layers=layer_list,
        n_layers=x.shape[1] - 1,
        classes=classes,
        positive=pos_name,
        classifiers=[o.name for o in outcomes],
        scores={o.name: _classifier_scores(o, classes, layer_list, threshold) for o in outcomes},
        groups=_group_scores(sub, outcomes, classes, pos, groups),
        threshold=threshold,
        n_train=round(float(np.mean([len(tr) for tr, _ in folds]))),
        n_test=n_scored,
        folds=len(folds) if evaluation in ("cv", "category") else None,
        test_size=test_size if evaluation == "holdout" else None,
        random_state=SEED_RANDOM_STATE if preset == "seed" else random_state,
        engine="sklearn" if preset == "seed" else engine,
        preset=preset,
        label_map=mapping,
        fit_seconds=sum(o.seconds for o in outcomes),
        meta=hs.meta if hs is not None else None,
        test_meta=test_meta,
    )
    report._probes = {o.name: o.probe for o in outcomes if o.probe is not None}
    log.info("probe: %s in %.1f s\n%s", evaluation, time.perf_counter() - start, report.summary())
    return report


def _holdout(codes: IntArray, classes: list[str], counts: IntArray, test_size: float, random_state: int,
             *, seed: bool) -> tuple[IntArray, IntArray]:
    n = len(codes)
    idx = np.arange(n)
    if seed:
        # The seed: unstratified, random_state=42, over the prompts in the order given.
        tr, te = train_test_split(idx, test_size=SEED_TEST_SIZE, random_state=SEED_RANDOM_STATE)
        if len(set(codes[tr].tolist())) < len(classes):
            raise InputError("The seed's unstratified split left a class out of the training part; "
                             "add prompts or drop preset='seed'.")
        return np.asarray(tr), np.asarray(te)
    n_test = math.ceil(test_size * n)
    if counts.min() < 2 or n_test < len(classes) or n - n_test < len(classes):
        small = classes[int(counts.argmin())]
        raise InputError(
            f"Too few prompts for a stratified split with test_size={test_size}: {n} prompts, {len(classes)} classes, "
            f"{small!r} has {int(counts.min())}. Each class needs at least 2 prompts, and each part one of each class."
        )
    tr, te = train_test_split(idx, test_size=test_size, random_state=random_state, stratify=codes)
    return np.asarray(tr), np.asarray(te)


def _category_folds(ev: _EvalSet, classes: list[str]) -> list[tuple[IntArray, IntArray]]:
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
    if isinstance(probes, ProbeReport):
        probes = probes.probes
    fitted = {_name_of(probes.classifier): probes} if isinstance(probes, LayerProbe) else dict(probes)
    if not fitted:
        raise InputError("probes is empty; pass a fitted LayerProbe or a dict of them.")
    for p in fitted.values():
        if not isinstance(p, LayerProbe):
            raise InputError(f"probes must be LayerProbe objects, got {type(p).__name__}.")
        p._check_fitted()
    first = next(iter(fitted.values()))
    classes = [str(c) for c in first.classes_]
    for name, p in fitted.items():
        if [str(c) for c in p.classes_] != classes or p.layers_ != first.layers_:
            raise InputError(f"Probe {name!r} has other classes or layers than the first; transfer them separately.")
    _check_number("threshold", threshold, low=0, high=1, low_open=True)
    groups = _check_group_by(group_by)
    mapping = _label_map(label_map, classes)
    ev, hs = _eval_set(states, labels, classes, mapping, "states", (first.n_layers_in_, first.n_features_in_))
    pos_name = first.positive_
    pos = classes.index(pos_name) if pos_name is not None else None
    outcomes = []
    for name, p in tqdm(fitted.items(), desc="transfer", unit="probe", disable=not progress):
        pred, scores = p._predict(ev.x)
        outcomes.append(_Outcome(name=name, fold_metrics=[_layer_metrics(ev.codes, pred, scores, len(classes), pos)],
                                 pred=pred, seconds=p.fit_seconds_, probe=p))
    report = ProbeReport(
        evaluation="transfer",
        layers=list(first.layers_),
        n_layers=first.n_layers_in_ - 1,
        classes=classes,
        positive=pos_name,
        classifiers=list(fitted),
        scores={o.name: _classifier_scores(o, classes, first.layers_, threshold) for o in outcomes},
        groups=_group_scores(ev, outcomes, classes, pos, groups),
        threshold=threshold,
        n_train=first.n_samples_fit_,
        n_test=len(ev.codes),
        random_state=int(first.random_state),
        engine=first._resolved_engine(),
        preset=first.preset,
        label_map=mapping,
        fit_seconds=sum(p.fit_seconds_ for p in fitted.values()),
        test_meta=hs.meta if hs is not None else None,
    )
    report._probes = dict(fitted)
    log.info("probe_transfer: %d prompts in %.1f s", len(ev.codes), time.perf_counter() - start)
    return report
