"""ihs-sight: explain LLM safety through intermediate hidden states.

    >>> import ihs_sight as ihs
    >>> model = ihs.load_model()                 # bundled SmolLM2-135M-Instruct, offline
    >>> data = ihs.load_prompts()                # normal / malicious / jailbreak
    >>> states = ihs.extract(model, data.test.head(32))
"""

from __future__ import annotations

from .anatomy import FamilyAnatomy, GroupReading, JailbreakAnatomy, Projections, jailbreak_anatomy, project
from .deprecations import IhsSightDeprecationWarning, moved
from .directions import Candidate, Direction, direction_cosines, harmfulness_direction, refusal_direction
from .emotions import EmotionProfile, InducedLexicon, Lexicon, induce_lexicon, load_lexicon
from .errors import (
    CacheWarning,
    DefaultModelNotInstalledError,
    IhsSightError,
    InputError,
    ModelLoadError,
    RemoteError,
    UnsupportedArchitectureError,
)
from .extract import ExtractMeta, HiddenStates, extract
from .graft import GraftResult, SweepResult, graft, graft_sweep
from .guard import Guard, GuardEvaluation, GuardFitReport, GuardScores, JailbreakSignal
from .judge import PhraseJudge, RefusalJudge, ReplyJudge, default_judge, shipped_judge
from .lens import Consistency, LensResult, compare_consistency, logit_lens
from .models import ARCHITECTURES, ArchSpec, Model, load_model
from .probe import LayerProbe, ProbeReport, probe, probe_transfer
from .prompts import Prompt, PromptSet, load_prompts
from .steer import DirectionWarning, SteeredPrompt, SteerMeta, SteerResult, steer
from .wrappers import wrap

__all__ = [
    "ARCHITECTURES",
    "ArchSpec",
    "CacheWarning",
    "Candidate",
    "Consistency",
    "DefaultModelNotInstalledError",
    "Direction",
    "DirectionWarning",
    "EmotionProfile",
    "ExtractMeta",
    "FamilyAnatomy",
    "GraftResult",
    "GroupReading",
    "Guard",
    "GuardEvaluation",
    "GuardFitReport",
    "GuardScores",
    "HiddenStates",
    "IhsSightDeprecationWarning",
    "IhsSightError",
    "InducedLexicon",
    "InputError",
    "JailbreakAnatomy",
    "JailbreakSignal",
    "LayerProbe",
    "LensResult",
    "Lexicon",
    "Model",
    "ModelLoadError",
    "PhraseJudge",
    "ProbeReport",
    "Projections",
    "Prompt",
    "PromptSet",
    "RefusalJudge",
    "RemoteError",
    "ReplyJudge",
    "SteerMeta",
    "SteerResult",
    "SteeredPrompt",
    "SweepResult",
    "UnsupportedArchitectureError",
    "compare_consistency",
    "default_judge",
    "direction_cosines",
    "extract",
    "graft",
    "graft_sweep",
    "harmfulness_direction",
    "induce_lexicon",
    "jailbreak_anatomy",
    "load_lexicon",
    "load_model",
    "load_prompts",
    "logit_lens",
    "probe",
    "probe_transfer",
    "project",
    "refusal_direction",
    "shipped_judge",
    "steer",
    "wrap",
]
__version__ = "0.1.0"

# Modules that moved into ihs_sight.runtime (the shared batch loop and its parts).
__getattr__ = moved(__name__, {name: ("ihs_sight.runtime", name) for name in ("packing", "compiled", "cache")})
