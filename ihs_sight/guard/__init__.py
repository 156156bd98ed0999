"""The early-exit safety guard: features read up to one layer, the layer and threshold chosen out of fold.

:mod:`.features` (one layer's states or every token's, the pass stopped there), :mod:`.selection`
(readings, folds incl. leave-one-family-out, layer rule, calibration, the fit report),
:mod:`.detector` (:class:`Guard` and its results).
"""

from __future__ import annotations

from .detector import (
    GUARD_FORMAT,
    GUARD_FORMAT_VERSION,
    Guard,
    GuardEvaluation,
    GuardScores,
    JailbreakSignal,
    LeftOutEvaluation,
    LeftOutFit,
    ModelMismatchError,
)
from .features import (
    POOLS,
    STATE_POOLS,
    TOKEN_POOLS,
    Pool,
    TokenStates,
    layer_features,
    pool_scores,
    template_prefix,
    template_suffix,
    token_states,
)
from .selection import (
    CLASSIFIERS,
    FOLDS,
    GuardFitReport,
    RateRow,
    check_guard_layer,
    flag_rates,
    pick_layer,
    pooled_rate,
    threshold_at_fpr,
)

__all__ = [
    "CLASSIFIERS",
    "FOLDS",
    "GUARD_FORMAT",
    "GUARD_FORMAT_VERSION",
    "POOLS",
    "STATE_POOLS",
    "TOKEN_POOLS",
    "Guard",
    "GuardEvaluation",
    "GuardFitReport",
    "GuardScores",
    "JailbreakSignal",
    "LeftOutEvaluation",
    "LeftOutFit",
    "ModelMismatchError",
    "Pool",
    "RateRow",
    "TokenStates",
    "check_guard_layer",
    "flag_rates",
    "layer_features",
    "pick_layer",
    "pool_scores",
    "pooled_rate",
    "template_prefix",
    "template_suffix",
    "threshold_at_fpr",
    "token_states",
]
