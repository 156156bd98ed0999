"""Guard: early-exit features equal plain transformers, the pass really stops, calibration, bundles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import RepeatedStratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import ihs_sight as ihs
from ihs_sight import io as ihs_io
from ihs_sight.errors import InputError
from ihs_sight.guard import (
    Guard,
    ModelMismatchError,
    layer_features,
    pick_layer,
    template_prefix,
    threshold_at_fpr,
)
from ihs_sight.probe import LayerProbe
from ihs_sight.prompts import encode

from .conftest import FP32_REL_TOL
from .test_extract import VARIED, _blocks


@pytest.fixture(scope="module")
def guard_train(data: ihs.PromptSet) -> ihs.PromptSet:
    """60 + 60 train-split prompts (look-alikes among the normals)."""
    train = data.train
    return train.normal.sample(60, random_state=1) + train.malicious.sample(60, random_state=1)


@pytest.fixture(scope="module")
def guard(model: ihs.Model, guard_train: ihs.PromptSet, states_cache: Path) -> Guard:
    return Guard.fit(model, guard_train, cv=3, target_accuracy=0.9, cache=states_cache, progress=False)


def reference_features(hf: Any, ids: list[int], layer: int, start: int, pool: str) -> torch.Tensor:
    """One unpadded prompt through plain transformers: block ``layer``'s output, last token or mean from ``start``."""
    with torch.no_grad():
        hs = hf(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[layer][0]
    return hs[-1] if pool == "last" else hs[start:].mean(0)


@pytest.mark.parametrize("pool", ["mean", "last"])
def test_features_equal_plain_transformers(model: ihs.Model, pool: str) -> None:
    prompts = VARIED[:7]
    layers = [12, 1, 5]  # any order
    got = layer_features(model, prompts, layers, pool=pool, batch_size=3, cache=False, progress=False)  # padded
    start = template_prefix(model, chat=True, system_prompt=None)
    assert 10 < start < len(encode(model.tokenizer, ["Hi"])[0])
    for i, ids in enumerate(encode(model.tokenizer, prompts)):
        for j, layer in enumerate(layers):
            ref = reference_features(model.hf, ids, layer, start, pool)
            assert ((got[i, j] - ref).norm() / ref.norm()).item() <= FP32_REL_TOL


def test_score_stops_after_the_guard_layer(model: ihs.Model, guard: Guard) -> None:
    calls = [0] * model.n_layers
    blocks = _blocks(model.hf)
    # Pre-hooks count the blocks that started: nnsight stops inside block ``layer``'s output hook.
    handles = [b.register_forward_pre_hook(lambda *_a, i=i: calls.__setitem__(i, calls[i] + 1))
               for i, b in enumerate(blocks)]
    norm_calls = [0]
    handles.append(model.hf.model.norm.register_forward_pre_hook(lambda *_a: norm_calls.__setitem__(0, norm_calls[0] + 1)))
    try:
        guard.score(VARIED[:5], batch_size=5)
    finally:
        for h in handles:
            h.remove()
    assert guard.layer < model.n_layers
    assert calls[: guard.layer] == [1] * guard.layer  # blocks 1..layer ran once
    assert calls[guard.layer:] == [0] * (model.n_layers - guard.layer)  # nothing after
    assert norm_calls == [0]


def test_score_equals_probe_on_reference_features(model: ihs.Model, guard: Guard) -> None:
    prompts = VARIED[5:12]
    scores = guard.score(prompts, batch_size=4)
    start = template_prefix(model, chat=True, system_prompt=None)
    ref = torch.stack([reference_features(model.hf, ids, guard.layer, start, guard.pool)
                       for ids in encode(model.tokenizer, prompts)])
    # The fitted probe, applied by hand: standardise, linear, sigmoid.
    p = guard.probe
    z = (ref - p.mean_[0]) / p.scale_[0]
    expected = torch.sigmoid(z @ p.coef_[0][:, 0] + p.intercept_[0][0]).numpy()
    np.testing.assert_allclose(scores.p_malicious, expected, atol=1e-5)
    assert scores.flagged == [bool(v > guard.threshold) for v in scores.p_malicious]
    assert scores.layer == guard.layer


def test_layer_search_and_calibration(guard: Guard, guard_train: ihs.PromptSet, model: ihs.Model,
                                      states_cache: Path) -> None:
    r = guard.report
    assert r.cv_layers == list(range(1, model.n_layers + 1)) and r.n_prompts == len(guard_train)
    assert set(r.cv_accuracy_by_C) == {"0.003", "0.01", "0.03", "0.1"} and r.cv_repeats == 3
    assert r.cv_accuracy == r.cv_accuracy_by_C[str(r.C)]
    best = np.max([v for v in r.cv_accuracy_by_C.values()], 0)
    # The earliest layer meeting the target with one binomial standard error to spare.
    reached = [layer for layer, acc in zip(r.cv_layers, best)
               if acc - np.sqrt(acc * (1 - acc) / r.n_prompts) >= r.target_accuracy]
    assert r.target_met == bool(reached)
    if reached:
        assert guard.layer == reached[0]
    else:  # the earliest layer within one standard error of the best
        se = np.sqrt(best.max() * (1 - best.max()) / r.n_prompts)
        assert guard.layer == next(layer for layer, a in zip(r.cv_layers, best) if a >= best.max() - se)
        assert best[guard.layer - 1] < best.max() or guard.layer == r.cv_layers[int(np.argmax(best))]
    assert r.cv_accuracy[guard.layer - 1] == best[guard.layer - 1]
    assert r.calibration_fpr <= r.target_fpr
    # The reported out-of-fold accuracy at the guard layer, recomputed with sklearn: repeated
    # folds stratified by label and look-alike flag, a standardised logistic regression per fold.
    feats = layer_features(model, guard_train, r.cv_layers, cache=states_cache, progress=False)[:, guard.layer - 1]
    y = np.array([lab == "malicious" for lab in guard_train.labels])
    strata = np.unique([f"{p.label}|{p.lookalike}" for p in guard_train], return_inverse=True)[1]
    folds = RepeatedStratifiedKFold(n_splits=r.cv, n_repeats=r.cv_repeats, random_state=r.random_state)
    est = make_pipeline(StandardScaler(), LogisticRegression(C=r.C, tol=1e-10, max_iter=10_000))
    normal_scores, hits = [], 0
    for tr, te in folds.split(feats.numpy(), strata):
        p = est.fit(feats[tr].numpy(), y[tr]).predict_proba(feats[te].numpy())[:, 1]
        hits += ((p > 0.5) == y[te]).sum()
        normal_scores += list(p[~y[te]])
    assert abs(hits / (r.cv_repeats * len(y)) - r.cv_accuracy[guard.layer - 1]) <= 1.5 / len(y)
    # The threshold: the cut at target_fpr of every repeat's out-of-fold normal scores, pooled.
    assert len(normal_scores) == r.cv_repeats * (~y).sum()
    assert guard.threshold == pytest.approx(threshold_at_fpr(np.array(normal_scores), r.target_fpr), abs=1e-4)
    # The final probe is fitted on every prompt at the chosen layer with the chosen C: the same
    # fit, made here directly, predicts the same.
    # Same features as the fit (read back from the shared cache: recomputed in other batches they
    # would differ in the last float bits).
    again = LayerProbe("logreg", C=r.C).fit(feats[:, None], list(guard_train.labels))
    np.testing.assert_allclose(again.predict_proba(feats[:, None]), guard.probe.predict_proba(feats[:, None]),
                               atol=1e-6)
    # Out of fold, the threshold flags the reported share of normal prompts; the final probe
    # (which saw every prompt) flags no more of them than the out-of-fold scores did.
    s = guard.score(guard_train)
    normal = [f for f, lab in zip(s.flagged, guard_train.labels) if lab == "normal"]
    assert np.mean(normal) <= r.calibration_fpr + 0.05


def test_pick_layer_needs_a_standard_error_to_spare() -> None:
    acc = np.array([0.90, 0.955, 0.96, 0.99])  # n = 100: standard errors 0.030, 0.021, 0.020, 0.010
    assert pick_layer(acc, 100, 0.95) == (3, True)  # 0.955 and 0.96 only just reach 0.95
    assert pick_layer(acc, 10_000, 0.95) == (1, True)  # with 10,000 prompts 0.955 - 0.002 is enough
    flat = np.array([0.80, 0.88, 0.90, 0.89])  # best 0.90, standard error 0.03
    assert pick_layer(flat, 100, 0.95) == (1, False)  # earliest within one standard error of the best


def test_threshold_at_fpr_by_hand() -> None:
    scores = np.array([0.05, 0.9, 0.3, 0.7, 0.1, 0.5, 0.2, 0.8, 0.4, 0.6])
    t = threshold_at_fpr(scores, 0.2)
    assert t == 0.7 and (scores > t).sum() == 2
    assert (scores > threshold_at_fpr(scores, 0.05)).sum() == 0  # 0.5 normals allowed -> none
    tied = np.array([0.5, 0.5, 0.5, 0.1])
    assert (tied > threshold_at_fpr(tied, 0.5)).sum() == 0  # ties at the cut stay unflagged


def test_fixed_layer_runs_only_that_far(model: ihs.Model, guard_train: ihs.PromptSet, states_cache: Path) -> None:
    g = Guard.fit(model, guard_train, layer=4, pool="last", cv=2, cache=states_cache, progress=False)
    assert g.layer == 4 and g.report.cv_layers == [4] and g.pool == "last"


def test_save_load_round_trip_and_refusals(model: ihs.Model, guard: Guard, tmp_path: Path) -> None:
    bundle = guard.save(tmp_path / "g")
    assert sorted(p.name for p in bundle.iterdir()) == ["guard.json", "probe.json", "probe.safetensors"]
    loaded = Guard.load(bundle, model)
    assert (loaded.layer, loaded.threshold, loaded.pool) == (guard.layer, guard.threshold, guard.pool)
    assert loaded.report == guard.report
    assert loaded.score(VARIED[:4]).p_malicious == pytest.approx(guard.score(VARIED[:4]).p_malicious, abs=1e-7)

    other = tmp_path / "other"
    shutil.copytree(bundle, other)
    meta = json.loads((other / "guard.json").read_text())
    meta["weights_hash"] = "0" * 32
    (other / "guard.json").write_text(json.dumps(meta))
    with pytest.raises(ModelMismatchError, match="Fit a guard on this model"):
        Guard.load(other, model)
    meta["format"] = "something-else"
    (other / "guard.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="not an ihs-sight guard"):
        Guard.load(other, model)
    (other / "guard.json").write_text("{not json")
    with pytest.raises(InputError, match="Cannot read"):
        Guard.load(other, model)
    with pytest.raises(InputError, match="no guard.json"):
        Guard.load(tmp_path / "missing", model)


def test_load_refuses_another_model(guard: Guard, tmp_path: Path) -> None:
    cfg = guard.model.hf.config
    tiny_cfg = type(cfg)(**{**cfg.to_dict(), "num_hidden_layers": 2})
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM

    tiny = ihs.load_model(AutoModelForCausalLM.from_config(tiny_cfg), tokenizer=guard.model.tokenizer)
    with pytest.raises(ModelMismatchError):
        Guard.load(guard.save(tmp_path / "g"), tiny)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"layer": 0}, "layer must be"),
        ({"layer": 99}, "layer must be"),
        ({"target_fpr": 1.5}, "target_fpr"),
        ({"target_accuracy": 0}, "target_accuracy"),
        ({"pool": "median"}, "pool must be"),
        ({"folds": "category"}, "folds must be"),
        ({"cv": 1}, "cv must be"),
        ({"cv_repeats": 0}, "cv_repeats must be"),
        ({"C": [0.1, -1]}, "C must be"),
        ({"classifier": "forest"}, "classifier must be"),
    ],
)
def test_fit_rejects_bad_arguments(model: ihs.Model, guard_train: ihs.PromptSet, kwargs: dict[str, Any],
                                   message: str) -> None:
    with pytest.raises(InputError, match=message):
        Guard.fit(model, guard_train, **kwargs)


def test_fit_rejects_bad_prompts(model: ihs.Model, data: ihs.PromptSet) -> None:
    with pytest.raises(InputError, match="labelled 'normal', 'malicious' or 'jailbreak'"):
        Guard.fit(model, ihs.PromptSet.from_texts(["x", "y"], label="other") + data.train.normal.head(20))
    with pytest.raises(InputError, match="at least"):
        Guard.fit(model, data.train.normal.head(3) + data.train.malicious.head(3))
    with pytest.raises(InputError, match="labelled PromptSet"):
        Guard.fit(model, ["a", "b"])  # type: ignore[arg-type]


def test_score_rejects_bad_prompts(guard: Guard) -> None:
    with pytest.raises(InputError):
        guard.score([])
    with pytest.raises(InputError):
        guard.score(["fine", ""])


def test_jailbreak_signal_equals_a_hand_computation_on_a_tiny_model(data: ihs.PromptSet) -> None:
    """Recognised (the guard's probe at its layer) and not converted (lens emotion mass over the band),
    each recomputed here from a plain transformers forward of a tiny random model."""
    from transformers import AutoTokenizer

    from ihs_sight.models import default_gguf_path, gguf_to_safetensors

    from .test_models import _tiny

    tok = AutoTokenizer.from_pretrained(gguf_to_safetensors(default_gguf_path()))
    hf = _tiny("LlamaForCausalLM")
    tiny = ihs.load_model(hf, tokenizer=tok)
    train = data.train.normal.sample(12, random_state=3) + data.train.malicious.sample(12, random_state=3)
    g = Guard.fit(tiny, train, layer=2, pool="last", cv=2, cv_repeats=1, C=0.1, chat=False, cache=False,
                  progress=False)
    prompts = data.jailbreak.sample(4, random_state=0) + data.test.normal.sample(2, random_state=0)
    sig = g.jailbreak_signal(prompts, band=(1, 2))
    lex = ihs.load_lexicon().token_ids(tok)
    pos, neg = torch.tensor(lex["positive"]), torch.tensor(lex["negative"])
    w = g.probe.coef_[0]
    for i, ids in enumerate(encode(tok, prompts.texts, chat=False)):
        with torch.no_grad():
            out = hf(torch.tensor([ids]), output_hidden_states=True)
        feats = out.hidden_states[2][0, -1]  # layer 2 = block 2's output (not the last layer: no final norm)
        z = (feats - g.probe.mean_[0]) / g.probe.scale_[0]
        p_mal = torch.sigmoid((z.double() @ w.double().reshape(-1)) + g.probe.intercept_[0].double().reshape(-1)[0])
        assert sig.p_malicious[i] == pytest.approx(float(p_mal), abs=1e-5)
        assert sig.recognised[i] == (sig.p_malicious[i] > g.threshold)
        scores = []
        for layer in (1, 2):
            h = out.hidden_states[layer][0, -1]
            probs = torch.softmax(hf.lm_head(hf.model.norm(h)).float(), -1)
            scores.append(float((probs[pos].sum() - probs[neg].sum()).detach()))
        assert sig.emotion_score[i] == pytest.approx(sum(scores) / 2, abs=1e-6)
        assert sig.signal[i] == (sig.recognised[i] and sig.emotion_score[i] > 0)
    rows = sig.rates("family")
    assert sum(r.n for r in rows) == 6


def test_evaluate_reports_rates(guard: Guard, data: ihs.PromptSet) -> None:
    test = data.test.normal.sample(10, random_state=0) + data.test.malicious.sample(10, random_state=0) \
        + data.jailbreak.sample(4, random_state=0)
    ev = guard.evaluate(test)
    s = guard.score(test)
    mal = [f for f, p in zip(s.flagged, test) if p.label == "malicious"]
    assert ev["tpr"] == pytest.approx(np.mean(mal)) and ev["n_malicious"] == 10 and ev["n_normal"] == 10
    assert sum(r["n"] for r in ev["by_family"]) == 4


def test_score_packed_equals_padded(guard: Guard, data: ihs.PromptSet) -> None:
    prompts = data.test.normal.sample(5, random_state=2) + data.test.malicious.sample(5, random_state=2)
    padded = guard.score(prompts, batch_size=4)
    packed = guard.score(prompts, pack=True)
    np.testing.assert_allclose(packed.p_malicious, padded.p_malicious, atol=1e-5)
    assert packed.prompts == padded.prompts == prompts.texts and packed.labels == padded.labels


def test_fit_report_carries_surface_baselines_on_the_same_folds(guard: Guard, guard_train: ihs.PromptSet) -> None:
    from sklearn.feature_extraction.text import CountVectorizer

    r = guard.report
    assert r.cv_baselines is not None and r.cv_lift is not None and set(r.cv_baselines.accuracy) == {
        "bag_of_words", "form"}
    # Bag-of-words recomputed with sklearn on the guard's own repeated folds (label x look-alike strata).
    texts, y = np.array(guard_train.texts), np.array([lab == "malicious" for lab in guard_train.labels])
    strata = np.unique([f"{p.label}|{p.lookalike}" for p in guard_train], return_inverse=True)[1]
    folds = RepeatedStratifiedKFold(n_splits=r.cv, n_repeats=r.cv_repeats, random_state=r.random_state)
    bow = make_pipeline(CountVectorizer(), LogisticRegression(max_iter=5000, random_state=r.random_state))
    hits = sum(int((bow.fit(texts[tr], y[tr]).predict(texts[te]) == y[te]).sum())
               for tr, te in folds.split(texts, strata))
    assert r.cv_baselines.accuracy["bag_of_words"] == pytest.approx(hits / (r.cv_repeats * len(y)), abs=1e-9)
    best = max(r.cv_baselines.accuracy.values())
    np.testing.assert_allclose(r.cv_lift, np.array(r.cv_accuracy) - best, atol=1e-6)
    fig = r.plot()
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert any(label.startswith("bag-of-words baseline") for label in labels)
    assert any(label.startswith("form baseline") for label in labels)


def test_bundle_is_replaced_whole_and_checked(model: ihs.Model, guard: Guard, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = guard.save(tmp_path / "g")
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}
    # A crash while re-saving into the same directory (after the new probe is written, before
    # guard.json): the old bundle stays exactly as it was.
    real = ihs_io.write_json

    def crash(path: Any, payload: Any, **kw: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(ihs_io, "write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        guard.save(bundle)
    monkeypatch.setattr(ihs_io, "write_json", real)
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name != "g"]  # no temporary directory left behind
    # A probe file swapped under the bundle is refused (its sha256 is recorded in guard.json).
    other = tmp_path / "swapped"
    shutil.copytree(bundle, other)
    (other / "probe.safetensors").write_bytes((other / "probe.safetensors").read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(InputError, match="sha256 differs"):
        Guard.load(other, model)
    # A threshold that is not a probability (NaN would never flag anything) is refused.
    meta = json.loads((bundle / "guard.json").read_text())
    for bad in (float("nan"), 1.5, -0.1):
        (other / "guard.json").write_text(json.dumps({**meta, "threshold": bad}))
        shutil.copy(bundle / "probe.safetensors", other / "probe.safetensors")
        with pytest.raises(InputError, match="not a probability"):
            Guard.load(other, model)
    # Saving over a directory that is not a guard bundle would delete the user's files: refused.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a guard bundle"):
        guard.save(mine)
    assert (mine / "notes.txt").read_text() == "keep me"
