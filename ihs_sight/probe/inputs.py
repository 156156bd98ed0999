"""What a probe takes, checked once at the entry: states ``(n_prompts, L + 1, d_model)`` and labels.

:class:`~ihs_sight.probe.LayerProbe` and :func:`~ihs_sight.probe.probe` both read their inputs
here; the engines behind them trust what they are given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from ..errors import InputError
from ..extract import HiddenStates
from ..layers import check_layers

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


def as_features(states: Any, what: str) -> tuple[torch.Tensor, HiddenStates | None]:
    """(N, L+1, D) float features and the HiddenStates they came from, if any."""
    hs = states if isinstance(states, HiddenStates) else None
    if hs is not None:
        x = hs.states
    elif isinstance(states, torch.Tensor):
        x = states
    elif isinstance(states, np.ndarray):
        if not np.issubdtype(states.dtype, np.number):
            raise InputError(f"{what} must hold numbers, got a numpy array of dtype {states.dtype}.")
        x = torch.from_numpy(np.asarray(states))
    else:
        raise InputError(
            f"{what} must be a HiddenStates, a torch.Tensor or a numpy array of shape (n_prompts, L + 1, d_model); "
            f"got {type(states).__name__}."
        )
    if x.ndim != 3:
        raise InputError(
            f"{what} must have shape (n_prompts, L + 1, d_model); got {tuple(x.shape)}. "
            "For a single layer l of an [N, L+1, D] tensor pass the whole tensor and layers=[l]."
        )
    if min(x.shape) == 0:
        raise InputError(f"{what} is empty (shape {tuple(x.shape)}).")
    x = x.detach()
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = (~finite).nonzero()[0].tolist()
        rows = int((~finite).flatten(1).any(1).sum())
        raise InputError(
            f"{what} hold NaN or inf values (first at prompt {bad[0]}, layer {bad[1]}; {rows} prompt(s) affected). "
            "Drop those prompts or re-extract them (a float16 model can overflow: try dtype='float32')."
        )
    return x, hs


def as_labels(labels: Any, hs: HiddenStates | None, n: int, what: str) -> list[str]:
    """One string label per prompt (from ``labels`` or the HiddenStates)."""
    if labels is None:
        if hs is None or hs.labels is None:
            raise InputError(f"{what} carry no labels; pass labels= with one label per prompt.")
        labels = hs.labels
    if isinstance(labels, str):
        raise InputError("labels must be a sequence with one label per prompt, not a single string.")
    if isinstance(labels, (torch.Tensor, np.ndarray)):
        if labels.ndim != 1:
            raise InputError(f"labels must be one-dimensional; got shape {tuple(labels.shape)}.")
        labels = labels.tolist()
    try:
        items = list(labels)
    except TypeError:
        raise InputError(f"labels must be a sequence, got {type(labels).__name__}.") from None
    if len(items) != n:
        raise InputError(f"{len(items)} labels for {n} prompts in {what}; pass exactly one label per prompt.")
    for i, v in enumerate(items):
        if v is None:
            raise InputError(f"labels[{i}] is None; every prompt needs a label (drop unlabelled prompts).")
    return [str(v) for v in items]


def probe_layers(layers: Any, n_index: int) -> list[int]:
    """The layer indices to probe, sorted and without repeats, of states with ``n_index = L + 1`` layers."""
    return sorted(set(check_layers(layers, n_index - 1)))


def class_order(labels: Sequence[str], positive: str) -> list[str]:
    """``normal`` first, then the positive class, then the rest sorted (the seed's 0, 1, 2 order)."""
    present = sorted(set(labels))
    head = list(dict.fromkeys(c for c in ("normal", positive) if c in present))
    return head + [c for c in present if c not in head]


def positive_class(classes: Sequence[str], positive: str) -> str | None:
    """The class counted as positive in binary metrics (``None`` for more than two classes)."""
    if len(classes) != 2:
        return None
    return positive if positive in classes else classes[1]


def encode(labels: Sequence[str], classes: Sequence[str]) -> IntArray:
    """(n,) class codes: each label's position in ``classes``."""
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[v] for v in labels], dtype=np.int64)


def _require_classes(labels: Sequence[str]) -> None:
    counts = {c: labels.count(c) for c in sorted(set(labels))}
    if len(counts) < 2:
        only = next(iter(counts))
        raise InputError(
            f"The training labels hold a single class ({only!r}, {counts[only]} prompts); a probe needs at least "
            "two. Add prompts with another label (e.g. normal and malicious)."
        )


@dataclass
class TrainingSet:
    """Prompts to fit on, checked: features, labels, their classes and codes, the layers to probe."""

    x: torch.Tensor
    """(N, L+1, D) features."""
    hs: HiddenStates | None
    labels: list[str]
    classes: list[str]
    codes: IntArray
    layers: list[int]


def training_set(states: Any, labels: Any, *, positive: str, layers: Any, what: str) -> TrainingSet:
    """Check and encode what a probe is fitted on (``what`` names ``states`` in messages)."""
    x, hs = as_features(states, what)
    raw = as_labels(labels, hs, x.shape[0], what)
    _require_classes(raw)
    classes = class_order(raw, positive)
    return TrainingSet(x=x, hs=hs, labels=raw, classes=classes, codes=encode(raw, classes),
                       layers=probe_layers(layers, x.shape[1]))


@dataclass
class EvalSet:
    """Prompts to score: features, class codes, and what to group them by."""

    x: torch.Tensor
    codes: IntArray
    raw_labels: list[str]
    texts: list[str] | None
    categories: list[str | None] | None
    families: list[str | None] | None

    @classmethod
    def of(cls, x: torch.Tensor, codes: IntArray, raw_labels: list[str], hs: HiddenStates | None) -> EvalSet:
        """Features and codes, with the categories and families of the HiddenStates they came from."""
        return cls(x=x, codes=codes, raw_labels=raw_labels, texts=list(hs.prompts) if hs is not None else None,
                   categories=list(hs.categories) if hs is not None and hs.categories is not None else None,
                   families=list(hs.families) if hs is not None and hs.families is not None else None)
