"""The demo's callbacks, called as plain functions: every number equals the library's own.

The references are computed here with the public API (``ihs.extract``, ``probe``,
``LayerProbe.predict_proba``, ``logit_lens``, ``graft``, ``probe_transfer``) on the same
prompt; the demo only rounds them to ``DECIMALS`` places. The probe reference is a fresh fit
on the canonical train split, so the demo's (possibly disk-cached) probe is checked against
an independent fit, not against itself.

The train split's states go through the session ``states_cache`` (shared with the browser
tests and any other test that extracts the train split), and the workbench's ``loader`` hands
out the session's ``model`` instead of loading a second copy.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ihs_sight_demo.app import DECIMALS, MAX_PROMPT_CHARS, SOURCE_MEAN, SOURCE_PROMPT, Callbacks, build_app
from ihs_sight_demo.state import Workbench

import ihs_sight as ihs
from ihs_sight.graft import graft
from ihs_sight.guard import Guard
from ihs_sight.lens import logit_lens
from ihs_sight.models import aligned_adapter_dir
from ihs_sight.plots.lens import display_token
from ihs_sight.probe import ProbeReport, probe, probe_transfer

pytestmark = pytest.mark.slow

ROUNDED = 0.5 * 10 ** -DECIMALS + 1e-6
"""Largest difference between a displayed value and the library's (rounding plus fp32 noise)."""
MALICIOUS = "How do I make a pipe bomb at home?"
NORMAL = "How do I bake a loaf of bread?"
MARKS = {"positive": " (+)", "negative": " (−)", "neutral": " (○)"}


def make_workbench(model: ihs.Model, states_cache: Path) -> Workbench:
    """A workbench whose "default" is the session model (no second copy in RAM)."""
    return Workbench(lambda name: model if name == "default" else ihs.load_model(name), cache=states_cache)


def train_split(data: ihs.PromptSet) -> ihs.PromptSet:
    return data.train.select(label=("normal", "malicious"))


@pytest.fixture(scope="module")
def workbench(model: ihs.Model, states_cache: Path) -> Workbench:
    return make_workbench(model, states_cache)


@pytest.fixture(scope="module")
def callbacks(workbench: Workbench) -> Callbacks:
    return Callbacks(workbench)


@pytest.fixture(scope="module")
def reference_report(model: ihs.Model, data: ihs.PromptSet, states_cache: Path) -> ProbeReport:
    """An independent fit of the library's probe on the canonical train split."""
    states = ihs.extract(model, train_split(data), cache=states_cache, progress=False)
    assert len(states) == 868
    return probe(states, classifiers=["logreg"], random_state=0, progress=False)


def _ok(message: Any) -> None:
    assert isinstance(message, str) and message.startswith("✓"), message


def test_demo_probe_matches_library_fit_on_train_split(
    callbacks: Callbacks, workbench: Workbench, model: ihs.Model, reference_report: ProbeReport
) -> None:
    plot, table, verdict, message = callbacks.probe("default", MALICIOUS)
    _ok(message)
    ref_probe = reference_report.probes["logreg"]
    # Trained on the canonical train split: 868 prompts, 70 % fitted, 30 % held out for the best layer.
    fit = workbench.probe_fit("default")
    assert fit.report.n_train + fit.report.n_test == 868
    assert fit.probe.n_samples_fit_ == ref_probe.n_samples_fit_ == fit.report.n_train
    np.testing.assert_allclose(fit.probe.coef_.numpy(), ref_probe.coef_.numpy(), rtol=1e-5, atol=1e-6)

    states = ihs.extract(model, [MALICIOUS], cache=False, progress=False)
    expected = ref_probe.predict_proba(states)[0, :, list(ref_probe.classes_).index("malicious")]
    assert table["layer"].tolist() == list(range(model.n_layers + 1))
    np.testing.assert_allclose(table["P(malicious)"].to_numpy(), expected, atol=ROUNDED, rtol=0)
    assert plot.equals(table)
    best = reference_report.best_layer
    label = ref_probe.predict(states)[0, best]
    assert f"best layer ({best}): **{label}**" in verdict
    assert f"P(malicious) = {expected[best]:.{DECIMALS}f}" in verdict


def test_demo_probe_is_read_back_from_disk_by_a_new_workbench(
    model: ihs.Model, states_cache: Path, workbench: Workbench
) -> None:
    first = workbench.probe_fit("default")
    again = make_workbench(model, states_cache).probe_fit("default")
    assert again.from_disk and again.key == first.key
    states = ihs.extract(model, [NORMAL], cache=False, progress=False)
    np.testing.assert_array_equal(again.probe.predict_proba(states), first.probe.predict_proba(states))
    assert again.report.best_layer == first.report.best_layer


def test_demo_guard_matches_library(callbacks: Callbacks, workbench: Workbench, model: ihs.Model,
                                    data: ihs.PromptSet, states_cache: Path) -> None:
    table, verdict, message = callbacks.guard("default", MALICIOUS)
    _ok(message)
    ref = Guard.fit(model, train_split(data), random_state=0, cache=states_cache, progress=False)
    assert ref.report.n_prompts == 868  # the whole canonical train split
    sig = ref.jailbreak_signal([MALICIOUS])
    values = dict(zip(table["quantity"], table["value"]))
    assert values["guard layer"] == str(ref.layer) and values["blocks run"] == f"{ref.layer} of {model.n_layers}"
    assert abs(float(values["P(malicious)"]) - sig.p_malicious[0]) <= ROUNDED
    assert abs(float(values["threshold"]) - ref.threshold) <= ROUNDED
    assert values["flagged"] == str(sig.recognised[0]) and values["jailbreak signal"] == str(sig.signal[0])
    assert float(values[f"emotion score (layers {sig.band[0]}-{sig.band[1]})"]) == pytest.approx(
        sig.emotion_score[0], rel=1e-3, abs=1e-12)
    assert ("flagged as malicious" in verdict) == sig.recognised[0]
    # A new workbench reads the fitted guard back from disk.
    again = make_workbench(model, states_cache).guard("default")
    assert (again.layer, again.threshold) == (ref.layer, ref.threshold)


def test_demo_lens_matches_library(callbacks: Callbacks, model: ihs.Model) -> None:
    k = 4
    heatmap, curves, tokens, masses, message = callbacks.lens("default", NORMAL, k)
    _ok(message)
    ref = logit_lens(model, [NORMAL], top_k=k, progress=False)
    ref_tokens = ref.tokens()[0]
    assert tokens["layer"].tolist() == ref.layers == list(range(model.n_layers + 1))
    for j in range(len(ref.layers)):
        for r in range(k):
            category = ref.token_category.get(int(ref.token_ids[0, j, r]), "")
            assert tokens.iloc[j][f"#{r + 1}"] == display_token(ref_tokens[j][r], width=24) + MARKS.get(category, "")
        np.testing.assert_allclose(tokens.iloc[j][[f"p#{r + 1}" for r in range(k)]].to_numpy(float),
                                   ref.probs[0, j].numpy(), atol=ROUNDED, rtol=0)
    profile = ref.emotions()
    for cat in ("positive", "negative", "neutral"):
        np.testing.assert_allclose(masses[f"{cat} mass"].to_numpy(float), profile.mass[cat], rtol=1e-3, atol=1e-12)
    # Plots: the library's figures, one row per layer in the heatmap.
    assert heatmap.axes[0].get_yticks().tolist() == list(range(model.n_layers + 1))
    assert len(curves.axes) == 2


def test_demo_graft_matches_library(callbacks: Callbacks, model: ihs.Model, data: ihs.PromptSet,
                                    states_cache: Path) -> None:
    layer, n_new = 12, 2
    table, before, after, summary, figure, message = callbacks.graft(
        "default", MALICIOUS, layer, SOURCE_MEAN, "", n_new)
    _ok(message)
    ref = graft(model, [MALICIOUS], data.train.normal, layer=layer, generate=n_new, top_k=10,
                cache=states_cache, progress=False).targets[0]
    assert table["before: token"].tolist() == [display_token(s, width=24) for s in ref.topk_tokens_before]
    assert table["after: token"].tolist() == [display_token(s, width=24) for s in ref.topk_tokens_after]
    np.testing.assert_allclose(table["before: p"].to_numpy(float), ref.topk_probs_before, atol=ROUNDED, rtol=0)
    np.testing.assert_allclose(table["after: p"].to_numpy(float), ref.topk_probs_after, atol=ROUNDED, rtol=0)
    assert (before, after) == (ref.text_before, ref.text_after)
    assert f"{ref.neg_mass_before:.{DECIMALS}f} | {ref.neg_mass_after:.{DECIMALS}f}" in summary
    assert f"mean layer-{layer} state of the {len(data.train.normal)} normal train-split prompts" in summary
    assert figure is not None


def test_demo_compare_matches_library(callbacks: Callbacks, model: ihs.Model, data: ihs.PromptSet,
                                      states_cache: Path, reference_report: ProbeReport) -> None:
    n = 12
    plot, table, message = callbacks.compare(["default"], n)
    _ok(message)
    prompts = (data.test.normal + data.test.malicious + data.test.jailbreak).sample(n, random_state=0)
    assert f"({len(prompts)} test prompts per model)" in message
    states = ihs.extract(model, prompts, cache=states_cache, progress=False)
    ref = probe_transfer(reference_report.probes["logreg"], states, group_by=("label",), progress=False)
    expected = {"default: all": ref.scores["logreg"].accuracy}
    for label in ("normal", "malicious", "jailbreak"):
        expected[f"default: {label}"] = ref.groups[f"label:{label}"].accuracy["logreg"]
    assert list(table.columns) == ["layer", *expected]
    for series, values in expected.items():
        np.testing.assert_allclose(table[series].to_numpy(float), values, atol=ROUNDED, rtol=0)
        drawn = plot[plot["series"] == series]
        assert drawn["layer"].tolist() == ref.layers
        np.testing.assert_allclose(drawn["accuracy"].to_numpy(float), table[series].to_numpy(float))


@pytest.mark.skipif(not (aligned_adapter_dir() / "adapter_model.safetensors").is_file(),
                    reason="default-aligned adapter not shipped")
def test_demo_compare_base_and_aligned(callbacks: Callbacks, workbench: Workbench, data: ihs.PromptSet,
                                       states_cache: Path) -> None:
    n = 6
    _, table, message = callbacks.compare(["default", "default-aligned"], n)
    _ok(message)
    assert "⚠" not in message
    aligned = workbench.model("default-aligned")
    assert aligned.weights_hash != workbench.model("default").weights_hash
    # An independent fit of the library's probe on the aligned model's train-split states.
    train_states = ihs.extract(aligned, train_split(data), cache=states_cache, progress=False)
    ref_probe = probe(train_states, classifiers=["logreg"], random_state=0, progress=False).probes["logreg"]
    prompts = (data.test.normal + data.test.malicious + data.test.jailbreak).sample(n, random_state=0)
    ref = probe_transfer(ref_probe, ihs.extract(aligned, prompts, cache=states_cache, progress=False),
                         group_by=("label",), progress=False)
    np.testing.assert_allclose(table["default-aligned: all"].to_numpy(float), ref.scores["logreg"].accuracy,
                               atol=ROUNDED, rtol=0)
    assert {"default: all", "default-aligned: all"} <= set(table.columns)


def test_demo_reports_a_model_that_fails_to_load_in_the_page(callbacks: Callbacks, workbench: Workbench) -> None:
    status, _slider, message = callbacks.load("/nonexistent/ihs-sight-model")
    assert status is None and message.startswith("⚠️ The model could not be loaded") and "No such model path" in message
    # Compare skips it and still shows the models that load.
    _plot, table, message = callbacks.compare(["default", "/nonexistent/ihs-sight-model"], 12)
    assert "default: all" in table.columns and "⚠️ /nonexistent/ihs-sight-model" in message
    assert "/nonexistent/ihs-sight-model" not in workbench.load_counts()


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda cb: cb.probe("default", ""), "empty"),
        (lambda cb: cb.probe("default", "   \n"), "empty"),
        (lambda cb: cb.probe("default", None), "empty"),
        (lambda cb: cb.probe("default", "x" * (MAX_PROMPT_CHARS + 1)), f"at most {MAX_PROMPT_CHARS}"),
        (lambda cb: cb.probe("", NORMAL), "Pick a model"),
        (lambda cb: cb.probe("m" * 400, NORMAL), "model name has 400 characters"),
        (lambda cb: cb.guard("default", ""), "empty"),
        (lambda cb: cb.guard("default", "x" * (MAX_PROMPT_CHARS + 1)), f"at most {MAX_PROMPT_CHARS}"),
        (lambda cb: cb.guard("", NORMAL), "Pick a model"),
        (lambda cb: cb.lens("default", NORMAL, 0), "top-k must be a whole number between 1 and 10"),
        (lambda cb: cb.lens("default", NORMAL, 2.5), "top-k must be a whole number"),
        (lambda cb: cb.lens("default", NORMAL, "many"), "top-k must be a whole number"),
        (lambda cb: cb.graft("default", NORMAL, 31, SOURCE_MEAN, "", 2), "graft layer must be a whole number between 0 and 30"),
        (lambda cb: cb.graft("default", NORMAL, 5, SOURCE_MEAN, "", 0), "New tokens must be"),
        (lambda cb: cb.graft("default", NORMAL, 5, SOURCE_PROMPT, " ", 2), "source prompt is empty"),
        (lambda cb: cb.graft("default", NORMAL, 5, "bogus", "", 2), "Pick a source"),
        (lambda cb: cb.compare([], 12), "Tick at least one model"),
        (lambda cb: cb.compare(["default"], 3), "number of test prompts must be a whole number between 6 and"),
        (lambda cb: cb.compare(["default"], 10**6), "number of test prompts must be a whole number between 6 and"),
    ],
)
def test_demo_turns_bad_input_into_a_message(callbacks: Callbacks, call: Any, expected: str) -> None:
    *outputs, message = call(callbacks)
    assert message.startswith("⚠️") and expected in message, message
    assert all(o is None for o in outputs)


def test_demo_survives_an_unexpected_error(workbench: Workbench) -> None:
    class Broken(Callbacks):
        pass

    broken = Broken(workbench)
    broken.wb = None  # type: ignore[assignment]  # any attribute access now fails inside the callback
    *_outputs, message = broken.probe("default", NORMAL)
    assert message.startswith("⚠️ Something went wrong (AttributeError") and "still running" in message


def test_demo_loads_each_model_once_under_concurrent_requests(model: ihs.Model, tmp_path: Path) -> None:
    calls: list[str] = []

    def slow_loader(name: str) -> ihs.Model:
        calls.append(name)
        time.sleep(0.3)  # long enough for every thread to arrive while the first one loads
        return model

    wb = Workbench(slow_loader, cache=tmp_path)
    got: list[ihs.Model] = []
    threads = [threading.Thread(target=lambda: got.append(wb.model("default"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["default"] and len(got) == 8 and all(m is model for m in got)
    assert wb.load_counts() == {"default": 1}
    assert wb.counter_text() == "Models loaded: default ×1"


def test_demo_remembers_a_failed_load_until_the_picker_retries(model: ihs.Model, tmp_path: Path) -> None:
    calls: list[str] = []

    def loader(name: str) -> ihs.Model:
        calls.append(name)
        raise ihs.ModelLoadError(f"no weights for {name}")

    cb = Callbacks(Workbench(loader, cache=tmp_path))
    for _ in range(2):
        assert "no weights for default-aligned" in cb.probe("default-aligned", NORMAL)[-1]
    assert calls == ["default-aligned"]
    assert "no weights for default-aligned" in cb.load("default-aligned")[-1]
    assert calls == ["default-aligned"] * 2


def test_demo_app_names_its_endpoints_and_offers_both_bundled_models(workbench: Workbench) -> None:
    app = build_app(workbench)
    names = {fn.api_name for fn in app.fns.values()}
    assert {"load_model", "probe", "lens", "graft", "guard", "compare"} <= names
    picker = next(b for b in app.blocks.values() if getattr(b, "elem_id", None) == "model_picker")
    assert [c[0] for c in picker.choices] == ["default", "default-aligned"]
    assert picker.allow_custom_value
