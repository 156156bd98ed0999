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
   on request and kept in memory.

The train split's hidden states go through the library's states cache (``cache=``), so a
second process, or the tests, reuse them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import ihs_sight as ihs
from ihs_sight.errors import IhsSightError, InputError
from ihs_sight.guard import Guard
from ihs_sight.io import replace_dir, write_text
from ihs_sight.models import cache_dir
from ihs_sight.probe import LayerProbe, ProbeReport, probe, probe_transfer
from ihs_sight.prompts import sha, template_fingerprint

log = logging.getLogger(__name__)

BUNDLED_MODELS = ("default", "default-aligned")
"""The model names the picker offers; any local path or Hub id may be typed as well."""
CLASSIFIER = "logreg"
"""The demo's probe: logistic regression on each layer's standardised last-token state."""
SEED = 0
"""Seeds the probe's train/held-out split (``ihs_sight.probe.probe``'s ``random_state``)."""
TRAIN_LABELS = ("normal", "malicious")
COMPARE_SETS = ("normal", "malicious", "jailbreak")
"""The canonical test split's sets the Compare tab scores (jailbreaks count as malicious)."""
PROBE_FORMAT = 3  # bumped when the fast probe engine or the guard's fit changes (3: per-layer Newton fits)
"""Bump when what goes into a cached probe changes, so old files are not reused."""

Loader = Callable[[str], ihs.Model]
K = TypeVar("K")
V = TypeVar("V")


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
    """

    def __init__(
        self,
        loader: Loader | None = None,
        *,
        cache: bool | str | Path = True,
        probe_dir: str | Path | None = None,
        max_models: int = 4,
    ) -> None:
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
        self._failures: dict[str, IhsSightError] = {}
        self._fits: dict[str, ProbeFit] = {}
        self._guards: dict[str, Guard] = {}
        self._reports: dict[tuple[str, int], tuple[ProbeReport, ihs.PromptSet]] = {}
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

    # ------------------------------------------------------------------ models

    def model(self, name: str, *, retry: bool = False) -> ihs.Model:
        """The model called ``name``, loaded on first use and reused afterwards.

        A load that failed with an ihs-sight error is remembered, so that every request does
        not pay for a doomed load again; ``retry=True`` (the model picker) tries once more.

        Raises:
            ihs_sight.errors.ModelLoadError: the loader could not load it.
            InputError: ``max_models`` models are held already.
        """
        found = self._models.get(name)
        if found is not None:
            return found
        with self._lock("load", name):
            found = self._models.get(name)
            if found is not None:
                return found
            failed = self._failures.get(name)
            if failed is not None and not retry:
                raise failed
            with self._guard:
                if len(self._models) >= self.max_models:
                    raise InputError(
                        f"The demo keeps at most {self.max_models} models in memory ({', '.join(self._models)} "
                        "are loaded); pick one of them, or restart the demo to load others."
                    )
            log.info("loading model %r", name)
            try:
                model = self._loader(name)
            except IhsSightError as e:
                self._failures[name] = e
                raise
            with self._guard:
                self._models[name] = model
                self._loads[name] += 1
                self._failures.pop(name, None)
            return model

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

    def _probe_key(self, model: ihs.Model) -> str:
        template = template_fingerprint(model.tokenizer, chat=True, system_prompt=None)
        train = self.train_set()
        parts = {"format": PROBE_FORMAT, "weights": model.weights_hash, "template": template,
                 "prompts": [sha(p.text) + ":" + str(p.label) for p in train],
                 "classifier": CLASSIFIER, "seed": SEED}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]

    def probe_fit(self, name: str) -> ProbeFit:
        """Model ``name``'s probe: read from memory or disk, else fitted once on the train split."""
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

    # ------------------------------------------------------------------ compare

    def test_report(self, name: str, n: int | None = None) -> tuple[ProbeReport, ihs.PromptSet]:
        """Model ``name``'s probe scored on the canonical test split (or an ``n``-prompt sample of it).

        Returns:
            The :func:`ihs_sight.probe.probe_transfer` report (overall accuracy per layer, and
            per label in ``groups``) and the prompts it scored.
        """
        prompts = self.test_set(n)

        def score() -> tuple[ProbeReport, ihs.PromptSet]:
            fit, model = self.probe_fit(name), self.model(name)
            with self.running(name):
                states = ihs.extract(model, prompts, cache=self.cache, progress=False)
            return probe_transfer(fit.probe, states, group_by=("label",), progress=False), prompts

        return self._once(self._reports, (name, len(prompts)), ("report", name), score)
