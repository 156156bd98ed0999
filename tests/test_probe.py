"""Probes: seed parity with sklearn run directly, fast probes vs sklearn, evaluation modes, errors, saving.

Every number is checked against sklearn called here on the same features (or against plain
numpy over the probe's predictions), never against the probe's own report.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix
from sklearn.model_selection import (
    LeaveOneGroupOut,
    StratifiedKFold,
    cross_val_predict,
    cross_val_score,
    train_test_split,
)
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC
from threadpoolctl import threadpool_limits

import ihs_sight as ihs
from ihs_sight.errors import InputError
from ihs_sight.probe import LayerProbe, ProbeReport, probe

SPREAD = [0, 1, 2, 5, 10, 15, 20, 25, 30]
"""Layers for the save/load checks (every layer would only repeat the same comparison)."""
FAST_VS_SKLEARN_TOL = 0.1
"""Largest per-layer accuracy gap (4 of 40 test prompts) between the torch logreg and sklearn's."""
FAST_VS_SKLEARN_MEAN_TOL = 0.03
"""Largest gap of the mean accuracy over layers."""


def _seed_features(states: ihs.HiddenStates, layer: int) -> np.ndarray:
    # Built the way the seed code did: one flattened vector per prompt, stacked by np.array.
    return np.array([row[layer].numpy().flatten() for row in states.states])


def _seed_labels(states: ihs.HiddenStates) -> np.ndarray:
    # The seed labelled its datasets by list position: normal = 0, malicious = 1.
    assert states.labels is not None
    return np.array([1 if label == "malicious" else 0 for label in states.labels])


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch and BLAS thread: on the shared 2-core CPU, two threads make small fits many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def train_states(small_states: tuple[ihs.HiddenStates, ihs.HiddenStates]) -> ihs.HiddenStates:
    return small_states[0]


@pytest.fixture(scope="module")
def test_states(small_states: tuple[ihs.HiddenStates, ihs.HiddenStates]) -> ihs.HiddenStates:
    return small_states[1]


@pytest.fixture(scope="module")
def held_out(train_states: ihs.HiddenStates, test_states: ihs.HiddenStates) -> ProbeReport:
    return probe(train_states, test=test_states, classifiers=("svm", "mlp", "logreg"), progress=False)


@pytest.fixture(scope="module")
def transfer_states(model: ihs.Model, data: ihs.PromptSet, states_cache: Path) -> ihs.HiddenStates:
    """One jailbreak variant and one wrapped normal prompt per wrapper family."""
    picked = []
    for part in (data.jailbreak, data.wrapped_normal):
        seen: set[str | None] = set()
        for p in part:
            if p.family not in seen:
                seen.add(p.family)
                picked.append(p)
    return ihs.extract(model, ihs.PromptSet(items=picked), cache=states_cache, progress=False)


# ---------------------------------------------------------------------------- seed parity


def test_probe_seed_preset_matches_sklearn_run_directly(train_states: ihs.HiddenStates) -> None:
    report = probe(train_states, classifiers=("svm", "mlp"), preset="seed", progress=False)
    y = _seed_labels(train_states)
    svm_ref, mlp_ref = [], []
    for layer in range(train_states.states.shape[1]):
        x = _seed_features(train_states, layer)
        x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=42)
        svc = SVC(kernel="linear").fit(x_train, y_train)
        svm_ref.append(float((svc.predict(x_test) == y_test).mean()))
        scaler = StandardScaler()
        net = MLPClassifier(hidden_layer_sizes=(100,), max_iter=300, alpha=0.01, solver="adam", verbose=0,
                            random_state=42, learning_rate_init=0.01)
        net.fit(scaler.fit_transform(x_train), y_train)
        mlp_ref.append(float((net.predict(scaler.transform(x_test)) == y_test).mean()))
    assert report.scores["svm"].accuracy == svm_ref, "seed SVM accuracies drifted from sklearn run directly"
    assert report.scores["mlp"].accuracy == mlp_ref, "seed MLP accuracies drifted from sklearn run directly"
    assert report.preset == "seed" and report.random_state == 42 and report.n_test == len(x_test)


# ---------------------------------------------------------------------------- fast engine


def test_layer_probe_fast_logreg_agrees_with_sklearn(train_states: ihs.HiddenStates,
                                                     test_states: ihs.HiddenStates) -> None:
    fast = LayerProbe("logreg").fit(train_states).layer_scores(test_states)
    ref = []
    for layer in range(train_states.states.shape[1]):
        est = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        est.fit(train_states.layer(layer).numpy(), train_states.labels)
        ref.append(est.score(test_states.layer(layer).numpy(), test_states.labels))
    gaps = np.abs(np.array(fast) - np.array(ref))
    assert gaps.max() <= FAST_VS_SKLEARN_TOL, f"layer {int(gaps.argmax())}: torch {fast} vs sklearn {ref}"
    assert abs(np.mean(fast) - np.mean(ref)) <= FAST_VS_SKLEARN_MEAN_TOL


@pytest.mark.parametrize("name", ["logreg", "svm"])
def test_layer_probe_linear_layers_are_fitted_independently(name: str, train_states: ihs.HiddenStates,
                                                            test_states: ihs.HiddenStates) -> None:
    # default and default-aligned share layers 0-6 (the adapter changes blocks 7+ only): each
    # layer's probe must depend on its own layer's features only, never on the other layers'.
    x = train_states.states.clone()
    noisy = x.clone()
    gen = torch.Generator().manual_seed(1)
    noisy[:, 7:] = torch.randn(noisy[:, 7:].shape, generator=gen) * x[:, 7:].std()
    labels = list(train_states.labels or [])
    full = LayerProbe(name).fit(x, labels)
    other = LayerProbe(name).fit(noisy, labels)
    alone = LayerProbe(name, layers=[3]).fit(x, labels)
    for fitted, rows, ref in ((other, slice(0, 7), slice(0, 7)), (alone, slice(0, 1), slice(3, 4))):
        np.testing.assert_allclose(fitted.coef_[rows], full.coef_[ref], rtol=0, atol=1e-6)
        np.testing.assert_allclose(fitted.intercept_[rows], full.intercept_[ref], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(other.predict(test_states)[:, :7], full.predict(test_states)[:, :7])
    np.testing.assert_array_equal(alone.predict(test_states)[:, 0], full.predict(test_states)[:, 3])


def _margins(fitted: LayerProbe, x: torch.Tensor, j: int) -> np.ndarray:
    """(n, K') margins of the torch linear probe's ``j``-th layer on states ``x``, from its public weights."""
    layer = fitted.layers_[j]
    z = (x[:, layer].double() - fitted.mean_[j].double()) / fitted.scale_[j].double()
    return (z @ fitted.coef_[j].double() + fitted.intercept_[j].double()).numpy()


@pytest.mark.parametrize("C", [0.05, 1.0])
def test_layer_probe_logreg_reaches_sklearn_optimum(C: float, train_states: ihs.HiddenStates,
                                                    test_states: ihs.HiddenStates) -> None:
    # The same objective (C * sum(log-loss) + ||w||^2 / 2, intercept free) solved to convergence
    # by sklearn on the same standardised features: the same probabilities on unseen prompts.
    layers = [2, 9, 20]
    fitted = LayerProbe("logreg", layers=layers, C=C).fit(train_states)
    assert max(fitted.n_iter_) < 100, "Newton should converge long before max_iter"
    ours = fitted.predict_proba(test_states)
    for j, layer in enumerate(layers):
        ref = make_pipeline(StandardScaler(), LogisticRegression(C=C, tol=1e-10, max_iter=10000))
        ref.fit(train_states.layer(layer).double().numpy(), train_states.labels)
        cols = [list(ref.classes_).index(c) for c in fitted.classes_]
        proba = ref.predict_proba(test_states.layer(layer).double().numpy())[:, cols]
        np.testing.assert_allclose(ours[:, j], proba, rtol=0, atol=1e-4, err_msg=f"layer {layer}")


def _check_squared_hinge_optimum(fitted: LayerProbe, j: int, k: int, x: torch.Tensor, labels: list[str],
                                 ref: Any, ref_k: int) -> None:
    """Column ``k`` of ``fitted``'s layer ``j`` vs column ``ref_k`` of a StandardScaler + LinearSVC pipeline.

    LinearSVC penalises its intercept as a feature of value ``intercept_scaling`` (1000 here:
    a negligible penalty, and liblinear still converges). Both minimise C * sum(squared hinge)
    + ||w||^2 / 2, so ours must reach liblinear's objective (and not exceed it: it is the optimum)
    with nearly the same margins.
    """
    positive = fitted.classes_[k] if fitted.coef_.shape[2] > 1 else fitted.classes_[1]
    sign = -1.0 if len(ref[1].classes_) == 2 and ref[1].classes_[1] != positive else 1.0
    feats = x[:, fitted.layers_[j]].double().numpy()
    z = ref[0].transform(feats)
    y = np.where(np.array(labels) == positive, 1.0, -1.0)
    coef = np.atleast_2d(ref[1].coef_)[ref_k]
    w_ref, b_ref = sign * coef, sign * np.atleast_1d(ref[1].intercept_)[ref_k]
    w, b = fitted.coef_[j, :, k].double().numpy(), float(fitted.intercept_[j, k])
    c = fitted.C

    def objective(w: np.ndarray, b: float) -> float:
        return float(c * (np.maximum(0.0, 1 - y * (z @ w + b)) ** 2).sum() + 0.5 * w @ w)

    ours, theirs = objective(w, b), objective(w_ref, b_ref)
    assert ours <= theirs * (1 + 1e-9) and ours == pytest.approx(theirs, rel=1e-7), (positive, ours, theirs)
    np.testing.assert_allclose(_margins(fitted, x, j)[:, k], z @ w_ref + b_ref, rtol=0, atol=1e-3)


def _liblinear(feats: np.ndarray, labels: list[str], c: float) -> Any:
    return make_pipeline(StandardScaler(), LinearSVC(C=c, dual=False, tol=1e-12, max_iter=100000,
                                                     intercept_scaling=1000)).fit(feats, labels)


def test_layer_probe_svm_reaches_liblinear_optimum(train_states: ihs.HiddenStates) -> None:
    layers = [2, 9, 20]
    fitted = LayerProbe("svm", layers=layers).fit(train_states)
    labels = list(train_states.labels or [])
    for j, layer in enumerate(layers):
        ref = _liblinear(train_states.layer(layer).double().numpy(), labels, fitted.C)
        _check_squared_hinge_optimum(fitted, j, 0, train_states.states, labels, ref, 0)


def test_layer_probe_multiclass_linear_reaches_sklearn_optimum(train_states: ihs.HiddenStates,
                                                               transfer_states: ihs.HiddenStates) -> None:
    # Three classes: logreg is multinomial (as LogisticRegression), svm one-vs-rest (as LinearSVC).
    x = torch.cat([train_states.states, transfer_states.states])
    labels = list(train_states.labels or []) + list(transfer_states.labels or [])
    layers = [5, 12]
    logreg = LayerProbe("logreg", layers=layers).fit(x, labels)
    svm = LayerProbe("svm", layers=layers).fit(x, labels)
    assert list(logreg.classes_) == ["normal", "malicious", "jailbreak"]
    for j, layer in enumerate(layers):
        feats = x[:, layer].double().numpy()
        ref = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, tol=1e-10, max_iter=10000)).fit(feats, labels)
        cols = [list(ref.classes_).index(c) for c in logreg.classes_]
        np.testing.assert_allclose(logreg.predict_proba(x)[:, j], ref.predict_proba(feats)[:, cols],
                                   rtol=0, atol=1e-4, err_msg=f"logreg layer {layer}")
        ovr = _liblinear(feats, labels, svm.C)
        for k, cls in enumerate(svm.classes_):
            _check_squared_hinge_optimum(svm, j, k, x, labels, ovr, list(ovr.classes_).index(cls))


@pytest.mark.parametrize("name", ["logreg", "svm"])
def test_layer_probe_linear_gram_and_hessian_newton_agree(name: str, train_states: ihs.HiddenStates,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # Binary probes take the n x n Gram-matrix Newton unless there are many more prompts than
    # features; forcing the explicit-Hessian Newton must give the same optimum.
    module = importlib.import_module("ihs_sight.probe.solvers")
    gram = LayerProbe(name, layers=[1, 9, 24]).fit(train_states)
    monkeypatch.setattr(module, "NEWTON_KERNEL_RATIO", 0.0)
    hessian = LayerProbe(name, layers=[1, 9, 24]).fit(train_states)
    np.testing.assert_allclose(hessian.coef_, gram.coef_, rtol=0, atol=1e-6)
    np.testing.assert_allclose(hessian.intercept_, gram.intercept_, rtol=0, atol=1e-6)


def test_layer_probe_linear_max_iter_is_a_cap(train_states: ihs.HiddenStates,
                                               caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ihs_sight.probe"):
        capped = LayerProbe("logreg", layers=[9, 20], max_iter=2).fit(train_states)
    assert capped.n_iter_ == [2, 2] and "2 of 2 layers did not converge" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ihs_sight.probe"):
        free = LayerProbe("logreg", layers=[9, 20]).fit(train_states)
    assert all(2 < n < 100 for n in free.n_iter_) and "did not converge" not in caplog.text


def test_layer_probe_fit_is_deterministic_and_clonable(train_states: ihs.HiddenStates) -> None:
    a = LayerProbe("mlp", layers=[3, 9], random_state=7).fit(train_states)
    b = clone(a).fit(train_states)
    assert b.get_params() == a.get_params() and b.layers_ == [3, 9]
    assert all(torch.equal(u, v) for u, v in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_))
    proba = a.predict_proba(train_states)
    assert proba.shape == (len(train_states), 2, 2)
    np.testing.assert_allclose(proba.sum(-1), 1.0, rtol=1e-12)
    assert list(a.classes_) == ["normal", "malicious"] and a.positive_ == "malicious"


def test_probe_multiclass_and_held_out_report(held_out: ProbeReport, train_states: ihs.HiddenStates,
                                              transfer_states: ihs.HiddenStates) -> None:
    assert held_out.evaluation == "transfer" and held_out.positive == "malicious"
    assert held_out.layers == list(range(train_states.n_layers + 1))
    for s in held_out.scores.values():
        assert s.roc_auc is not None and s.fpr is not None and s.fnr is not None
        assert s.first_layer is None or s.accuracy[s.first_layer] >= held_out.threshold
    x = torch.cat([train_states.states, transfer_states.states])
    labels = list(train_states.labels or []) + list(transfer_states.labels or [])
    report = probe(x, labels, classifiers=("logreg",), layers=[0, 5, 10], progress=False)
    assert report.classes == ["normal", "malicious", "jailbreak"] and report.positive is None
    assert report.scores["logreg"].roc_auc is None and set(report.scores["logreg"].per_class) == set(report.classes)


# ---------------------------------------------------------------------------- evaluation modes


def test_probe_cv_matches_sklearn_cross_val_score(train_states: ihs.HiddenStates) -> None:
    report = probe(train_states, classifiers=("logreg",), engine="sklearn", cv=3, layers=[0, 4, 12, 24],
                   progress=False)
    y = _seed_labels(train_states)
    s = report.scores["logreg"]
    assert report.evaluation == "cv" and report.folds == 3 and s.accuracy_std is not None
    for j, layer in enumerate(report.layers):
        est = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=0))
        folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=0)
        ref = cross_val_score(est, train_states.layer(layer).numpy(), y, cv=folds)
        assert s.accuracy[j] == pytest.approx(ref.mean(), abs=1e-12)
        assert s.accuracy_std[j] == pytest.approx(ref.std(), abs=1e-12)


def test_probe_leave_one_category_out_matches_sklearn(train_states: ihs.HiddenStates) -> None:
    report = probe(train_states, classifiers=("logreg",), engine="sklearn", cv="category", layers=[2, 16],
                   progress=False)
    y = _seed_labels(train_states)
    cats = np.array(train_states.categories)
    s = report.scores["logreg"]
    assert report.evaluation == "category" and report.folds == len(set(cats)) and report.n_test == len(y)
    for j, layer in enumerate(report.layers):
        est = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=0))
        pred = cross_val_predict(est, train_states.layer(layer).numpy(), y, groups=cats, cv=LeaveOneGroupOut())
        tn, fp, fn, tp = confusion_matrix(y, pred).ravel()
        assert s.accuracy[j] == pytest.approx((pred == y).mean(), abs=1e-12)
        assert s.fpr is not None and s.fpr[j] == pytest.approx(fp / (fp + tn), abs=1e-12)
        assert s.fnr is not None and s.fnr[j] == pytest.approx(fn / (fn + tp), abs=1e-12)
        for cat in set(cats):
            group = report.groups[f"category:{cat}"]
            assert group.accuracy["logreg"][j] == pytest.approx((pred == y)[cats == cat].mean(), abs=1e-12)


def test_probe_transfer_reports_jailbreak_families_and_wrapped_fpr(held_out: ProbeReport,
                                                                    transfer_states: ihs.HiddenStates) -> None:
    report = held_out.transfer(transfer_states, progress=False)
    assert report.evaluation == "transfer" and report.label_map == {"jailbreak": "malicious"}
    families = {p for p in (transfer_states.families or [])}
    assert {k for k in report.groups if k.startswith("family:jailbreak/")} == {f"family:jailbreak/{f}" for f in families}
    assert {k for k in report.groups if k.startswith("family:normal/")} == {f"family:normal/{f}" for f in families}
    labels = np.array(transfer_states.labels)
    for name, fitted in held_out.probes.items():
        flagged = fitted.predict(transfer_states) == "malicious"  # (n_prompts, n_layers)
        rate = report.groups["label:jailbreak"].positive_rate
        fpr_group = report.groups["label:normal"].positive_rate
        assert rate is not None and fpr_group is not None
        np.testing.assert_allclose(rate[name], flagged[labels == "jailbreak"].mean(0), atol=1e-12)
        np.testing.assert_allclose(fpr_group[name], flagged[labels == "normal"].mean(0), atol=1e-12)
        np.testing.assert_allclose(report.scores[name].fpr or [], flagged[labels == "normal"].mean(0), atol=1e-12)
        np.testing.assert_allclose(report.scores[name].fnr or [], 1 - flagged[labels == "jailbreak"].mean(0),
                                   atol=1e-12)


# ---------------------------------------------------------------------------- bad input


def _toy(n: int = 12, layers: int = 3, d: int = 4) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, layers, d)).astype(np.float32), ["normal", "malicious"] * (n // 2)


def test_probe_rejects_single_class() -> None:
    x, _ = _toy()
    with pytest.raises(InputError, match="single class"):
        probe(x, ["normal"] * len(x), progress=False)


def test_probe_rejects_mismatched_lengths() -> None:
    x, labels = _toy()
    with pytest.raises(InputError, match="11 labels for 12 prompts"):
        probe(x, labels[:-1], progress=False)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_probe_rejects_non_finite_features(bad: float) -> None:
    x, labels = _toy()
    x[5, 2, 1] = bad
    with pytest.raises(InputError, match="prompt 5, layer 2"):
        probe(x, labels, progress=False)


def test_probe_rejects_too_few_samples_for_folds() -> None:
    x, labels = _toy(n=8)
    with pytest.raises(InputError, match="cv=5 needs at least 5 prompts of each class"):
        probe(x, labels, cv=5, progress=False)
    with pytest.raises(InputError, match="Too few prompts"):
        probe(x[:3], ["normal", "malicious", "normal"], progress=False)


def test_probe_rejects_bad_arguments() -> None:
    x, labels = _toy()
    with pytest.raises(InputError, match="out of range"):
        probe(x, labels, layers=[3], progress=False)
    with pytest.raises(InputError, match="Unknown classifier"):
        probe(x, labels, classifiers=("forest",), progress=False)
    with pytest.raises(InputError, match="either cv= or test="):
        probe(x, labels, cv=2, test=x, progress=False)
    with pytest.raises(InputError, match="drop cv="):
        probe(x, labels, cv=2, preset="seed", progress=False)
    with pytest.raises(InputError, match="carry no labels"):
        probe(x, progress=False)


# ---------------------------------------------------------------------------- saving and results


def test_layer_probe_save_load_round_trip(train_states: ihs.HiddenStates, test_states: ihs.HiddenStates,
                                          tmp_path: Path) -> None:
    for name in ("svm", "mlp"):
        fitted = LayerProbe(name, layers=SPREAD).fit(train_states)
        loaded = LayerProbe.load(fitted.save(tmp_path / name))
        np.testing.assert_array_equal(loaded.predict_proba(test_states), fitted.predict_proba(test_states))
        np.testing.assert_array_equal(loaded.predict(test_states), fitted.predict(test_states))
    seed_mlp = LayerProbe("mlp", preset="seed", layers=[4, 20]).fit(train_states)
    loaded = LayerProbe.load(seed_mlp.save(tmp_path / "seed_mlp"))
    np.testing.assert_array_equal(loaded.predict(test_states), seed_mlp.predict(test_states))
    np.testing.assert_allclose(loaded.predict_proba(test_states), seed_mlp.predict_proba(test_states), atol=1e-5)


def test_layer_probe_load_rejects_tampered_files(train_states: ihs.HiddenStates, tmp_path: Path) -> None:
    stem = LayerProbe("logreg", layers=[1, 2]).fit(train_states).save(tmp_path / "p")
    meta_path = stem.with_suffix(".json")
    original = json.loads(meta_path.read_text())
    for key, value, message in [("format", "pickle", "not an ihs-sight probe"), ("version", 99, "version 99"),
                                ("layers", [1, 2, 3], "not a consistent")]:
        meta_path.write_text(json.dumps(original | {key: value}))
        with pytest.raises(InputError, match=message):
            LayerProbe.load(stem)
    meta_path.write_text(json.dumps(original))
    assert LayerProbe.load(stem).layers_ == [1, 2]
    with pytest.raises(InputError, match="can be saved without pickle"):
        LayerProbe(make_pipeline(StandardScaler(), SVC(kernel="rbf")), layers=[1]).fit(train_states).save(tmp_path / "r")


def test_probe_report_json_round_trip(held_out: ProbeReport) -> None:
    again = ProbeReport.model_validate_json(held_out.model_dump_json())
    assert again == held_out and again.best_layer == held_out.best_layer
    with pytest.raises(InputError, match="holds no fitted probes"):
        _ = again.probes


def test_probe_report_plot_writes_png(held_out: ProbeReport, transfer_states: ihs.HiddenStates,
                                      output_dir: Path) -> None:
    fig = held_out.plot()
    assert isinstance(fig, Figure)
    assert "0 = embeddings" in fig.axes[0].get_xlabel()
    fig.savefig(output_dir / "probe_accuracy.png")
    families = held_out.transfer(transfer_states, progress=False).plot("positive_rate", group_by="family")
    families.savefig(output_dir / "probe_transfer_families.png")
    assert (output_dir / "probe_accuracy.png").stat().st_size > 10_000
    assert (output_dir / "probe_transfer_families.png").stat().st_size > 10_000


# ---------------------------------------------------------------------------- surface baselines


def _bow() -> Any:
    from sklearn.feature_extraction.text import CountVectorizer

    return make_pipeline(CountVectorizer(), LogisticRegression(max_iter=5000, random_state=0))


def test_probe_reports_surface_baselines_and_lift(held_out: ProbeReport, train_states: ihs.HiddenStates,
                                                  test_states: ihs.HiddenStates) -> None:
    base = held_out.baselines
    assert base is not None and set(base.accuracy) == {"bag_of_words", "form"}
    # Bag-of-words fit on the training prompts' text and scored on the test prompts', with sklearn directly.
    ref = _bow().fit(train_states.prompts, train_states.labels).score(test_states.prompts, test_states.labels)
    assert base.accuracy["bag_of_words"] == pytest.approx(ref, abs=1e-12)
    assert held_out.lift is not None
    for name, s in held_out.scores.items():
        np.testing.assert_allclose(held_out.lift[name], np.array(s.accuracy) - max(base.accuracy.values()), atol=1e-6)
    assert ProbeReport.model_validate_json(held_out.model_dump_json()).baselines == base
    assert "surface baselines" in held_out.summary()


def test_probe_baselines_use_the_probes_folds(train_states: ihs.HiddenStates) -> None:
    cv = probe(train_states, classifiers=("logreg",), cv=3, layers=[4], progress=False)
    y = np.array(train_states.labels)
    texts = np.array(train_states.prompts)
    codes = np.unique(y, return_inverse=True)[1]  # the probe's folds are stratified on its class codes
    folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=0).split(np.zeros(len(y)), codes)
    accs = [_bow().fit(texts[tr], y[tr]).score(texts[te], y[te]) for tr, te in folds]
    assert cv.baselines is not None and cv.baselines.accuracy_std is not None
    assert cv.baselines.accuracy["bag_of_words"] == pytest.approx(np.mean(accs), abs=1e-12)
    assert cv.baselines.accuracy_std["bag_of_words"] == pytest.approx(np.std(accs), abs=1e-12)
    tensor_only = probe(train_states.states, list(train_states.labels), classifiers=("logreg",), layers=[4],
                        progress=False)
    assert tensor_only.baselines is None and tensor_only.lift is None  # no texts, no baseline
    labels = [line.get_label() for line in cv.plot().axes[0].get_lines()]
    assert any(label.startswith("bag-of-words baseline") for label in labels)
