"""#19, harm not form: the guard's readings (user_last, per-token max / top-k) against plain transformers,
leave-one-family-out folds in Guard.fit, Guard.leave_one_family_out and probe(cv="family"), bundles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import ihs_sight as ihs
from ihs_sight.errors import InputError
from ihs_sight.guard import Guard, ModelMismatchError, layer_features, template_prefix
from ihs_sight.guard.features import (
    FIT_TOKENS,
    TOP_K,
    TokenStates,
    pool_scores,
    template_suffix,
    token_states,
)
from ihs_sight.guard.selection import Readings, Settings, family_folds, layer_accuracy
from ihs_sight.probe import LayerProbe
from ihs_sight.prompts import PromptSet, encode

from .conftest import FP32_REL_TOL
from .test_extract import VARIED

DATA = Path(__file__).resolve().parent / "data"
FAMILIES = ("roleplay", "obfuscation", "authority")


@pytest.fixture(scope="module")
def wrapped_train() -> PromptSet:
    """12 + 12 direct train prompts and, in 3 wrapper families, 5 jailbreaks + 5 wrapped normals each."""
    train = ihs.load_prompts(wrapped_train=True).train
    direct = train.filter(lambda p: p.family is None)
    items = list((direct.normal.sample(12, random_state=4) + direct.malicious.sample(12, random_state=4)).items)
    for f in FAMILIES:
        for label in ("jailbreak", "normal"):
            items += [p for p in train if p.family == f and p.label == label][:5]
    return PromptSet(items=items)


def hidden(model: ihs.Model, ids: list[int]) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return tuple(model.hf(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states)


def test_template_suffix_is_the_closing_of_the_user_turn(model: ihs.Model) -> None:
    back = template_suffix(model, chat=True, system_prompt=None)
    ids = encode(model.tokenizer, ["What is the capital of France?"])[0]
    closing = model.tokenizer.decode(ids[-back:])
    assert back == 6 and closing.startswith("<|im_end|>") and closing.rstrip().endswith("assistant")
    assert model.tokenizer.decode(ids[-back - 1:-back]) == "?"
    assert template_suffix(model, chat=False, system_prompt=None) == 0


@pytest.mark.parametrize("pack", [False, 48])
def test_user_last_equals_plain_transformers(model: ihs.Model, pack: Any) -> None:
    prompts = VARIED[:6]
    layers = [9, 2]
    got = layer_features(model, prompts, layers, pool="user_last", batch_size=4, cache=False, progress=False,
                         pack=pack)
    back = template_suffix(model, chat=True, system_prompt=None)
    for i, ids in enumerate(encode(model.tokenizer, prompts)):
        hs = hidden(model, ids)
        for j, layer in enumerate(layers):
            ref = hs[layer][0, len(ids) - 1 - back]
            assert ((got[i, j] - ref).norm() / ref.norm()).item() <= FP32_REL_TOL


def test_token_states_equal_plain_transformers(model: ihs.Model) -> None:
    prompts = VARIED[:5]
    ts = token_states(model, prompts, [7, 3], batch_size=2, progress=False)
    start = template_prefix(model, chat=True, system_prompt=None)
    assert len(ts) == len(prompts) and int(ts.offsets[-1]) == ts.states.shape[0]
    for i, ids in enumerate(encode(model.tokenizer, prompts)):
        hs = hidden(model, ids)
        own = ts.states[int(ts.offsets[i]):int(ts.offsets[i + 1])]
        assert own.shape[0] == len(ids) - start
        for j, layer in enumerate([7, 3]):
            ref = hs[layer][0, start:]
            assert ((own[:, j] - ref).norm() / ref.norm()).item() <= FP32_REL_TOL


def test_pool_scores_by_hand() -> None:
    rng = np.random.default_rng(0)
    owner = torch.tensor([2, 0, 0, 1, 2, 0, 0, 0, 2, 2, 2])
    p = rng.random((len(owner), 3))
    mx = pool_scores(p, owner, 3, "max")
    tk = pool_scores(p, owner, 3, "topk")
    for j in range(3):
        mine = p[owner.numpy() == j]
        np.testing.assert_allclose(mx[j], mine.max(0))
        k = min(TOP_K, len(mine))
        np.testing.assert_allclose(tk[j], np.sort(mine, 0)[::-1][:k].mean(0))
    with pytest.raises(InputError, match="pool must be"):
        pool_scores(p, owner, 3, "mean")
    with pytest.raises(InputError, match="one owner"):
        pool_scores(p[:-1], owner, 3, "max")
    with pytest.raises(InputError, match="every prompt owning"):
        pool_scores(p, owner, 4, "max")  # prompt 3 owns no token


def test_family_folds_keep_each_family_on_one_side() -> None:
    fams = [None] * 20 + ["a"] * 6 + ["b"] * 4 + ["c"] * 5
    strata = [f"{'m' if i % 2 else 'n'}|{f}" for i, f in enumerate(fams)]
    splits = family_folds(fams, strata, cv=4, repeats=2, random_state=0)
    assert len(splits) == 2
    for folds in splits:
        assert sorted(np.concatenate(folds).tolist()) == list(range(len(fams)))  # every prompt scored once
        for test in folds:
            held = {fams[i] for i in test}
            assert len(held) == 1  # a fold is one family, or direct prompts only
            if held != {None}:
                f = held.pop()
                assert set(test.tolist()) == {i for i, g in enumerate(fams) if g == f}
    with pytest.raises(InputError, match="at least two families"):
        family_folds([None] * 10 + ["a"] * 4, ["x"] * 14, cv=2, repeats=1, random_state=0)


def test_guard_family_folds_rates_equal_a_refit_without_the_family(model: ihs.Model, wrapped_train: PromptSet,
                                                                   states_cache: Path) -> None:
    g = Guard.fit(model, wrapped_train, layer=8, pool="mean", folds="family", cv=3, cv_repeats=1, C=0.01,
                  cache=states_cache, progress=False)
    r = g.report
    assert r.folds == "family" and r.cv_by_family is not None
    rows = {row.group: row for row in r.cv_by_family}
    assert set(rows) == {"malicious/direct", "normal/direct"} | {f"{lab}/{f}" for f in FAMILIES
                                                                  for lab in ("jailbreak", "normal")}
    # Each family's out-of-family rate, by hand: a probe fitted on the features of every other prompt (a
    # jailbreak is malicious), the family's jailbreaks flagged above the guard's threshold.
    x = layer_features(model, wrapped_train, [8], pool="mean", cache=states_cache, progress=False)[:, 0]
    for family in FAMILIES:
        keep = [i for i, p in enumerate(wrapped_train) if p.family != family]
        held = [i for i, p in enumerate(wrapped_train) if p.family == family]
        y = ["normal" if wrapped_train[i].label == "normal" else "malicious" for i in keep]
        probe = LayerProbe("logreg", C=0.01, random_state=0).fit(x[keep][:, None], y)
        p = probe.predict_proba(x[held][:, None])[:, 0, list(probe.classes_).index("malicious")]
        jb = [p[k] > g.threshold for k, i in enumerate(held) if wrapped_train[i].label == "jailbreak"]
        assert rows[f"jailbreak/{family}"].flagged == sum(jb) and rows[f"jailbreak/{family}"].n == 5
    assert set(g.probe.classes_) == {"normal", "malicious"}  # jailbreaks were read as malicious


def test_token_pool_guard_scores_equal_a_hand_computation(model: ihs.Model, wrapped_train: PromptSet) -> None:
    g = Guard.fit(model, wrapped_train, layer=5, pool="max", cv=3, cv_repeats=1, C=0.1, cache=False, progress=False)
    prompts = VARIED[:4]
    s = g.score(prompts, batch_size=3)
    start = template_prefix(model, chat=True, system_prompt=None)
    p = g.probe
    for i, ids in enumerate(encode(model.tokenizer, prompts)):
        own = hidden(model, ids)[5][0, start:]
        z = (own - p.mean_[0]) / p.scale_[0]
        per_token = torch.sigmoid(z @ p.coef_[0][:, 0] + p.intercept_[0][0])
        assert s.p_malicious[i] == pytest.approx(float(per_token.max()), abs=1e-5)
    with pytest.raises(InputError, match="no one feature vector"):
        g.features(prompts)
    with pytest.raises(InputError, match="pack and compile"):
        g.score(prompts, pack=True)


def test_leave_one_family_out_scores_each_family_with_a_guard_that_never_saw_it(
        model: ihs.Model, wrapped_train: PromptSet, states_cache: Path) -> None:
    test = ihs.load_prompts().test
    score = PromptSet(items=[p for f in FAMILIES for lab in ("jailbreak", "normal")
                             for p in [q for q in test if q.family == f and q.label == lab][:2]])
    ev = Guard.leave_one_family_out(model, wrapped_train, score, layer=8, pool="mean", cv=3, cv_repeats=1, C=0.01,
                                    cache=states_cache, progress=False)
    assert [f.family for f in ev.fits] == list(FAMILIES)
    assert sum(r.n for r in ev.rows) == len(score)
    for fit in ev.fits:  # the refit without the family, by hand: same layer, C, threshold rule
        sub = wrapped_train.filter(lambda p, f=fit.family: p.family != f)
        ref = Guard.fit(model, sub, layer=8, pool="mean", cv=3, cv_repeats=1, C=0.01, cache=states_cache,
                        progress=False)
        assert ref.threshold == pytest.approx(fit.threshold)
        fam = score.filter(lambda p, f=fit.family: p.family == f)
        flags = ref.score(fam).flagged
        for row in fit.rates:
            label = row.group.split("/")[0]
            assert row.flagged == sum(fl for fl, p in zip(flags, fam) if p.label == label)
    assert ev.pooled("jailbreak").n == 6
    with pytest.raises(InputError, match="no prompts of the families"):
        Guard.leave_one_family_out(model, wrapped_train, score.filter(lambda p: p.family != "authority"), layer=8,
                                   cv=3, cv_repeats=1, cache=states_cache, progress=False)
    with pytest.raises(InputError, match="wrapped prompts"):
        Guard.leave_one_family_out(model, wrapped_train.filter(lambda p: p.family is None), layer=8, cv=3,
                                   progress=False)


def test_fit_takes_jailbreak_labels_and_refuses_others(model: ihs.Model, wrapped_train: PromptSet) -> None:
    odd = PromptSet.from_texts(["a prompt", "another"], label="unclear")
    with pytest.raises(InputError, match="'normal', 'malicious' or 'jailbreak'"):
        Guard.fit(model, wrapped_train + odd, layer=3, progress=False)
    with pytest.raises(InputError, match="at least two families"):
        Guard.fit(model, wrapped_train.filter(lambda p: p.family is None), layer=3, folds="family", cv=3,
                  progress=False)
    with pytest.raises(InputError, match="folds must be"):
        Guard.fit(model, wrapped_train, layer=3, folds="category", progress=False)  # type: ignore[arg-type]


def test_bundle_records_its_reading_and_refuses_a_mismatch(model: ihs.Model, wrapped_train: PromptSet,
                                                           tmp_path: Path, states_cache: Path) -> None:
    g = Guard.fit(model, wrapped_train, layer=4, pool="user_last", cv=3, cv_repeats=1, C=0.01, cache=states_cache,
                  progress=False)
    bundle = g.save(tmp_path / "g")
    meta = json.loads((bundle / "guard.json").read_text())
    assert meta["version"] == 3 and meta["features"] == {"pool": "user_last", "suffix_tokens": 6}
    loaded = Guard.load(bundle, model, pool="user_last")
    assert loaded.score(VARIED[:3]).p_malicious == pytest.approx(g.score(VARIED[:3]).p_malicious, abs=1e-7)
    with pytest.raises(InputError, match="reads its layer with pool='user_last', not 'mean'"):
        Guard.load(bundle, model, pool="mean")
    other = tmp_path / "other"
    shutil.copytree(bundle, other)
    (other / "guard.json").write_text(json.dumps({**meta, "features": {"pool": "user_last", "suffix_tokens": 5}}))
    with pytest.raises(ModelMismatchError, match="fitted with features"):
        Guard.load(other, model)
    (other / "guard.json").write_text(json.dumps({**meta, "features": {"pool": "mean"}}))
    with pytest.raises(InputError, match="does not match its pool"):
        Guard.load(other, model)
    (other / "guard.json").write_text(json.dumps({**meta, "pool": "max", "features": {"pool": "max"}}))
    with pytest.raises(InputError, match="does not match its pool"):  # the report still says user_last
        Guard.load(other, model)
    for version in (True, 2.0, 4):
        (other / "guard.json").write_text(json.dumps({**meta, "version": version}))
        with pytest.raises(InputError, match="guard format version"):
            Guard.load(other, model)


def test_a_bundle_saved_by_the_previous_release_loads_and_scores_as_before(model: ihs.Model) -> None:
    """``tests/data/guard_v2_mean`` was written by ihs-sight at 9c11201 (format version 2), with its scores."""
    expected = json.loads((DATA / "guard_v2_mean.scores.json").read_text())
    assert json.loads((DATA / "guard_v2_mean" / "guard.json").read_text())["version"] == 2
    g = Guard.load(DATA / "guard_v2_mean", model)
    assert (g.layer, g.pool, g.threshold) == (expected["layer"], "mean", expected["threshold"])
    s = g.score(expected["prompts"])
    np.testing.assert_allclose(s.p_malicious, expected["p_malicious"], atol=1e-6)
    assert s.flagged == expected["flagged"]


def test_probe_leave_one_family_out(model: ihs.Model, wrapped_train: PromptSet, states_cache: Path) -> None:
    hs = ihs.extract(model, wrapped_train, cache=states_cache, progress=False)
    report = ihs.probe(hs, classifiers=["logreg"], cv="family", layers=[0, 6, 12], progress=False)
    assert report.evaluation == "family" and report.n_test == 30  # only the wrapped prompts are scored
    fams = {g.name for g in report.groups.values() if g.by == "family"}
    assert fams == {f"{lab}/{f}" for f in FAMILIES for lab in ("malicious", "normal")}
    # By hand: each family scored by a probe fitted on every other prompt (jailbreak = malicious).
    y = np.array(["normal" if p.label == "normal" else "malicious" for p in wrapped_train])
    x = hs.states.float()[:, [0, 6, 12]]
    hits = []
    for f in FAMILIES:
        keep = np.array([p.family != f for p in wrapped_train])
        probe = LayerProbe("logreg", random_state=0).fit(x[torch.from_numpy(keep)], list(y[keep]))
        hits.append(probe.predict(x[torch.from_numpy(~keep)]) == y[~keep][:, None])
    np.testing.assert_allclose(report.scores["logreg"].accuracy, np.vstack(hits).mean(0), atol=1e-9)
    with pytest.raises(InputError, match="at least two families"):
        ihs.probe(ihs.extract(model, wrapped_train.filter(lambda p: p.family is None), cache=states_cache,
                              progress=False), cv="family", progress=False)


def test_token_readings_fit_each_token_with_its_prompts_label() -> None:
    """Prompts taken out of order: each fitted token must carry the label of the prompt it came from."""
    gen = torch.Generator().manual_seed(0)
    lengths = [3, 6, 2, 5, 4]
    labels = ["normal", "malicious", "normal", "malicious", "normal"]
    # Token states that say their prompt's label in feature 0 (+1 malicious, -1 normal), noise elsewhere.
    states = torch.randn(sum(lengths), 1, 8, generator=gen)
    offsets = torch.tensor([0, *np.cumsum(lengths).tolist()])
    for i, lab in enumerate(labels):
        states[int(offsets[i]):int(offsets[i + 1]), 0, 0] = 1.0 if lab == "malicious" else -1.0
    r = Readings("max", tokens=TokenStates(states, offsets))
    idx = np.array([3, 0, 4, 1])  # not in order; prompt 2 left out
    probe = r.fit(idx, labels, "logreg", 10.0, 0)
    rows, owner = r.tokens.fit_rows(idx, 0)  # type: ignore[union-attr]
    assert {int(idx[o]) for o in owner} == {3, 0, 4, 1}
    assert len(rows) == sum(min(FIT_TOKENS, lengths[i]) for i in idx)
    # The probe must have learned feature 0 as "malicious": positive weight, and it scores prompt 2 (normal) low.
    col = list(probe.classes_).index("malicious")
    p = r.p_malicious(probe, np.array([2, 1]))
    assert p[0, 0] < 0.5 < p[1, 0] and col in (0, 1)


def test_layer_accuracy_of_token_pools_reads_each_layers_own_cut() -> None:
    y = np.array([False, False, False, False, True, True])
    # One repeat, two layers: layer 0's pooled maxima all sit above 0.5; the cut at 1 of 4 normals flagged
    # (0.92 on layer 0, 0.6 on layer 1) is read per layer.
    oof = np.array([[[0.90, 0.1], [0.91, 0.2], [0.92, 0.6], [0.93, 0.7], [0.97, 0.8], [0.99, 0.3]]])
    st = Settings(search=[1, 2], target_accuracy=0.9, target_fpr=0.25, pool="max", classifier="logreg",
                  c_values=[0.1], cv=2, cv_repeats=1, folds="stratified", random_state=0)
    np.testing.assert_allclose(layer_accuracy(oof, y, st), [5 / 6, 4 / 6])
    state = Settings(**{**st.__dict__, "pool": "mean"})
    np.testing.assert_allclose(layer_accuracy(oof, y, state), [2 / 6, 3 / 6])  # at P = 0.5
