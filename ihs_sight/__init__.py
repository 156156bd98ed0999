"""ihs-sight: explain LLM safety through intermediate hidden states.

    >>> import ihs_sight as ihs
    >>> model = ihs.load_model()                 # bundled SmolLM2-135M-Instruct, offline
    >>> data = ihs.load_prompts()                # normal / malicious / jailbreak
    >>> states = ihs.extract(model, data.test.head(32))
"""

from __future__ import annotations

from .errors import (
    DefaultModelNotInstalledError,
    IhsSightError,
    InputError,
    ModelLoadError,
    RemoteError,
    UnsupportedArchitectureError,
)
from .extract import ExtractMeta, HiddenStates, extract
from .models import ARCHITECTURES, ArchSpec, Model, load_model
from .prompts import Prompt, PromptSet, load_prompts, wrap

__all__ = [
    "ARCHITECTURES",
    "ArchSpec",
    "DefaultModelNotInstalledError",
    "ExtractMeta",
    "HiddenStates",
    "IhsSightError",
    "InputError",
    "Model",
    "ModelLoadError",
    "Prompt",
    "PromptSet",
    "RemoteError",
    "UnsupportedArchitectureError",
    "extract",
    "load_model",
    "load_prompts",
    "wrap",
]
__version__ = "0.1.0"
