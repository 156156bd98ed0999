"""The Gradio app: one prompt, four views of what the model's layers make of it.

- **Probe**: P(malicious) at every layer from per-layer logistic-regression probes fitted on
  the canonical train split, and the verdict at the layer whose held-out accuracy is best.
- **Lens**: the logit lens of the prompt's last token, top-k tokens per layer coloured by
  emotion, and the emotion lexicons' probability mass against the layer.
- **Graft**: overwrite the last-token state at one layer with the mean state of the normal
  train prompts (or another prompt's state) and compare next-token distributions and greedy
  continuations before and after.
- **Guard**: the early-exit guard's decision (P(malicious) at one early layer, the forward
  pass stopped there) and the "recognised but not converted" jailbreak signal.
- **Compare**: the probes' accuracy against the layer on the canonical test split, per set,
  for the base model and its refusal-tuned variant.
- **Steer** (loopback only): the reply without steering and with the model's refusal direction
  ablated or added, side by side, each read by the shipped refusal judge; bundled models only.

Every callback is a method of :class:`Callbacks` that validates the web inputs, calls the
library (``ihs_sight.extract``, ``LayerProbe.predict_proba``, ``logit_lens``, ``graft``,
``probe_transfer``) and ``ihs_sight.plots``, and formats the result. Numbers go to tables
beside the plots: probabilities and accuracies rounded to :data:`DECIMALS` places, emotion
masses to :data:`MASS_DIGITS` significant digits. A bad input never raises: the tab's
message line says what to change. Models, probes and reports live in a shared
:class:`ihs_sight_demo.state.Workbench`, so each model is loaded once per process.

What a web client can do is bounded on the server, not by the widgets (a client may send any
value): only the bundled models load unless the operator passes ``allow_models`` patterns
(``ihs-sight demo --allow-models PATTERN``), every callback checks the name against them
before anything is loaded, and the messages a client sees carry no server paths
(:func:`ihs_sight_demo.state.public_message`). :func:`launch` warns when it binds anything but
loopback: whoever reaches the port can run models on the machine. Steering is served only when
the app binds loopback (:func:`build_app`'s ``steer_enabled``, set by :func:`launch` from the
host): ablating the refusal direction removes the model's safety behaviour, so beyond loopback
the tab and its endpoint do not exist and :meth:`Callbacks.steer` refuses whoever calls it.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

# Before any model loads: nnsight gives every object a ``save`` attribute, and anyio's
# TypedAttributeSet subclasses (imported lazily by the server's first request) then fail with
# "Attribute 'save' is missing its type annotation", so a demo that loaded a model first served
# nothing. Importing the backend now builds those classes while ``object`` is still plain.
import anyio._backends._asyncio  # noqa: E402, F401
import anyio.abc  # noqa: E402, F401
import gradio as gr
import pandas as pd

import ihs_sight as ihs
from ihs_sight.errors import IhsSightError, InputError, ModelLoadError
from ihs_sight.graft import graft
from ihs_sight.lens import logit_lens, middle_band
from ihs_sight.plots.lens import display_token
from ihs_sight.steer import SteerMode, SteerResult

from .state import BUNDLED_MODELS, CLASSIFIER, COMPARE_SETS, PublicError, Workbench, public_message

log = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 2000
"""Longest prompt (characters) the demo accepts."""
MAX_MODEL_NAME_CHARS = 300
MAX_TOP_K = 10
MAX_NEW_TOKENS = 24
DEFAULT_NEW_TOKENS = 12
"""Greedy tokens per continuation in the Graft tab (CPU generation runs at a few tokens/s)."""
GRAFT_TOP_K = 10
"""Next-token candidates listed before and after the graft."""
MIN_COMPARE_PROMPTS = 6
DECIMALS = 4
"""Places every probability and accuracy is rounded to in the tables."""
MASS_DIGITS = 4
"""Significant digits of the emotion masses (they span many orders of magnitude)."""
CONCURRENCY_LIMIT = 2
"""Events running at once; traces on one model are serialised by the workbench anyway."""
QUEUE_SIZE = 32
"""Requests waiting in the queue before new ones are turned away."""
SOURCE_MEAN = "mean normal state"
SOURCE_PROMPT = "another prompt"
STEER_MODES: tuple[SteerMode, ...] = ("ablate", "add")
"""The Steer tab's modes; the reply without steering (mode ``none``) is always shown beside."""
MAX_STEER_SCALE = 4.0
"""Largest ``add`` scale in the Steer tab, as a multiple of the refusal direction's norm (the difference
in means at its layer; 1 is the library's default scale). Allowed: 0 to this, finite."""
DEFAULT_STEER_SCALE = 1.0
STEER_NEW_TOKENS = 32
"""Greedy tokens per reply in the Steer tab: the default and the most (two replies a run, on a CPU)."""
STEER_DEFAULT_MODEL = "default-aligned"
"""The Steer tab's preselected model: the refusal-tuned one, whose refusals ablation removes."""

F = TypeVar("F", bound=Callable[..., Any])

_DEFAULT_WORKBENCH: Workbench | None = None
_DEFAULT_LOCK = threading.Lock()


def default_workbench(allow_models: Sequence[str] | None = None) -> Workbench:
    """The process-wide workbench the app uses when none is given.

    Args:
        allow_models: its ``allow_models`` patterns when this call creates it (default: none,
            the bundled models only); an existing one with other patterns is an error.
    """
    global _DEFAULT_WORKBENCH
    with _DEFAULT_LOCK:
        if _DEFAULT_WORKBENCH is None:
            _DEFAULT_WORKBENCH = Workbench(allow_models=allow_models or ())
        elif allow_models is not None and tuple(allow_models) != _DEFAULT_WORKBENCH.allow_models:
            raise InputError("The demo's workbench exists already with other allowed models; "
                             "pass workbench=Workbench(allow_models=...) instead.")
        return _DEFAULT_WORKBENCH


def load_counts(workbench: Workbench | None = None) -> dict[str, int]:
    """How many times each model was loaded in this process (the page shows the same counter)."""
    return (workbench or default_workbench()).load_counts()


# ---------------------------------------------------------------------------- input checks


def _text(value: Any, what: str) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise InputError(f"The {what} must be text, got {type(value).__name__}.")
    text = value.strip()
    if not text:
        raise InputError(f"The {what} is empty: type a request, e.g. \"How do I bake bread?\".")
    if len(text) > MAX_PROMPT_CHARS:
        raise InputError(f"The {what} has {len(text)} characters; the demo accepts at most {MAX_PROMPT_CHARS}. "
                         "Shorten it.")
    return text


def _model_name(value: Any, wb: Workbench) -> str:
    """The picked model's name, if ``wb`` serves it: checked here, whatever the widget allowed."""
    name = value.strip() if isinstance(value, str) else ""
    if not name:
        more = " or type another name this server allows" if wb.custom_names else ""
        raise InputError(f"Pick a model ({', '.join(wb.offered())}){more}.")
    if len(name) > MAX_MODEL_NAME_CHARS:
        raise InputError(f"The model name has {len(name)} characters; at most {MAX_MODEL_NAME_CHARS} are accepted.")
    return wb.check(name)


def _integer(value: Any, what: str, low: int, high: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a whole number between {low} and {high}, got {value!r}.") from None
    if not number.is_integer() or not low <= number <= high:
        raise InputError(f"{what} must be a whole number between {low} and {high}, got {value!r}.")
    return int(number)


def _number(value: Any, what: str, low: float, high: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number between {low:g} and {high:g}, got {value!r}.") from None
    if not math.isfinite(number) or not low <= number <= high:
        raise InputError(f"{what} must be a number between {low:g} and {high:g}, got {value!r}.")
    return number


def _mass(value: float) -> str:
    return f"{value:.{MASS_DIGITS - 1}e}"


def _done(started: float, extra: str = "") -> str:
    return f"✓ done in {time.perf_counter() - started:.1f} s{extra}"


def _friendly(n_outputs: int, keep: Sequence[int] = ()) -> Callable[[F], F]:
    """Turn any exception into a message in the tab's last output.

    The other outputs are cleared (stale plots next to an error would mislead), except those
    whose index is in ``keep``, which are left as they are. The message is the error's
    client-safe text (:func:`_shown`); the full error goes to the server's log only.
    """

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except ModelLoadError as e:
                message = f"⚠️ The model could not be loaded. {_shown(e)}"
            except IhsSightError as e:
                message = f"⚠️ {_shown(e)}"
            except Exception as e:  # the server must survive anything a request triggers
                log.exception("demo callback %s failed", fn.__name__)
                message = (f"⚠️ Something went wrong ({type(e).__name__}: {_shown(e)}). "
                           "The demo is still running; try another input.")
            cleared = [gr.skip() if i in keep else None for i in range(n_outputs - 1)]
            return (*cleared, message)

        return wrapper  # type: ignore[return-value]

    return decorate


class _NothingToCompare(PublicError, InputError):
    """Every model of a Compare request failed; the message lists their (client-safe) errors."""


class SteerDisabledError(PublicError, InputError):
    """Steering was asked of an app that does not serve it (it binds beyond loopback)."""


STEER_OFF = ("Steering is off in this demo: it binds an address other than loopback, and ablating the refusal "
             "direction removes the model's safety behaviour. Run `ihs-sight demo` on 127.0.0.1 to steer.")


def _shown(error: BaseException) -> str:
    """What a web client sees of ``error``: its message as it is when the workbench made it safe, else
    :func:`ihs_sight_demo.state.public_message` (first line, no server paths)."""
    return str(error) if isinstance(error, PublicError) else public_message(error)


# ---------------------------------------------------------------------------- callbacks


class Callbacks:
    """The app's event handlers, callable as plain functions (tests do).

    Args:
        workbench: where models, probes and directions are kept.
        steer_enabled: whether :meth:`steer` serves requests (the app binds loopback); off, it
            refuses every call, whatever the page shows.
    """

    def __init__(self, workbench: Workbench, *, steer_enabled: bool = False) -> None:
        self.wb = workbench
        self.steer_enabled = steer_enabled

    @_friendly(3, keep=(1,))
    def load(self, model_name: str) -> tuple[str, Any, str]:
        """Load the picked model: a line describing it, and the Graft layer slider fitted to its depth."""
        name = _model_name(model_name, self.wb)
        model = self.wb.model(name, retry=True)
        lo, _ = middle_band(model.n_layers)
        slider = gr.Slider(minimum=0, maximum=model.n_layers, value=lo)
        status = (f"**{name}**: {type(model.hf).__name__}, {model.n_layers} blocks (layers 0..{model.n_layers}), "
                  f"d_model {model.d_model}, {str(model.dtype).removeprefix('torch.')}")
        return status, slider, "✓ model ready"

    @_friendly(4)
    def probe(self, model_name: str, prompt: str) -> tuple[pd.DataFrame, pd.DataFrame, str, str]:
        """P(malicious) per layer for one prompt, and the verdict at the probe's best layer."""
        started = time.perf_counter()
        name, text = _model_name(model_name, self.wb), _text(prompt, "prompt")
        fit = self.wb.probe_fit(name)
        model = self.wb.model(name)
        with self.wb.running(name):
            states = ihs.extract(model, [text], cache=False, progress=False)
        positive = list(fit.probe.classes_).index("malicious")
        proba = fit.probe.predict_proba(states)[0, :, positive]
        labels = fit.probe.predict(states)[0]
        layers = list(fit.probe.layers_)
        table = pd.DataFrame({"layer": layers, "P(malicious)": [round(float(p), DECIMALS) for p in proba]})
        best = fit.report.best_layer
        j = layers.index(best)
        accuracy = fit.report.scores[CLASSIFIER].accuracy[fit.report.layers.index(best)]
        verdict = (f"### Verdict at the best layer ({best}): **{labels[j]}**, P(malicious) = {proba[j]:.{DECIMALS}f}\n"
                   f"Layer {best} has the best held-out accuracy ({accuracy:.{DECIMALS}f} on {fit.report.n_test} "
                   f"train-split prompts the probe never saw); the per-layer logistic regressions were fitted on "
                   f"the other {fit.report.n_train} prompts of the canonical train split (normal vs malicious).")
        return table, table, verdict, _done(started)

    @_friendly(3)
    def guard(self, model_name: str, prompt: str) -> tuple[pd.DataFrame, str, str]:
        """The early-exit guard's decision and the jailbreak signal for one prompt."""
        started = time.perf_counter()
        name, text = _model_name(model_name, self.wb), _text(prompt, "prompt")
        g = self.wb.guard(name)
        with self.wb.running(name):
            sig = g.jailbreak_signal([text])
        p, flagged, emo = sig.p_malicious[0], sig.recognised[0], sig.emotion_score[0]
        r = g.report
        table = pd.DataFrame({
            "quantity": ["guard layer", "blocks run", "P(malicious)", "threshold", "flagged",
                         f"emotion score (layers {sig.band[0]}-{sig.band[1]})", "jailbreak signal"],
            "value": [str(g.layer), f"{g.layer} of {g.model.n_layers}", f"{p:.{DECIMALS}f}",
                      f"{g.threshold:.{DECIMALS}f}", str(flagged), f"{emo:.{MASS_DIGITS}g}", str(sig.signal[0])],
        })
        verdict = "**flagged as malicious**" if flagged else "**passes**"
        lines = [f"### Guard: {verdict} (P(malicious) = {p:.{DECIMALS}f}, threshold {g.threshold:.{DECIMALS}f})",
                 (f"Read at layer {g.layer}: the forward pass stopped after {g.layer} of {g.model.n_layers} blocks. "
                  f"Scored out of fold on its {r.n_prompts} train prompts, the threshold flags {r.calibration_fpr:.1%} "
                  f"of the normal ones (target {r.target_fpr:.0%}) and {r.calibration_tpr:.1%} of the malicious ones.")]
        if sig.signal[0]:
            lines.append("**Jailbreak signal**: recognised as malicious early, yet the late layers lean positive "
                         f"(emotion score {emo:.{MASS_DIGITS}g} > 0): no refusal is forming.")
        elif flagged:
            lines.append(f"Recognised, and the late layers lean negative (emotion score {emo:.{MASS_DIGITS}g}): a "
                         "refusal is forming.")
        return table, "\n\n".join(lines), _done(started)

    @_friendly(5)
    def lens(self, model_name: str, prompt: str, top_k: float) -> tuple[Any, Any, pd.DataFrame, pd.DataFrame, str]:
        """The prompt's logit lens: top-k tokens per layer and emotion mass per layer."""
        started = time.perf_counter()
        name, text = _model_name(model_name, self.wb), _text(prompt, "prompt")
        k = _integer(top_k, "top-k", 1, MAX_TOP_K)
        model = self.wb.model(name)
        with self.wb.running(name):
            result = logit_lens(model, [text], top_k=k, progress=False)
        tokens = result.tokens()[0]
        rows: list[dict[str, Any]] = []
        for j, layer in enumerate(result.layers):
            row: dict[str, Any] = {"layer": layer}
            for r in range(k):
                token_id = int(result.token_ids[0, j, r])
                mark = {"positive": " (+)", "negative": " (−)", "neutral": " (○)"}.get(
                    result.token_category.get(token_id, ""), "")
                row[f"#{r + 1}"] = display_token(tokens[j][r], width=24) + mark
                row[f"p#{r + 1}"] = round(float(result.probs[0, j, r]), DECIMALS)
            rows.append(row)
        profile = result.emotions(name="this prompt")
        masses = pd.DataFrame({"layer": profile.layers,
                               **{f"{cat} mass": [_mass(v) for v in profile.mass[cat]] for cat in profile.mass}})
        heatmap = result.heatmap(title=f"Top-{k} logit-lens tokens of the prompt's last token")
        curves = profile.plot(title="Emotion mass of the prompt's lens against the layer")
        return heatmap, curves, pd.DataFrame(rows), masses, _done(started)

    @_friendly(6)
    def graft(
        self, model_name: str, prompt: str, layer: float, source: str, source_prompt: str, new_tokens: float
    ) -> tuple[pd.DataFrame, str, str, str, Any, str]:
        """Graft at one layer: next-token top-k and greedy continuations before and after."""
        started = time.perf_counter()
        name, text = _model_name(model_name, self.wb), _text(prompt, "prompt")
        n_new = _integer(new_tokens, "New tokens", 1, MAX_NEW_TOKENS)
        model = self.wb.model(name)
        at = _integer(layer, "The graft layer", 0, model.n_layers)
        if source == SOURCE_MEAN:
            donors: Any = self.wb.data().train.normal
            described = f"the mean layer-{at} state of the {len(donors)} normal train-split prompts"
            cache = self.wb.cache
        elif source == SOURCE_PROMPT:
            donors = [_text(source_prompt, "source prompt")]
            described = f"the layer-{at} state of the source prompt"
            cache = False  # user text is not written to the states cache
        else:
            raise InputError(f"Pick a source: {SOURCE_MEAN!r} or {SOURCE_PROMPT!r}.")
        with self.wb.running(name):
            result = graft(model, [text], donors, layer=at, generate=n_new, top_k=GRAFT_TOP_K, cache=cache,
                           progress=False)
        t = result.targets[0]
        table = pd.DataFrame({
            "rank": list(range(1, len(t.topk_ids_before) + 1)),
            "before: token": [display_token(s, width=24) for s in t.topk_tokens_before],
            "before: p": [round(p, DECIMALS) for p in t.topk_probs_before],
            "after: token": [display_token(s, width=24) for s in t.topk_tokens_after],
            "after: p": [round(p, DECIMALS) for p in t.topk_probs_after],
        })
        verdicts = {True: "refusal", False: "no refusal", None: "not judged"}
        summary = (
            f"Grafted {described} onto the prompt's last token at layer {at}.\n\n"
            f"| | before | after |\n|---|---|---|\n"
            f"| top-1 token | `{display_token(t.top1_token_before)}` | `{display_token(t.top1_token_after)}` |\n"
            f"| negative-lexicon mass | {t.neg_mass_before:.{DECIMALS}f} | {t.neg_mass_after:.{DECIMALS}f} |\n"
            f"| positive-lexicon mass | {t.pos_mass_before:.{DECIMALS}f} | {t.pos_mass_after:.{DECIMALS}f} |\n"
            f"| refusal judge | {verdicts[t.refusal_before]} | {verdicts[t.refusal_after]} |\n\n"
            f"Top-1 {'changed' if t.flipped else 'unchanged'}."
        )
        return (table, t.text_before or "", t.text_after or "", summary, result.plot(), _done(started))

    @_friendly(3)
    def compare(self, models: Sequence[str] | None, n_prompts: float) -> tuple[pd.DataFrame, pd.DataFrame, str]:
        """Probe accuracy against the layer on the canonical test split, per set, for each model."""
        started = time.perf_counter()
        if models is not None and (isinstance(models, str) or not isinstance(models, Sequence)):
            raise InputError("The models to compare must be a list of names.")
        names = list(dict.fromkeys(_model_name(m, self.wb) for m in (models or [])))
        if not names:
            raise InputError(f"Tick at least one model to compare ({', '.join(BUNDLED_MODELS)}).")
        total = len(self.wb.test_set())
        n = _integer(n_prompts, "The number of test prompts", MIN_COMPARE_PROMPTS, total)
        long_rows: list[dict[str, Any]] = []
        wide: dict[str, list[float]] = {}
        layers: list[int] = []
        problems: list[str] = []
        scored = 0
        for name in names:
            try:
                report, prompts = self.wb.test_report(name, n)
            except IhsSightError as e:  # one model failing must not hide the others
                problems.append(f"⚠️ {name}: {_shown(e)}")
                continue
            scored = len(prompts)
            layers = report.layers
            curves = {"all": report.scores[CLASSIFIER].accuracy}
            for label in COMPARE_SETS:
                group = report.groups.get(f"label:{label}")
                if group is not None:
                    curves[label] = group.accuracy[CLASSIFIER]
            for label, values in curves.items():
                series = f"{name}: {label}"
                wide[series] = [round(v, DECIMALS) for v in values]
                long_rows += [{"layer": layer, "accuracy": v, "series": series} for layer, v in zip(layers, wide[series])]
        if not wide:
            raise _NothingToCompare(" ".join(problems).removeprefix("⚠️ ") or "Nothing to compare.")
        table = pd.DataFrame({"layer": layers, **wide})
        note = f" ({scored} test prompts per model)" + ("\n\n" + "\n\n".join(problems) if problems else "")
        return pd.DataFrame(long_rows), table, _done(started, note)

    @_friendly(4)
    def steer(
        self, model_name: str, prompt: str, mode: str, scale: float | None, new_tokens: float = STEER_NEW_TOKENS
    ) -> tuple[str, str, str, str]:
        """The reply without steering and with the refusal direction ablated or added, each judged.

        Both replies come from :func:`ihs_sight.steer` on the same path (mode ``none``, then
        ``mode``), greedy, ``new_tokens`` tokens at most; ``scale`` (``add`` only) is a multiple
        of the direction's norm, 0 to :data:`MAX_STEER_SCALE`.
        """
        started = time.perf_counter()
        if not self.steer_enabled:  # checked here, not only by leaving the tab out: any client may call
            raise SteerDisabledError(STEER_OFF)
        name = self.wb.check_bundled(_model_name(model_name, self.wb))
        text = _text(prompt, "prompt")
        chosen = next((m for m in STEER_MODES if m == mode), None)
        if chosen is None:
            raise InputError(f"Pick a mode: {' or '.join(repr(m) for m in STEER_MODES)}.")
        factor = _number(scale, "The scale", 0.0, MAX_STEER_SCALE) if chosen == "add" else None
        n_new = _integer(new_tokens, "New tokens", 1, STEER_NEW_TOKENS)
        direction = self.wb.refusal_direction(name)
        model = self.wb.model(name)
        judge = self.wb.judge()
        amount = None if factor is None else factor * direction.norm
        with self.wb.running(name):
            clean = ihs.steer(model, [text], direction, mode="none", generate=n_new, judge=judge, progress=False)
            steered = ihs.steer(model, [text], direction, mode=chosen, scale=amount, generate=n_new, judge=judge,
                                progress=False)
        return (clean.records[0].text or "", steered.records[0].text or "",
                _steer_summary(name, direction, clean, steered, factor), _done(started))


def _steer_summary(name: str, direction: ihs.Direction, clean: SteerResult, steered: SteerResult,
                   factor: float | None) -> str:
    before, after = clean.records[0], steered.records[0]
    verdicts = {True: "refusal", False: "no refusal", None: "not judged"}
    if steered.mode == "ablate":
        how = "projected out of the residual stream at every layer, position and generated token"
    else:
        how = (f"added at layer {direction.layer}, scaled to {factor:g} × its norm "
               f"({steered.meta.scale:.{DECIMALS}f}), at every position and generated token")
    n_cand = len(direction.candidates)
    return (
        f"Refusal direction of **{name}**: layer {direction.layer}, position {direction.position} (counted back "
        f"from the end of the templated prompt), norm {direction.norm:.{DECIMALS}f}; a difference in means of "
        f"{direction.n_harmful} malicious and {direction.n_harmless} normal train-split prompts, chosen among "
        f"{n_cand} candidate{'s' * (n_cand != 1)} on {direction.n_val} + {direction.n_val} held-out ones.\n\n"
        f"**{steered.mode}**: the direction {how}.\n\n"
        f"| | without steering | with steering ({steered.mode}) |\n|---|---|---|\n"
        f"| refusal judge | {verdicts[before.refusal]} | {verdicts[after.refusal]} |\n"
        f"| next-token top-1 | `{display_token(before.topk_tokens[0])}` | `{display_token(after.topk_tokens[0])}` |\n"
        f"| negative-lexicon mass | {before.neg_mass:.{DECIMALS}f} | {after.neg_mass:.{DECIMALS}f} |\n"
        f"| positive-lexicon mass | {before.pos_mass:.{DECIMALS}f} | {after.pos_mass:.{DECIMALS}f} |\n\n"
        f"Greedy replies of at most {clean.meta.max_new_tokens} tokens; judge: {clean.meta.judge}."
    )


# ---------------------------------------------------------------------------- layout


_INTRO = """\
# ihs-sight: what a model's layers make of a prompt
Explain LLM safety through intermediate hidden states. Pick a model, type a prompt, then run
each tab. Layer 0 is the embeddings; layer *l* is the output of block *l*. The first Probe run
for a model extracts the canonical train split's hidden states and fits its probes, which takes
a few minutes on a CPU; afterwards they are cached on disk.
"""
_STEER_NOTE = f"""\
**Steering, for research.** Ablating the refusal direction removes the model's safety behaviour: the
reply *with* steering may comply with a harmful request. This tab serves the bundled models only and
exists only while the demo binds loopback. The first run for a model computes its refusal direction
on the bundled train split (minutes on a CPU); afterwards it is cached on disk. Each reply is at most
{STEER_NEW_TOKENS} greedy tokens; *add* scales the direction by a multiple of its norm, 0 to {MAX_STEER_SCALE:g}
(1: the difference in means itself).
"""
_STEER_OFF_NOTE = "*The Steer tab is off: this demo binds an address other than loopback.*"


def build_app(workbench: Workbench | None = None, *, steer_enabled: bool = False) -> gr.Blocks:
    """The demo as a ``gr.Blocks`` with its queue set up (concurrency limit, queue size).

    Args:
        workbench: where models, probes and reports are kept (default: the process-wide one).
        steer_enabled: add the Steer tab and its ``steer`` endpoint. Only for an app bound to
            loopback (:func:`launch` passes ``is_loopback(host)``): ablating the refusal direction
            removes the model's safety behaviour. Off (the default), neither exists and the
            callback refuses.

    Returns:
        The app; serve it with ``.launch(server_name="127.0.0.1", ...)`` or :func:`launch`.
    """
    wb = workbench or default_workbench()
    cb = Callbacks(wb, steer_enabled=steer_enabled)
    examples = _examples(wb)
    with gr.Blocks(title="ihs-sight demo") as app:
        gr.Markdown(_INTRO if steer_enabled else _INTRO + "\n" + _STEER_OFF_NOTE)
        with gr.Row():
            offered = wb.offered()
            model_name = gr.Dropdown(
                choices=offered, value=offered[0], allow_custom_value=wb.custom_names, label="Model",
                info=", ".join(offered) + (", or type another model this server allows" if wb.custom_names else ""),
                elem_id="model_picker", scale=2,
            )
            with gr.Column(scale=3):
                model_status = gr.Markdown(elem_id="model_status")
                model_msg = gr.Markdown(elem_id="model_msg")
                counter = gr.Markdown(wb.counter_text(), elem_id="load_counter")
        prompt = gr.Textbox(label="Prompt", lines=3, max_length=MAX_PROMPT_CHARS, elem_id="prompt_box",
                            placeholder=f"A request to the model (at most {MAX_PROMPT_CHARS} characters)")
        if examples:
            gr.Examples(examples=examples, inputs=prompt, label="Prompts from the canonical test split")

        with gr.Tabs():
            with gr.Tab("Probe", id="probe", elem_id="tab_probe"):
                probe_btn = gr.Button("Run probe", variant="primary", elem_id="probe_btn")
                probe_msg = gr.Markdown(elem_id="probe_msg")
                probe_verdict = gr.Markdown(elem_id="probe_verdict")
                with gr.Row():
                    probe_plot = gr.LinePlot(x="layer", y="P(malicious)", y_lim=[0, 1], label="P(malicious) per layer",
                                             elem_id="probe_plot", scale=3)
                    probe_table = gr.Dataframe(label="P(malicious) per layer", elem_id="probe_table",
                                               headers=["layer", "P(malicious)"], interactive=False, max_height=1400,
                                               scale=2)
            with gr.Tab("Lens", id="lens", elem_id="tab_lens"):
                with gr.Row():
                    top_k = gr.Slider(1, MAX_TOP_K, value=5, step=1, precision=0, label="top-k tokens per layer",
                                      elem_id="lens_k")
                    lens_btn = gr.Button("Run lens", variant="primary", elem_id="lens_btn")
                lens_msg = gr.Markdown(elem_id="lens_msg")
                with gr.Row():
                    lens_heatmap = gr.Plot(label="Top tokens per layer, coloured by emotion", show_label=False,
                                           elem_id="lens_heatmap")
                    lens_tokens = gr.Dataframe(label="Top-k tokens and probabilities per layer "
                                               "((+) positive, (−) negative, (○) neutral lexicon)",
                                               headers=["layer"], elem_id="lens_tokens", interactive=False,
                                               max_height=1400)
                lens_curves = gr.Plot(label="Emotion mass against the layer", show_label=False, elem_id="lens_emotions")
                lens_mass = gr.Dataframe(label="Emotion lexicon mass per layer (full-vocabulary lens probability)",
                                         headers=["layer", "positive mass", "negative mass", "neutral mass"],
                                         elem_id="lens_mass", interactive=False, max_height=1400)
            with gr.Tab("Graft", id="graft", elem_id="tab_graft"):
                with gr.Row():
                    graft_layer = gr.Slider(0, 30, value=15, step=1, precision=0, label="graft layer",
                                            elem_id="graft_layer")
                    graft_tokens = gr.Slider(1, MAX_NEW_TOKENS, value=DEFAULT_NEW_TOKENS, step=1, precision=0,
                                             label="new tokens (greedy)", elem_id="graft_tokens")
                with gr.Row():
                    graft_source = gr.Radio([SOURCE_MEAN, SOURCE_PROMPT], value=SOURCE_MEAN, label="source state",
                                            elem_id="graft_source")
                    graft_source_prompt = gr.Textbox(label="source prompt (for 'another prompt')", lines=2,
                                                     max_length=MAX_PROMPT_CHARS, elem_id="graft_source_prompt")
                graft_btn = gr.Button("Run graft", variant="primary", elem_id="graft_btn")
                graft_msg = gr.Markdown(elem_id="graft_msg")
                with gr.Row():
                    graft_before = gr.Textbox(label="continuation before", lines=3, interactive=False,
                                              elem_id="graft_before")
                    graft_after = gr.Textbox(label="continuation after the graft", lines=3, interactive=False,
                                             elem_id="graft_after")
                graft_summary = gr.Markdown(elem_id="graft_summary")
                with gr.Row():
                    graft_table = gr.Dataframe(label="Next-token distribution before and after", elem_id="graft_table",
                                               headers=["rank", "before: token", "before: p", "after: token", "after: p"],
                                               interactive=False, max_height=800)
                    graft_plot = gr.Plot(label="Lexicon mass before and after", show_label=False, elem_id="graft_plot")
            with gr.Tab("Guard", id="guard", elem_id="tab_guard"):
                guard_btn = gr.Button("Run guard", variant="primary", elem_id="guard_btn")
                guard_msg = gr.Markdown(elem_id="guard_msg")
                guard_verdict = gr.Markdown(elem_id="guard_verdict")
                guard_table = gr.Dataframe(label="Early-exit guard", headers=["quantity", "value"], elem_id="guard_table",
                                           interactive=False)
            with gr.Tab("Compare", id="compare", elem_id="tab_compare"):
                total = len(wb.test_set())
                with gr.Row():
                    compare_models = gr.CheckboxGroup(offered, value=list(BUNDLED_MODELS),
                                                      label="models (base vs aligned)", elem_id="compare_models")
                    compare_n = gr.Slider(MIN_COMPARE_PROMPTS, total, value=total, step=1, precision=0,
                                          label=f"test prompts (label-stratified sample; {total} = the whole "
                                                "canonical test split: slow on a CPU)", elem_id="compare_n")
                compare_btn = gr.Button("Run compare", variant="primary", elem_id="compare_btn")
                compare_msg = gr.Markdown(elem_id="compare_msg")
                compare_plot = gr.LinePlot(x="layer", y="accuracy", color="series", y_lim=[0, 1],
                                           label="Probe accuracy per layer on the test split (jailbreaks count as "
                                           "malicious)", elem_id="compare_plot")
                compare_table = gr.Dataframe(label="Accuracy per layer", headers=["layer"], elem_id="compare_table",
                                             interactive=False, max_height=1400)
            if steer_enabled:
                with gr.Tab("Steer", id="steer", elem_id="tab_steer"):
                    gr.Markdown(_STEER_NOTE)
                    with gr.Row():
                        steer_model = gr.Dropdown(choices=list(BUNDLED_MODELS), value=STEER_DEFAULT_MODEL,
                                                  allow_custom_value=False, label="model (bundled only)",
                                                  elem_id="steer_model")
                        steer_mode = gr.Radio(list(STEER_MODES), value=STEER_MODES[0], label="mode",
                                              info="ablate: project the direction out everywhere; add: add it at "
                                              "its layer", elem_id="steer_mode")
                        steer_scale = gr.Number(value=DEFAULT_STEER_SCALE, step=0.25,
                                                label=f"scale (add only): × the direction's norm, 0 to "
                                                f"{MAX_STEER_SCALE:g}", elem_id="steer_scale")
                        steer_tokens = gr.Slider(1, STEER_NEW_TOKENS, value=STEER_NEW_TOKENS, step=1, precision=0,
                                                 label="new tokens (greedy)", elem_id="steer_tokens")
                    steer_btn = gr.Button("Run steer", variant="primary", elem_id="steer_btn")
                    steer_msg = gr.Markdown(elem_id="steer_msg")
                    with gr.Row():
                        steer_clean = gr.Textbox(label="reply without steering", lines=4, interactive=False,
                                                 elem_id="steer_clean")
                        steer_steered = gr.Textbox(label="reply with steering", lines=4, interactive=False,
                                                   elem_id="steer_steered")
                    steer_summary = gr.Markdown(elem_id="steer_summary")

        def refresh_counter() -> str:
            return wb.counter_text()

        events = [
            model_name.change(cb.load, [model_name], [model_status, graft_layer, model_msg], api_name="load_model"),
            probe_btn.click(cb.probe, [model_name, prompt], [probe_plot, probe_table, probe_verdict, probe_msg],
                            api_name="probe"),
            lens_btn.click(cb.lens, [model_name, prompt, top_k],
                           [lens_heatmap, lens_curves, lens_tokens, lens_mass, lens_msg], api_name="lens"),
            graft_btn.click(cb.graft, [model_name, prompt, graft_layer, graft_source, graft_source_prompt, graft_tokens],
                            [graft_table, graft_before, graft_after, graft_summary, graft_plot, graft_msg],
                            api_name="graft"),
            guard_btn.click(cb.guard, [model_name, prompt], [guard_table, guard_verdict, guard_msg], api_name="guard"),
            compare_btn.click(cb.compare, [compare_models, compare_n], [compare_plot, compare_table, compare_msg],
                              api_name="compare"),
        ]
        if steer_enabled:
            events.append(steer_btn.click(cb.steer, [steer_model, prompt, steer_mode, steer_scale, steer_tokens],
                                          [steer_clean, steer_steered, steer_summary, steer_msg], api_name="steer"))
        for event in events:
            event.then(refresh_counter, None, counter, api_visibility="private", queue=False)
        # Show the picked model's description (loading it once per process) when a page opens.
        app.load(cb.load, [model_name], [model_status, graft_layer, model_msg], api_visibility="private").then(
            refresh_counter, None, counter, api_visibility="private", queue=False)
    app.queue(default_concurrency_limit=CONCURRENCY_LIMIT, max_size=QUEUE_SIZE)
    return app


def _examples(wb: Workbench) -> list[list[str]]:
    try:
        test = wb.data().test
        return [[s[0].text] for s in (test.normal, test.malicious, test.jailbreak) if len(s)]
    except IhsSightError:  # the bundled data is part of the package; never block the page on it
        return []


# ---------------------------------------------------------------------------- serving


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _warm(wb: Workbench, name: str) -> None:
    try:
        wb.probe_fit(name)
    except Exception as e:  # noqa: BLE001 - the page reports it when the model is used
        log.warning("could not prepare model %r in the background: %s", name, e)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves this machine only (``localhost``, ``127.0.0.0/8``, ``::1``)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, port: int) -> str | None:
    """The warning :func:`launch` gives when ``host`` is not loopback; ``None`` when it is."""
    if is_loopback(host):
        return None
    return (f"warning: the demo binds {host}:{port}, not loopback: anyone who can reach this port can run "
            "models on this machine (its CPU, memory and disk), with no authentication.")


def launch(host: str = "127.0.0.1", port: int = 7860, *, workbench: Workbench | None = None,
           preload: Sequence[str] = ("default",), allow_models: Sequence[str] | None = None,
           warn: bool = True) -> None:
    """Serve the demo until interrupted (``ihs-sight demo``). Never shared publicly.

    Args:
        host: interface to bind; the default serves this machine only. Anything but loopback
            logs :func:`exposure_warning` and leaves the Steer tab out (``build_app(steer_enabled=False)``).
        port: TCP port (0: any free one).
        workbench: where models and probes are kept (default: the process-wide one).
        preload: models to load, and whose probes to fit, in the background at start.
        allow_models: fnmatch-style patterns of model names (local paths, Hub ids) clients may
            load besides the bundled ones (``Workbench(allow_models=...)``); default: none.
            Not with ``workbench`` (give the workbench its patterns).
        warn: log the exposure warning (the CLI prints it itself and passes ``False``).
    """
    if workbench is not None and allow_models:
        raise InputError("Pass allow_models to the Workbench you give, not to launch().")
    wb = workbench or default_workbench(allow_models)
    port = port or free_port(host)
    message = exposure_warning(host, port)
    if message and warn:
        log.warning("%s", message)
    steer_enabled = is_loopback(host)
    if not steer_enabled:
        log.info("the Steer tab is off: the demo binds %s, not loopback", host)
    app = build_app(wb, steer_enabled=steer_enabled)
    for name in preload:
        if wb.allowed(name):
            threading.Thread(target=_warm, args=(wb, name), name=f"warm-{name}", daemon=True).start()
    app.launch(server_name=host, server_port=port, share=False, show_error=False)


__all__ = ["Callbacks", "SteerDisabledError", "build_app", "default_workbench", "exposure_warning", "free_port", "is_loopback", "launch",
           "load_counts"]
