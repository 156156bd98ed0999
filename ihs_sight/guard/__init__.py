"""The early-exit safety guard: features read up to one layer, the layer and threshold chosen out of fold.

:mod:`.features` (one layer's states, the pass stopped there), :mod:`.selection` (folds, layer
rule, calibration), :mod:`.detector` (:class:`Guard` and its results).
"""

from __future__ import annotations

from .detector import (
    CLASSIFIERS,
    GUARD_FORMAT,
    GUARD_FORMAT_VERSION,
    Guard,
    GuardEvaluation,
    GuardFitReport,
    GuardScores,
    JailbreakSignal,
    ModelMismatchError,
    RateRow,
    check_guard_layer,
    flag_rates,
)
from .features import POOLS, Pool, layer_features, template_prefix
from .selection import pick_layer, threshold_at_fpr

__all__ = [
    "CLASSIFIERS",
    "GUARD_FORMAT",
    "GUARD_FORMAT_VERSION",
    "POOLS",
    "Guard",
    "GuardEvaluation",
    "GuardFitReport",
    "GuardScores",
    "JailbreakSignal",
    "ModelMismatchError",
    "Pool",
    "RateRow",
    "check_guard_layer",
    "flag_rates",
    "layer_features",
    "pick_layer",
    "template_prefix",
    "threshold_at_fpr",
]
