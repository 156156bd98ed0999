"""The numerical engines behind a probe: standardisation, exact Newton fits, batched MLPs, sklearn glue.

The torch engine fits each layer's linear probe to the optimum of sklearn's objective (Newton's
method, in the Gram matrix or with the explicit Hessian) and every layer's MLP at once (Adam over
``torch.bmm``); the sklearn engine clones real estimators. Everything here trusts its inputs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC

from ..errors import InputError
from .inputs import FloatArray

CLASSIFIERS = ("svm", "mlp", "logreg")
"""Built-in classifier names: linear SVM, one-hidden-layer MLP, logistic regression."""
SEED_TEST_SIZE = 0.3
SEED_RANDOM_STATE = 42
"""The seed code's split and MLP seed (``preset="seed"``)."""

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


# ---------------------------------------------------------------------------- torch engine


def standardise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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


def fit_linear(z: torch.Tensor, y: torch.Tensor, n_classes: int, *, loss: str, c: float,
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


def mlp_init(n_layers: int, d: int, hidden: int, k_out: int, gen: torch.Generator) -> list[torch.Tensor]:
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


def mlp_forward(z: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                 b2: torch.Tensor) -> torch.Tensor:
    """(L, n, K') logits of every layer's relu MLP on (L, n, D) features."""
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


def fit_mlp(z: torch.Tensor, y: torch.Tensor, init: list[torch.Tensor], *, alpha: float, lr: float,
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
            data = _log_loss_per_layer(mlp_forward(zb, *pa), yb)
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


def sklearn_template(name: str, *, seed: bool, random_state: int) -> Any:
    """A fresh sklearn estimator for a built-in name (``seed``: the paper code's exact settings)."""
    rs = SEED_RANDOM_STATE if seed else random_state
    if name == "svm":
        return SVC(kernel="linear")
    if name == "mlp":
        return make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(100,), max_iter=300, alpha=0.01,
                                                             solver="adam", learning_rate_init=0.01, random_state=rs))
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=rs))


def sklearn_scores(est: Any, x: npt.NDArray[Any], n_classes: int) -> FloatArray:
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


def export_sklearn(est: Any, n_classes: int) -> tuple[str, str, dict[str, torch.Tensor]]:
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


def name_of(classifier: Any) -> str:
    """A classifier's name in reports: the built-in name, or the final estimator's class name."""
    if isinstance(classifier, str):
        return classifier
    final = classifier.steps[-1][1] if isinstance(classifier, Pipeline) else classifier
    return type(final).__name__

