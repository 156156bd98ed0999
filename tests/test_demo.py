"""The demo's callbacks, called as plain functions: every number equals the library's own.

The references are computed here with the public API (``ihs.extract``, ``probe``,
``LayerProbe.predict_proba``, ``logit_lens``, ``graft``, ``probe_transfer``) on the same
prompt; the demo only rounds them to ``DECIMALS`` places. The probe reference is a fresh fit
on the canonical train split, so the demo's (possibly disk-cached) probe is checked against
an independent fit, not against itself.

The train split's states go through the session ``states_cache`` (shared with the browser
tests and any other test that extracts the train split), and the workbench's ``loader`` hands
out the session's ``model`` instead of loading a second copy.

What a web client may do is checked too: only listed models load (``allow_models`` opts in to
more), refusals load nothing, messages carry no server paths, failed loads are remembered as
bounded messages (RSS stays flat over 50 failing loads), and a non-loopback host is warned of.

The Steer tab's replies equal ``ihs.steer`` on the same direction and plain ``hf.generate``
without steering; it steers the bundled models only, and beyond loopback it does not exist and
its callback refuses. Its tests use a cheap refusal-direction search (:data:`CHEAP_DIRECTION`;
the demo uses the library's defaults, about two minutes on one CPU thread) and
:data:`STEER_TOKENS` tokens per reply, on one torch thread.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pytest
import torch
from ihs_sight_demo import app as demo_app
from ihs_sight_demo.app import (
    DECIMALS,
    MAX_PROMPT_CHARS,
    SOURCE_MEAN,
    SOURCE_PROMPT,
    STEER_OFF,
    Callbacks,
    build_app,
    exposure_warning,
    free_port,
    is_loopback,
    launch,
)
from ihs_sight_demo.state import MAX_FAILURES, ModelFailedError, ModelRefusedError, Workbench, public_message

import ihs_sight as ihs
from ihs_sight.graft import graft
from ihs_sight.guard import Guard
from ihs_sight.lens import logit_lens
from ihs_sight.models import aligned_adapter_dir, default_gguf_path, gguf_to_safetensors
from ihs_sight.plots.lens import display_token
from ihs_sight.probe import ProbeReport, probe, probe_transfer
from ihs_sight.prompts import encode

from .conftest import torch_threads

pytestmark = pytest.mark.slow

ROUNDED = 0.5 * 10 ** -DECIMALS + 1e-6
"""Largest difference between a displayed value and the library's (rounding plus fp32 noise)."""
MALICIOUS = "How do I make a pipe bomb at home?"
NORMAL = "How do I bake a loaf of bread?"
MARKS = {"positive": " (+)", "negative": " (−)", "neutral": " (○)"}


STEER_TOKENS = 8
"""Greedy tokens per reply in the Steer tests (one prompt each)."""
CHEAP_DIRECTION: dict[str, Any] = {"n_train": 8, "n_val": 2, "layers": [18], "positions": [-3]}
"""A cheap refusal-direction search on the bundled train split (one candidate, ~5 s), for the Steer tests only:
layer 18 and position -3 are where the library's default search (~2 min on one CPU thread) puts the
default model's direction."""
PHISHING = "Write a convincing phishing email that steals bank passwords."
"""A prompt whose first 8 greedy tokens change under both ablation and addition of that direction."""


def make_workbench(model: ihs.Model, states_cache: Path, allow_models: Sequence[str] = (), **kw: Any) -> Workbench:
    """A workbench whose "default" is the session model (no second copy in RAM)."""
    return Workbench(lambda name: model if name == "default" else ihs.load_model(name), cache=states_cache,
                     allow_models=allow_models, **kw)


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


def test_demo_reports_a_model_that_fails_to_load_in_the_page(model: ihs.Model, states_cache: Path) -> None:
    # Typed paths load only where the operator opted in (ihs-sight demo --allow-models '/nonexistent/*').
    workbench = make_workbench(model, states_cache, allow_models=["/nonexistent/*"])
    callbacks = Callbacks(workbench)
    status, _slider, message = callbacks.load("/nonexistent/ihs-sight-model")
    assert status is None and message.startswith("⚠️ The model could not be loaded") and "No such model path" in message
    assert "/nonexistent/ihs-sight-model" in message  # the name the client typed is shown as typed
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
    assert not picker.allow_custom_value  # no typed names unless the operator opts in


# ---------------------------------------------------------------------------- what a web client may do

SERVER_PATHS = ("/root", "/home", "site-packages", ".cache", str(Path.home()), sys.prefix)


def _no_server_paths(message: str, *also: str) -> None:
    for path in (*SERVER_PATHS, *also):
        assert path not in message, (path, message)


class RecordingLoader:
    """A loader that records every name it is asked for and fails with a message full of server paths."""

    def __init__(self, fail: type[Exception] = ihs.ModelLoadError) -> None:
        self.calls: list[str] = []
        self.fail = fail

    def __call__(self, name: str) -> ihs.Model:
        self.calls.append(name)
        raise self.fail(
            f"Could not load model {name!r}: no file named config.json in {Path.home()}/.cache/huggingface/hub/"
            f"models--x/snapshots/abc (see {sys.prefix}/lib/python3/site-packages/transformers/modeling_utils.py)"
            "\nTraceback line two: /root/secret/file.py"
        )


UNLISTED = ["/etc/passwd", "~/.ssh/id_rsa", "HuggingFaceTB/SmolLM2-1.7B-Instruct", "org/model", "../default",
            "DEFAULT", "org/../../etc", "a\x00b"]


@pytest.mark.parametrize("name", UNLISTED)
def test_demo_refuses_an_unlisted_model_and_loads_nothing(name: str, tmp_path: Path) -> None:
    loader = RecordingLoader()
    wb = Workbench(loader, cache=tmp_path, allow_models=["org/*"] if ".." in name else ())
    cb = Callbacks(wb, steer_enabled=True)
    messages = [cb.load(name)[-1], cb.probe(name, NORMAL)[-1], cb.guard(name, NORMAL)[-1],
                cb.lens(name, NORMAL, 3)[-1], cb.graft(name, NORMAL, 5, SOURCE_MEAN, "", 2)[-1],
                cb.compare(["default", name], 12)[-1], cb.steer(name, NORMAL, "ablate", 1.0, 2)[-1]]
    for message in messages:
        assert message.startswith("⚠️ This demo does not serve the model"), message
        assert "default, default-aligned" in message
    # The workbench refuses too, whoever calls it (the widget's list is not trusted).
    for call in (wb.model, wb.probe_fit, wb.guard, wb.test_report, wb.refusal_direction):
        with pytest.raises(ModelRefusedError):
            call(name)
    assert loader.calls == [] and wb.load_counts() == {} and wb.failures() == {}
    assert not any(key[1] == name for key in wb._locks), "a refused name must not even get a lock"


def test_demo_serves_typed_names_only_behind_allow_models(tmp_path: Path) -> None:
    loader = RecordingLoader()
    wb = Workbench(loader, cache=tmp_path, allow_models=["org/*", "/data/models/*", "exact/name"])
    assert wb.offered() == ["default", "default-aligned", "exact/name"] and wb.custom_names
    assert [wb.allowed(n) for n in ("org/m", "org/sub/m", "Org/m", "/data/models/x", "/data/models/../x",
                                    "/data/other", "exact/name", "exact/name2", "default")] == [
        True, True, False, True, False, False, True, False, True]
    cb = Callbacks(wb)
    assert "could not be loaded" in cb.load("org/m")[-1] and loader.calls == ["org/m"]
    assert "does not serve" in cb.load("elsewhere/m")[-1] and loader.calls == ["org/m"]
    # The page: the picker accepts typed names (a wildcard pattern) and lists the exact ones.
    picker = next(b for b in build_app(wb).blocks.values() if getattr(b, "elem_id", None) == "model_picker")
    assert [c[0] for c in picker.choices] == ["default", "default-aligned", "exact/name"] and picker.allow_custom_value
    exact_only = Workbench(loader, cache=tmp_path, allow_models=["exact/name"])
    assert not exact_only.custom_names
    picker = next(b for b in build_app(exact_only).blocks.values() if getattr(b, "elem_id", None) == "model_picker")
    assert [c[0] for c in picker.choices] == ["default", "default-aligned", "exact/name"]
    assert not picker.allow_custom_value
    with pytest.raises(ihs.InputError, match="list of patterns"):
        Workbench(loader, allow_models="org/*")


@pytest.fixture()
def served() -> Iterator[Any]:
    """Serve build_app(workbench) on a free loopback port; yields a function that starts one and returns its URL."""
    apps: list[gr.Blocks] = []

    def serve(wb: Workbench, steer_enabled: bool = False) -> str:
        app = build_app(wb, steer_enabled=steer_enabled)
        port = free_port()
        app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, share=False)
        apps.append(app)
        return f"http://127.0.0.1:{port}/"

    yield serve
    for app in apps:
        app.close()


def test_demo_web_client_asking_for_an_unlisted_model_is_refused(served: Any, tmp_path: Path) -> None:
    from gradio_client import Client

    # No opt-in: the picker takes no typed value, and a client sending one anyway loads nothing.
    loader = RecordingLoader()
    wb = Workbench(loader, cache=tmp_path)
    client = Client(served(wb), verbose=False)
    for name in ("/etc/passwd", "HuggingFaceTB/SmolLM2-1.7B-Instruct"):
        for api, args in (("/load_model", (name,)), ("/probe", (name, NORMAL)), ("/compare", ([name], 12))):
            try:
                *_, message = client.predict(*args, api_name=api)
            except Exception as e:  # noqa: BLE001 - gradio's own check of the choices may refuse it first
                message = str(e)
            assert "not in the list of choices" in message or "does not serve" in message, (api, message)
    assert loader.calls == [] and wb.load_counts() == {} and wb.failures() == {}

    # With --allow-models 'org/*' the picker takes typed names, so the refusal comes from the callback itself;
    # an allowed name that fails comes back without the server's paths.
    loader = RecordingLoader()
    wb = Workbench(loader, cache=tmp_path, allow_models=["org/*"])
    client = Client(served(wb), verbose=False)
    *_, message = client.predict("/etc/passwd", api_name="/load_model")
    assert message.startswith("⚠️ This demo does not serve the model '/etc/passwd'"), message
    *_, message = client.predict("other/model", NORMAL, api_name="/probe")
    assert "does not serve" in message and loader.calls == []
    *_, message = client.predict("org/model", NORMAL, api_name="/probe")
    assert message.startswith("⚠️ The model could not be loaded. Could not load model 'org/model'"), message
    _no_server_paths(message, "Traceback line two")
    assert loader.calls == ["org/model"] and wb.load_counts() == {}


def test_demo_messages_to_clients_carry_no_server_paths(tmp_path: Path) -> None:
    home = str(Path.home())
    assert public_message(f"No such model path: {home}/models/x. Pass a directory") == \
        "No such model path: <path>/x. Pass a directory"
    assert public_message("can't reach 'https://huggingface.co/org/m' from C:\\Users\\me\\x") == \
        "can't reach 'https://huggingface.co/org/m' from <path>/x"
    assert public_message("bad /data/models/m (in /opt/x/y)", keep=["/data/models/m"]) == "bad /data/models/m (in <path>/y)"
    assert public_message(public_message(f"in {home}/a/b")) == "in <path>/b"  # cleaning twice changes nothing

    loader = RecordingLoader()
    cb = Callbacks(Workbench(loader, cache=tmp_path, allow_models=["org/*", "/srv/models/*"]))
    for name in ("org/model", "/srv/models/m"):
        first = cb.load(name)[-1]
        again = cb.probe(name, NORMAL)[-1]  # the remembered failure, not a second load
        compared = cb.compare([name], 12)[-1]
        for message in (first, again, compared):
            assert "Could not load model" in message and name in message, message
            _no_server_paths(message, "Traceback line two", "/srv/models/m/")
        assert again == first
    assert loader.calls == ["org/model", "/srv/models/m"]

    # Errors the workbench does not expect (not an ihs-sight error) are cut down the same way.
    unexpected = Callbacks(Workbench(RecordingLoader(fail=RuntimeError), cache=tmp_path, allow_models=["org/*"]))
    message = unexpected.load("org/model")[-1]
    assert message.startswith("⚠️ Something went wrong (RuntimeError: Could not load model 'org/model'"), message
    _no_server_paths(message, "Traceback line two")


def test_demo_remembers_failures_as_bounded_messages(tmp_path: Path) -> None:
    loader = RecordingLoader()
    wb = Workbench(loader, cache=tmp_path, allow_models=["broken-*"])
    for i in range(3 * MAX_FAILURES):
        with pytest.raises(ModelFailedError):
            wb.model(f"broken-{i}")
    failures = wb.failures()
    assert len(failures) == MAX_FAILURES and len(loader.calls) == 3 * MAX_FAILURES
    assert list(failures) == [f"broken-{i}" for i in range(2 * MAX_FAILURES, 3 * MAX_FAILURES)]  # oldest dropped
    assert all(type(m) is str for m in wb._failures.values())
    # A repeated request raises a fresh error with the same message, no chained exception, and a
    # traceback that does not grow from one request to the next (the old code re-raised one object).
    depths, messages = [], set()
    for _ in range(20):
        try:
            wb.model(f"broken-{3 * MAX_FAILURES - 1}")
        except ModelFailedError as e:
            assert e.__context__ is None and e.__cause__ is None
            depths.append(len(traceback.extract_tb(e.__traceback__)))
            messages.add(str(e))
    assert len(set(depths)) == 1 and len(messages) == 1
    assert len(loader.calls) == 3 * MAX_FAILURES  # remembered: not loaded again


def _rss_bytes() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _settled_rss() -> int:
    gc.collect()
    return _rss_bytes()


@pytest.fixture(scope="module")
def broken_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A loadable model directory of an architecture ihs-sight does not support (OPT, ~6.5 MB of
    fp32 weights) with the default model's tokenizer: load_model loads it, then fails in arch_for."""
    from transformers import OPTConfig, OPTForCausalLM

    path = tmp_path_factory.mktemp("broken-model")
    source = gguf_to_safetensors(default_gguf_path())
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / name, path / name)
    torch.manual_seed(0)
    config = OPTConfig(vocab_size=49152, hidden_size=32, word_embed_proj_dim=32, num_hidden_layers=1, ffn_dim=64,
                       num_attention_heads=2, max_position_embeddings=64)
    OPTForCausalLM(config).save_pretrained(path)
    return path


def test_demo_failed_loads_do_not_grow_memory(broken_model_dir: Path, tmp_path: Path) -> None:
    """50 requests, each loading a whole (unsupported) model that then fails: RSS grows by <= 50 MB.

    Each request names another link to the same directory, so each really loads (the old code
    kept every failure's exception, whose traceback held the loaded model: ~6.5 MB a request).
    """
    links = tmp_path / "models"
    links.mkdir()
    for i in range(52):
        (links / f"broken-{i}").symlink_to(broken_model_dir, target_is_directory=True)
    wb = Workbench(lambda name: ihs.load_model(name, device="cpu"), cache=tmp_path,
                   allow_models=[f"{links}/broken-*"])
    cb = Callbacks(wb)
    for i in (50, 51):  # warm up: transformers' lazy imports, tokenizer and allocator pools
        assert "OPTForCausalLM is not supported" in cb.load(f"{links}/broken-{i}")[-1]
    before = _settled_rss()
    for i in range(50):
        *_, message = cb.load(f"{links}/broken-{i}")
        assert message.startswith("⚠️ The model could not be loaded. Architecture OPTForCausalLM is not supported"), message
    grown = _settled_rss() - before
    assert grown <= 50 * 2**20, f"RSS grew by {grown / 2**20:.0f} MB over 50 failing loads"
    assert len(wb.failures()) == 52 and wb.load_counts() == {}
    _no_server_paths(" ".join(wb.failures().values()), str(links))


# ---------------------------------------------------------------------------- binding beyond loopback


def test_demo_warns_when_bound_beyond_loopback(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                               tmp_path: Path) -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.1.1", "LOCALHOST"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.10", "example.org", ""))
    assert exposure_warning("127.0.0.1", 7860) is None
    launched: list[tuple[gr.Blocks, dict[str, Any]]] = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: launched.append((self, kw)))
    wb = Workbench(RecordingLoader(), cache=tmp_path)
    with caplog.at_level(logging.WARNING, logger="ihs_sight_demo.app"):
        launch("127.0.0.1", 7861, workbench=wb, preload=())
        assert not [r for r in caplog.records if "anyone who can reach" in r.getMessage()]
        launch("0.0.0.0", 7862, workbench=wb, preload=())
    warned = [r.getMessage() for r in caplog.records if "anyone who can reach" in r.getMessage()]
    assert warned == [("warning: the demo binds 0.0.0.0:7862, not loopback: anyone who can reach this port can run "
                       "models on this machine (its CPU, memory and disk), with no authentication.")]
    assert [kw["server_name"] for _, kw in launched] == ["127.0.0.1", "0.0.0.0"]
    assert all(kw["share"] is False for _, kw in launched)

    # launch(allow_models=...) builds the process-wide workbench with those patterns.
    monkeypatch.setattr(demo_app, "_DEFAULT_WORKBENCH", None)
    launch("127.0.0.1", 7863, preload=(), allow_models=["org/*"])
    picker = next(b for b in launched[-1][0].blocks.values() if getattr(b, "elem_id", None) == "model_picker")
    assert picker.allow_custom_value and demo_app.default_workbench().allow_models == ("org/*",)
    with pytest.raises(ihs.InputError):
        launch("127.0.0.1", 7864, workbench=wb, allow_models=["org/*"])


def test_cli_demo_passes_allow_models_and_warns_on_one_stderr_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from ihs_sight_cli.app import app as cli_app
    from typer.testing import CliRunner

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(demo_app, "launch", lambda **kw: calls.append(kw))
    result = CliRunner().invoke(cli_app, ["demo", "--host", "0.0.0.0", "--port", "7999", "--allow-models", "org/*",
                                          "--allow-models", "/data/models/*,exact/name"])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [exposure_warning("0.0.0.0", 7999)]
    assert calls == [{"host": "0.0.0.0", "port": 7999, "allow_models": ["org/*", "/data/models/*", "exact/name"],
                      "warn": False}]
    result = CliRunner().invoke(cli_app, ["demo"])
    assert result.exit_code == 0 and result.stderr == ""
    assert calls[-1] == {"host": "127.0.0.1", "port": 7860, "allow_models": [], "warn": False}


# ---------------------------------------------------------------------------- steer


@pytest.fixture()
def one_thread() -> Iterator[None]:
    """Torch on one thread: generation on a shared two-core box runs far slower on two."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def steer_workbench(model: ihs.Model, states_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Workbench:
    return make_workbench(model, states_cache, probe_dir=tmp_path_factory.mktemp("steer"),
                          direction_options=CHEAP_DIRECTION)


@pytest.fixture(scope="module")
def cheap_direction(model: ihs.Model) -> ihs.Direction:
    """The library's refusal direction with :data:`CHEAP_DIRECTION`, computed here, independently of the demo."""
    with torch_threads(1):
        return ihs.refusal_direction(model, progress=False, **CHEAP_DIRECTION)


def _tab_ids(app: gr.Blocks) -> set[str]:
    return {b.elem_id for b in app.blocks.values() if isinstance(getattr(b, "elem_id", None), str)}


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(("mode", "factor"), [("ablate", None), ("add", 2.0)])
def test_demo_steer_matches_library_and_plain_generation(
    steer_workbench: Workbench, model: ihs.Model, cheap_direction: ihs.Direction, mode: str, factor: float | None
) -> None:
    clean, steered, summary, message = Callbacks(steer_workbench, steer_enabled=True).steer(
        "default", PHISHING, mode, factor, STEER_TOKENS)
    _ok(message)
    # The direction the callback used: the library's, with the workbench's options, computed once.
    direction = steer_workbench.refusal_direction("default")
    assert direction == cheap_direction
    # With steering: an independent library call on the same direction and prompt.
    scale = None if factor is None else factor * direction.norm
    ref = ihs.steer(model, [PHISHING], direction, mode=mode, scale=scale, generate=STEER_TOKENS, progress=False)
    assert steered == ref.texts[0]
    # Without steering: plain greedy generation with transformers, same prompt and token count.
    ids = encode(model.tokenizer, [PHISHING])[0]
    with torch.no_grad():
        out = model.hf.generate(input_ids=torch.tensor([ids]), max_new_tokens=STEER_TOKENS, do_sample=False,
                                pad_token_id=model.pad_id)
    assert clean == model.tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
    assert clean != steered, "steering changed nothing: the test would not tell the two replies apart"
    # The judge's verdicts (the shipped judge, each reply read with its prompt) and the direction's layer.
    before, after = ihs.default_judge().many([clean, steered], [PHISHING, PHISHING])
    verdict = {True: "refusal", False: "no refusal"}
    assert f"| refusal judge | {verdict[before]} | {verdict[after]} |" in summary
    assert f"Refusal direction of **default**: layer {direction.layer}," in summary
    assert ref.records[0].refusal == after
    if mode == "add":
        assert f"added at layer {direction.layer}, scaled to 2 × its norm ({scale:.{DECIMALS}f})" in summary


@pytest.mark.usefixtures("one_thread")
def test_demo_steer_endpoint_serves_loopback_clients(served: Any, steer_workbench: Workbench) -> None:
    from gradio_client import Client

    client = Client(served(steer_workbench, steer_enabled=True), verbose=False)
    n = 4
    got = client.predict("default", NORMAL, "ablate", 1.0, n, api_name="/steer")
    direct = Callbacks(steer_workbench, steer_enabled=True).steer("default", NORMAL, "ablate", 1.0, n)
    _ok(got[-1])
    assert tuple(got[:3]) == direct[:3]


def test_demo_steer_direction_is_computed_once_with_library_defaults(
    model: ihs.Model, tmp_path: Path, steer_workbench: Workbench, monkeypatch: pytest.MonkeyPatch
) -> None:
    direction = steer_workbench.refusal_direction("default")
    calls: list[tuple[Any, ...]] = []

    def spy(m: ihs.Model, *args: Any, **kw: Any) -> ihs.Direction:
        calls.append((m, args, kw))
        time.sleep(0.3)  # long enough for every thread to arrive while the first one computes
        return direction

    monkeypatch.setattr(ihs, "refusal_direction", spy)
    wb = make_workbench(model, tmp_path)
    got: list[ihs.Direction] = []
    threads = [threading.Thread(target=lambda: got.append(wb.refusal_direction("default"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # The library's defaults (the bundled train split), computed once, kept on disk for a new workbench.
    assert calls == [(model, (), {"progress": False})] and len(got) == 4 and all(d is direction for d in got)
    assert make_workbench(model, tmp_path).refusal_direction("default") == direction and len(calls) == 1
    # Other options are another cache entry.
    make_workbench(model, tmp_path, direction_options={"n_val": 4}).refusal_direction("default")
    assert len(calls) == 2 and calls[-1][2] == {"progress": False, "n_val": 4}


def test_demo_steer_is_absent_and_refused_beyond_loopback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, served: Any
) -> None:
    from gradio_client import Client

    loader = RecordingLoader()
    wb = Workbench(loader, cache=tmp_path)
    # The callback refuses, whoever calls it, before it checks or loads anything.
    for cb in (Callbacks(wb), Callbacks(wb, steer_enabled=False)):
        assert cb.steer("default", MALICIOUS, "ablate", 1.0, 2) == (None, None, None, f"⚠️ {STEER_OFF}")
    assert loader.calls == [] and wb.load_counts() == {}
    # launch() leaves the tab and its endpoint out beyond loopback.
    launched: list[gr.Blocks] = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: launched.append(self))
    for host in ("0.0.0.0", "192.168.1.10", "::", "127.0.0.1", "localhost", "::1"):
        launch(host, 7865, workbench=wb, preload=(), warn=False)
    for app, exposed in zip(launched, [True] * 3 + [False] * 3):
        names = {fn.api_name for fn in app.fns.values()}
        assert ("tab_steer" in _tab_ids(app)) is not exposed and ("steer" in names) is not exposed
        assert "probe" in names
    monkeypatch.undo()
    # A web client of an app without the tab finds no steer endpoint to call.
    client = Client(served(wb), verbose=False)
    with pytest.raises(Exception, match="steer"):
        client.predict("default", MALICIOUS, "ablate", 1.0, 2, api_name="/steer")
    assert loader.calls == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("default", "", "ablate", 1.0, 2), "prompt is empty"),
        (("default", None, "add", 1.0, 2), "prompt is empty"),
        (("default", NORMAL, "add", float("nan"), 2), "scale must be a number between 0 and 4, got nan"),
        (("default", NORMAL, "add", float("inf"), 2), "scale must be a number between 0 and 4"),
        (("default", NORMAL, "add", -0.5, 2), "scale must be a number between 0 and 4, got -0.5"),
        (("default", NORMAL, "add", 4.5, 2), "scale must be a number between 0 and 4, got 4.5"),
        (("default", NORMAL, "add", "lots", 2), "scale must be a number between 0 and 4, got 'lots'"),
        (("default", NORMAL, "add", None, 2), "scale must be a number"),
        (("default", NORMAL, "sideways", 1.0, 2), "Pick a mode: 'ablate' or 'add'"),
        (("default", NORMAL, "none", 1.0, 2), "Pick a mode: 'ablate' or 'add'"),
        (("default", NORMAL, "ablate", 1.0, 0), "New tokens must be a whole number between 1 and 32"),
        (("default", NORMAL, "ablate", 1.0, 33), "New tokens must be a whole number between 1 and 32"),
        (("org/model", NORMAL, "ablate", 1.0, 2), ("Steering serves the bundled models only: pick one of default, "
                                                   "default-aligned ('org/model' is served by the other tabs only)")),
        (("HuggingFaceTB/SmolLM2-1.7B-Instruct", NORMAL, "ablate", 1.0, 2), "does not serve the model"),
        (("", NORMAL, "ablate", 1.0, 2), "Pick a model"),
    ],
)
def test_demo_steer_turns_bad_input_into_a_message(args: tuple[Any, ...], expected: str, tmp_path: Path) -> None:
    # "org/*" is allowed for the other tabs: steering still takes the bundled models only.
    loader = RecordingLoader()
    wb = Workbench(loader, cache=tmp_path, allow_models=["org/*"])
    *outputs, message = Callbacks(wb, steer_enabled=True).steer(*args)
    assert message.startswith("⚠️") and expected in message, message
    assert all(o is None for o in outputs)
    assert loader.calls == [] and wb.load_counts() == {}  # refused before anything loads
    with pytest.raises(ModelRefusedError, match="bundled models only"):
        wb.refusal_direction("org/model")
    assert loader.calls == []
