"""What the demo keeps between requests: loaded models, fitted probes and test-split reports.

A :class:`Workbench` is shared by every browser session of a process (the app's callbacks
only read from it), so that:

1. each model is loaded once: a lock per model name, and :meth:`Workbench.load_counts`
   counts the loads (the page shows it);
2. traces on one model never overlap: nnsight installs its hooks on the module itself, so
   two threads tracing the same model would see each other's interventions
   (:meth:`Workbench.running`);
3. each model's probe is fitted once, on the canonical train split (normal vs malicious,
   every layer): ``ihs_sight.probe.probe(..., classifiers=["logreg"])`` fits a logistic
   regression per layer on a stratified 70 % of it, and its accuracy on the other 30 %
   picks the best layer. The fitted probe and its report are kept in memory and on disk
   (``LayerProbe.save``), keyed by the weights hash, the chat template and the train prompts;
4. each model's early-exit guard (:class:`ihs_sight.guard.Guard`) is fitted once on the same
   train prompts and kept in memory and on disk (``Guard.save``), keyed like the probe;
5. the Compare tab's reports (that probe scored on the canonical test split) are computed
   on request and kept in memory;
6. only the bundled models load unless the operator opts in: ``allow_models`` holds
   fnmatch-style patterns of further names (local paths, Hub ids), and every entry point
   (:meth:`Workbench.model`, ``probe_fit``, ``guard``, ``test_report``) refuses any other name
   before it loads or locks anything (:class:`ModelRefusedError`). The widget's list is not
   trusted: a web client can send any string;
7. a failed load is remembered as a client-safe message (:func:`public_message`: its first
   line, server paths replaced), never as the exception, whose traceback would keep the
   loader's locals (a whole model, for an unsupported architecture) alive; at most
   :data:`MAX_FAILURES` of them, least recently used dropped first;
8. each bundled model's refusal direction (the Steer tab's) is computed once with
   ``ihs_sight.refusal_direction``'s defaults (the bundled train split's malicious and normal
   prompts, 64 + 8 per side, 4 candidate layers: minutes on a CPU) and kept in memory and on disk
   (``Direction.save``), keyed like the probe. Only the bundled models are steered, whatever
   ``allow_models`` says (:meth:`Workbench.check_bundled`); the shipped refusal judge that reads
   the replies runs one request at a time (:meth:`Workbench.judge`).

The train split's hidden states go through the library's states cache (``cache=``), so a
second process, or the tests, reuse them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, TypeVar

import ihs_sight as ihs
from ihs_sight.directions import Direction
from ihs_sight.errors import IhsSightError, InputError, ModelLoadError
from ihs_sight.guard import Guard
from ihs_sight.io import replace_dir, write_text
from ihs_sight.judge import RefusalJudge, judge_many, judge_name
from ihs_sight.models import cache_dir
from ihs_sight.probe import LayerProbe, ProbeReport, probe, probe_transfer
from ihs_sight.prompts import sha, template_fingerprint

log = logging.getLogger(__name__)

BUNDLED_MODELS = ("default", "default-aligned")
"""The model names every demo offers; others only through ``Workbench(allow_models=...)``."""
MAX_FAILURES = 64
"""Failed model names remembered (with their message) so a doomed load is not retried on every request."""
MAX_MESSAGE_CHARS = 400
"""Longest error message shown to a web client."""
CLASSIFIER = "logreg"
"""The demo's probe: logistic regression on each layer's standardised last-token state."""
SEED = 0
"""Seeds the probe's train/held-out split (``ihs_sight.probe.probe``'s ``random_state``)."""
TRAIN_LABELS = ("normal", "malicious")
COMPARE_SETS = ("normal", "malicious", "jailbreak")
"""The canonical test split's sets the Compare tab scores (jailbreaks count as malicious)."""
PROBE_FORMAT = 3  # bumped when the fast probe engine or the guard's fit changes (3: per-layer Newton fits)
"""Bump when what goes into a cached probe changes, so old files are not reused."""
DIRECTION_FORMAT = 1
"""Bump when what goes into a cached refusal direction changes (the library's version is in the key too)."""

Loader = Callable[[str], ihs.Model]
K = TypeVar("K")
V = TypeVar("V")

_WILDCARDS = frozenset("*?[")
# An absolute path (POSIX, ~, or a Windows drive / UNC path) that does not continue a word or a
# replaced path ("<path>/x": so that a message can be cleaned twice).
_PATH = re.compile(r"(?<![\w./\\~>-])(?:~|[A-Za-z]:)?[/\\][^\s'\"`,;:()<>\[\]{}]*")
# A URL (left as it is: the Hub's addresses are public), except file: ones.
_URL = re.compile(r"(?<![\w.+-])(?!file:)[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"`<>]*")


class PublicError(IhsSightError):
    """An error whose message is safe to show any web client as it is (no server paths)."""


class ModelRefusedError(PublicError, InputError):
    """The model name is neither bundled nor matched by the demo's ``allow_models`` patterns."""


class ModelFailedError(PublicError, ModelLoadError):
    """A model failed to load; the message is :func:`public_message` of the loader's error."""


class _SerialJudge:
    """A refusal judge that reads one batch at a time: its model is shared by every request of the process.

    It records itself under the wrapped judge's name, so results name the judge that read them.
    """

    def __init__(self, judge: RefusalJudge) -> None:
        self._judge = judge
        self._lock = threading.Lock()
        self.name = judge_name(judge)

    def many(self, texts: list[str], prompts: list[str] | None = None) -> list[bool]:
        with self._lock:
            return judge_many(self._judge, texts, prompts)

    def __call__(self, text: str, prompt: str | None = None) -> bool:
        return self.many([text], None if prompt is None else [prompt])[0]


def _hide_path(match: re.Match[str]) -> str:
    path = match.group(0).rstrip(".")
    tail = match.group(0)[len(path):]
    base = re.split(r"[/\\]", path.rstrip("/\\"))[-1]
    return ("<path>/" + base if base else "<path>") + tail


def public_message(error: BaseException | str, keep: Iterable[str] = ()) -> str:
    """``error``'s message as a web client may see it: the first non-empty line, absolute server
    paths replaced by ``<path>/<base name>``, at most :data:`MAX_MESSAGE_CHARS` characters.

    Args:
        error: an exception (its ``str``) or a message.
        keep: strings left verbatim (the model name the client sent: it tells the client nothing new).
    """
    text = str(error)
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "" if text else type(error).__name__)
    line = line.replace("\x00", "")
    kept = sorted({k for k in keep if k} | set(_URL.findall(line)), key=len, reverse=True)
    for i, k in enumerate(kept):  # set aside, so that the path pattern does not touch them
        line = line.replace(k, f"\x00{i}\x00")
    line = _PATH.sub(_hide_path, line)
    for i, k in enumerate(kept):
        line = line.replace(f"\x00{i}\x00", k)
    return line if len(line) <= MAX_MESSAGE_CHARS else line[: MAX_MESSAGE_CHARS - 1] + "…"


@dataclass(frozen=True)
class ProbeFit:
    """One model's fitted probe and the report of its held-out part of the train split."""

    probe: LayerProbe
    """Logistic regression per layer, fitted on 70 % of the canonical train split."""
    report: ProbeReport
    """Accuracy of ``probe`` per layer on the other 30 %; ``report.best_layer`` is the verdict layer."""
    key: str
    """Cache key: weights hash, template, train prompts, classifier and seed."""
    from_disk: bool
    """Whether it was read from the probe cache rather than fitted in this process."""


class Workbench:
    """Models, probes and reports shared by every session of one demo process.

    Args:
        loader: turns a model name into a :class:`ihs_sight.Model` (default
            :func:`ihs_sight.load_model`); called at most once per name.
        cache: the library's states cache (``True``: the user cache directory, a path: that
            directory, ``False``: none); used for the train split and the test split.
        probe_dir: where fitted probes are stored (default: ``<cache>/probes``, or the user
            cache's ``probes`` directory when ``cache`` is not a path).
        max_models: most models held in memory at once (each takes its weights in RAM).
        allow_models: fnmatch-style patterns (``*``, ``?``, ``[...]``; case-sensitive, ``*``
            crosses ``/``) of model names served besides :data:`BUNDLED_MODELS`, e.g.
            ``"HuggingFaceTB/*"`` or ``"/data/models/*"``. Empty (the default): the bundled
            models only. Names with a ``..`` segment or control characters are always refused.
            Steering is for the bundled models only, whatever the patterns.
        direction_options: keyword arguments of :func:`ihs_sight.refusal_direction` for the
            refusal directions (default: none, the library's defaults); part of their cache key.
            Tests pass a cheap search (``n_train``, ``n_val``, ``layers``).
    """

    def __init__(
        self,
        loader: Loader | None = None,
        *,
        cache: bool | str | Path = True,
        probe_dir: str | Path | None = None,
        max_models: int = 4,
        allow_models: Sequence[str] = (),
        direction_options: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(allow_models, str):
            raise InputError("allow_models takes a list of patterns, not one string.")
        self.direction_options: dict[str, Any] = dict(direction_options or {})
        self.allow_models: tuple[str, ...] = tuple(p.strip() for p in allow_models if p.strip())
        self._loader: Loader = loader or ihs.load_model
        self.cache: bool | str | Path = Path(cache) if isinstance(cache, (str, Path)) else cache
        if probe_dir is not None:
            self.probe_dir = Path(probe_dir)
        elif isinstance(self.cache, Path):
            self.probe_dir = self.cache / "probes"
        else:
            self.probe_dir = cache_dir() / "probes"
        self.max_models = max_models
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str], threading.RLock] = {}
        self._models: dict[str, ihs.Model] = {}
        self._loads: Counter[str] = Counter()
        self._failures: OrderedDict[str, str] = OrderedDict()  # name -> client-safe message, LRU
        self._fits: dict[str, ProbeFit] = {}
        self._guards: dict[str, Guard] = {}
        self._reports: dict[tuple[str, int], tuple[ProbeReport, ihs.PromptSet]] = {}
        self._directions: dict[str, Direction] = {}
        self._judges: dict[str, _SerialJudge] = {}
        self._data: ihs.PromptSet | None = None

    # ------------------------------------------------------------------ locks and data

    def _lock(self, kind: str, name: str) -> threading.RLock:
        with self._guard:
            return self._locks.setdefault((kind, name), threading.RLock())

    def _once(self, store: dict[K, V], key: K, lock: tuple[str, str], make: Callable[[], V]) -> V:
        """``store[key]``, made by ``make()`` once: looked up again under the lock, so a hit never waits."""
        found = store.get(key)
        if found is not None:
            return found
        with self._lock(*lock):
            found = store.get(key)
            if found is None:
                found = store[key] = make()
            return found

    @contextmanager
    def running(self, name: str) -> Iterator[None]:
        """Hold this while tracing model ``name``: one trace per model at a time."""
        with self._lock("run", name):
            yield

    def data(self) -> ihs.PromptSet:
        """The bundled prompt sets, read once."""
        with self._guard:
            if self._data is None:
                self._data = ihs.load_prompts()
            return self._data

    def train_set(self) -> ihs.PromptSet:
        """The canonical train split's normal and malicious prompts, in their file order."""
        return self.data().train.select(label=TRAIN_LABELS)

    def test_set(self, n: int | None = None) -> ihs.PromptSet:
        """The canonical test split's normal, malicious and jailbreak prompts; ``n``: a seeded, label-stratified sample."""
        test = self.data().test
        full = test.normal + test.malicious + test.jailbreak
        return full if n is None or n >= len(full) else full.sample(n, random_state=SEED)

    # ------------------------------------------------------------------ which models

    def offered(self) -> list[str]:
        """The names the picker lists: the bundled models, then the wildcard-free ``allow_models``."""
        extra = [p for p in self.allow_models if not _WILDCARDS & set(p) and p not in BUNDLED_MODELS]
        return [*BUNDLED_MODELS, *dict.fromkeys(extra)]

    @property
    def custom_names(self) -> bool:
        """Whether names outside :meth:`offered` may be typed (some ``allow_models`` pattern has a wildcard)."""
        return any(_WILDCARDS & set(p) for p in self.allow_models)

    def allowed(self, name: str) -> bool:
        """Whether this demo serves model ``name`` (bundled, or matched by an ``allow_models`` pattern)."""
        if name in BUNDLED_MODELS:
            return True
        if not name or not name.isprintable() or ".." in re.split(r"[/\\]", name):
            return False
        return any(fnmatchcase(name, pattern) for pattern in self.allow_models)

    def check(self, name: str) -> str:
        """``name`` if :meth:`allowed`, else :class:`ModelRefusedError` (nothing is loaded or locked)."""
        if not isinstance(name, str) or not self.allowed(name):
            shown = repr(name) if len(str(name)) <= 80 else repr(str(name)[:77] + "...")
            more = " or another name this server allows" if self.custom_names else ""
            raise ModelRefusedError(
                f"This demo does not serve the model {shown}: pick one of {', '.join(self.offered())}{more}."
            )
        return name

    def failures(self) -> dict[str, str]:
        """The remembered failed loads: model name -> the message clients see (at most :data:`MAX_FAILURES`)."""
        with self._guard:
            return dict(self._failures)

    # ------------------------------------------------------------------ models

    def model(self, name: str, *, retry: bool = False) -> ihs.Model:
        """The model called ``name``, loaded on first use and reused afterwards.

        A load that failed with an ihs-sight error is remembered (its client-safe message, not
        the exception), so that every request does not pay for a doomed load again;
        ``retry=True`` (the model picker) tries once more.

        Raises:
            ModelRefusedError: ``name`` is not a model this demo serves.
            ModelFailedError: the loader could not load it (now or before).
            InputError: ``max_models`` models are held already.
        """
        self.check(name)
        found = self._models.get(name)
        if found is not None:
            return found
        with self._lock("load", name):
            found = self._models.get(name)
            if found is not None:
                return found
            with self._guard:
                failed = self._failures.get(name)
                if failed is not None:
                    self._failures.move_to_end(name)
            if failed is not None and not retry:
                raise ModelFailedError(failed)  # a new exception each time: no traceback grows
            with self._guard:
                if len(self._models) >= self.max_models:
                    raise InputError(
                        f"The demo keeps at most {self.max_models} models in memory ({', '.join(self._models)} "
                        "are loaded); pick one of them, or restart the demo to load others."
                    )
            log.info("loading model %r", name)
            failed = None
            try:
                model = self._loader(name)
            except IhsSightError as e:
                # The full text stays on the server; as a str, so that no log record holds the exception.
                log.warning("could not load model %r: %s", name, str(e))
                failed = public_message(e, keep=[name])
            # Raised outside the except block: the new error has no __context__, so nothing keeps the
            # loader's frames (and what they hold) alive.
            if failed is not None:
                self._remember_failure(name, failed)
                raise ModelFailedError(failed)
            with self._guard:
                self._models[name] = model
                self._loads[name] += 1
                self._failures.pop(name, None)
            return model

    def _remember_failure(self, name: str, message: str) -> None:
        with self._guard:
            self._failures[name] = message
            self._failures.move_to_end(name)
            while len(self._failures) > MAX_FAILURES:
                self._failures.popitem(last=False)

    def load_counts(self) -> dict[str, int]:
        """How many times each model name was loaded in this process (1 each, by design)."""
        with self._guard:
            return dict(self._loads)

    def counter_text(self) -> str:
        """The load counter the page shows, e.g. ``Models loaded: default ×1``."""
        counts = self.load_counts()
        listed = ", ".join(f"{name} ×{n}" for name, n in counts.items()) or "none yet"
        return f"Models loaded: {listed}"

    # ------------------------------------------------------------------ probes

    def _train_key(self, model: ihs.Model, **extra: Any) -> str:
        """A cache key of something fitted on the train split: weights hash, template, train prompts and ``extra``."""
        template = template_fingerprint(model.tokenizer, chat=True, system_prompt=None)
        train = self.train_set()
        parts = {"weights": model.weights_hash, "template": template,
                 "prompts": [sha(p.text) + ":" + str(p.label) for p in train], **extra}
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=repr).encode()).hexdigest()[:24]

    def _probe_key(self, model: ihs.Model) -> str:
        return self._train_key(model, format=PROBE_FORMAT, classifier=CLASSIFIER, seed=SEED)

    def probe_fit(self, name: str) -> ProbeFit:
        """Model ``name``'s probe: read from memory or disk, else fitted once on the train split."""
        self.check(name)
        return self._once(self._fits, name, ("fit", name), lambda: self._fit_probe(name))

    def _fit_probe(self, name: str) -> ProbeFit:
        model = self.model(name)
        key = self._probe_key(model)
        fit = self._read_fit(key)
        if fit is None:
            log.info("fitting the %s probe of %r on the canonical train split", CLASSIFIER, name)
            with self.running(name):
                states = ihs.extract(model, self.train_set(), cache=self.cache, progress=False)
            report = probe(states, classifiers=[CLASSIFIER], random_state=SEED, progress=False)
            fit = ProbeFit(probe=report.probes[CLASSIFIER], report=report, key=key, from_disk=False)
            self._write_fit(fit)
        return fit

    def _read_fit(self, key: str) -> ProbeFit | None:
        stem = self.probe_dir / key
        report_path = stem.with_name(f"{key}-report.json")
        if not report_path.is_file():  # written last: the commit marker
            return None
        try:
            report = ProbeReport.model_validate_json(report_path.read_text(encoding="utf-8"))
            fitted = LayerProbe.load(stem)
        except (InputError, ValueError, OSError) as e:
            log.warning("ignoring the cached probe %s (%s); fitting it again", stem, e)
            return None
        return ProbeFit(probe=fitted, report=report, key=key, from_disk=True)

    def _write_fit(self, fit: ProbeFit) -> None:
        self.probe_dir.mkdir(parents=True, exist_ok=True)
        stem = self.probe_dir / fit.key
        # The probe (each of its files written atomically), then the report, atomically and last: it is
        # the commit marker, so a reader never sees half a probe.
        fit.probe.save(stem)
        write_text(stem.with_name(f"{fit.key}-report.json"), fit.report.model_dump_json())

    # ------------------------------------------------------------------ guard

    def guard(self, name: str) -> Guard:
        """Model ``name``'s early-exit guard: from memory or disk, else fitted once on the train split."""
        self.check(name)
        return self._once(self._guards, name, ("guard", name), lambda: self._fit_guard(name))

    def _fit_guard(self, name: str) -> Guard:
        model = self.model(name)
        path = self.probe_dir / f"guard-{self._probe_key(model)}"
        if (path / "guard.json").is_file():
            try:
                return Guard.load(path, model)
            except InputError as e:
                log.warning("ignoring the cached guard %s (%s); fitting it again", path, e)
        log.info("fitting the guard of %r on the canonical train split", name)
        with self.running(name):
            fitted = Guard.fit(model, self.train_set(), random_state=SEED, cache=self.cache, progress=False)
        replace_dir(path, fitted.save)  # built aside, then swapped in whole
        return fitted

    # ------------------------------------------------------------------ steering

    def check_bundled(self, name: str) -> str:
        """``name`` if it is a bundled model, else :class:`ModelRefusedError`: only those are steered.

        Steering needs the model's refusal direction (minutes on a CPU), and ablating it removes
        the model's safety behaviour; ``allow_models`` does not extend to it.
        """
        self.check(name)
        if name not in BUNDLED_MODELS:
            raise ModelRefusedError(f"Steering serves the bundled models only: pick one of {', '.join(BUNDLED_MODELS)} "
                                    f"({name!r} is served by the other tabs only).")
        return name

    def refusal_direction(self, name: str) -> Direction:
        """Bundled model ``name``'s refusal direction: from memory or disk, else computed once.

        Computed by :func:`ihs_sight.refusal_direction` with :attr:`direction_options` (default:
        the library's defaults, on the bundled train split), then saved beside the probes.
        """
        self.check_bundled(name)
        return self._once(self._directions, name, ("direction", name), lambda: self._fit_direction(name))

    def _fit_direction(self, name: str) -> Direction:
        model = self.model(name)
        key = self._train_key(model, format=DIRECTION_FORMAT, kind="refusal", version=ihs.__version__,
                              options=self.direction_options)
        stem = self.probe_dir / f"direction-{key}"
        if stem.with_suffix(".json").is_file():  # written last: the commit marker
            try:
                found = Direction.load(stem)
                if found.weights_hash == model.weights_hash:
                    return found
                log.warning("ignoring the cached direction %s: computed on other weights", stem)
            except InputError as e:
                log.warning("ignoring the cached direction %s (%s); computing it again", stem, e)
        log.info("computing the refusal direction of %r on the bundled train split", name)
        with self.running(name):
            direction = ihs.refusal_direction(model, progress=False, **self.direction_options)
        self.probe_dir.mkdir(parents=True, exist_ok=True)
        direction.save(stem)
        return direction

    def judge(self) -> RefusalJudge:
        """The shipped refusal judge (:func:`ihs_sight.default_judge`), one request at a time."""
        return self._once(self._judges, "default", ("judge", "default"), lambda: _SerialJudge(ihs.default_judge()))

    # ------------------------------------------------------------------ compare

    def test_report(self, name: str, n: int | None = None) -> tuple[ProbeReport, ihs.PromptSet]:
        """Model ``name``'s probe scored on the canonical test split (or an ``n``-prompt sample of it).

        Returns:
            The :func:`ihs_sight.probe.probe_transfer` report (overall accuracy per layer, and
            per label in ``groups``) and the prompts it scored.
        """
        self.check(name)
        prompts = self.test_set(n)

        def score() -> tuple[ProbeReport, ihs.PromptSet]:
            fit, model = self.probe_fit(name), self.model(name)
            with self.running(name):
                states = ihs.extract(model, prompts, cache=self.cache, progress=False)
            return probe_transfer(fit.probe, states, group_by=("label",), progress=False), prompts

        return self._once(self._reports, (name, len(prompts)), ("report", name), score)
