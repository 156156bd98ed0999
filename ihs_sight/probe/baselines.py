"""Surface baselines: what a prompt's words or its form alone predict, fit on the same split as a probe.

A probe's accuracy means little without what the text's surface already gives away. Two
classifiers read only the prompt text, never the model:

- ``bag_of_words``: word counts (``CountVectorizer``) and logistic regression, the data card's
  word-cue classifier (``scripts/data_card_stats.py``);
- ``form``: length and punctuation only (words, characters, commas and colons, apostrophes,
  sentences, ends with ``?`` / ``.``, the first word), standardised, logistic regression.

They are fit on exactly the prompts a probe is fit on and scored on the prompts it is scored on,
so ``probe accuracy - best baseline accuracy`` (the *lift*) is what the hidden states add.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from .inputs import IntArray

BASELINES: tuple[str, ...] = ("bag_of_words", "form")


class BaselineScores(BaseModel):
    """Held-out accuracy of each surface baseline (mean over folds when there are several)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    accuracy: dict[str, float]
    """baseline name -> held-out accuracy (``bag_of_words``, ``form``)."""
    accuracy_std: dict[str, float] | None = None
    """baseline name -> standard deviation over folds (``None`` for a single split)."""

    @property
    def best(self) -> float:
        """The higher of the baselines' accuracies."""
        return max(self.accuracy.values())


def form_features(texts: Sequence[str]) -> tuple[np.ndarray[Any, Any], list[list[str]]]:
    """Numeric form features and the first word of each text."""
    numeric = [[len(t.split()), len(t), sum(c in ",;:" for c in t), t.count("'"),
                len(re.findall(r"[.?!](\s|$)", t)), t.rstrip().endswith("?"), t.rstrip().endswith(".")]
               for t in texts]
    first = [[(t.split() or [""])[0].casefold()] for t in texts]
    return np.asarray(numeric, dtype=float), first


def _predict(name: str, train: Sequence[str], y_train: np.ndarray[Any, Any], test: Sequence[str],
             random_state: int) -> np.ndarray[Any, Any]:
    """One baseline fitted on ``train`` and applied to ``test``: predicted codes."""
    if name == "bag_of_words":
        model = make_pipeline(CountVectorizer(), LogisticRegression(max_iter=5000, random_state=random_state))
        return np.asarray(model.fit(list(train), y_train).predict(list(test)))
    ntr, ftr = form_features(train)
    nte, fte = form_features(test)
    scaler, onehot = StandardScaler().fit(ntr), OneHotEncoder(handle_unknown="ignore").fit(ftr)
    xtr = np.hstack([scaler.transform(ntr), onehot.transform(ftr).toarray()])
    xte = np.hstack([scaler.transform(nte), onehot.transform(fte).toarray()])
    lr = LogisticRegression(max_iter=5000, random_state=random_state).fit(xtr, y_train)
    return np.asarray(lr.predict(xte))


def surface_baselines(texts: Sequence[str], codes: IntArray, folds: Sequence[tuple[Any, Any]], *,
                      scored_texts: Sequence[str] | None = None, scored_codes: IntArray | None = None,
                      pooled: bool = False, random_state: int = 0) -> BaselineScores:
    """Accuracy of each baseline on the folds a probe used: fit on each fold's train rows, score its held-out rows.

    Args:
        texts: (N,) the training prompts' texts.
        codes: (N,) their class codes.
        folds: (train rows, scored rows) of each fit; scored rows index ``scored_texts`` when given
            (a separate test set), else ``texts``.
        scored_texts, scored_codes: a separate set of scored prompts.
        pooled: one accuracy over every fold's held-out prompts (leave-one-category-out) instead
            of the mean over folds.
        random_state: seeds the logistic regressions.
    """
    test_texts = list(texts if scored_texts is None else scored_texts)
    test_codes = np.asarray(codes if scored_codes is None else scored_codes)
    per_fold: dict[str, list[float]] = {name: [] for name in BASELINES}
    correct: dict[str, int] = {name: 0 for name in BASELINES}
    total = 0
    for train_rows, test_rows in folds:
        tr = [texts[i] for i in train_rows]
        ytr = np.asarray(codes)[np.asarray(train_rows)]
        te = [test_texts[i] for i in test_rows]
        yte = test_codes[np.asarray(test_rows)]
        total += len(te)
        for name in BASELINES:
            hits = _predict(name, tr, ytr, te, random_state) == yte
            per_fold[name].append(float(hits.mean()))
            correct[name] += int(hits.sum())
    if pooled or len(folds) == 1:
        return BaselineScores(accuracy={name: correct[name] / total for name in BASELINES})
    return BaselineScores(accuracy={k: float(np.mean(v)) for k, v in per_fold.items()},
                          accuracy_std={k: float(np.std(v)) for k, v in per_fold.items()})
