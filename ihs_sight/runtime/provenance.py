"""What determines a run's outputs: the model, its weights, the template, the prompts, the versions.

:class:`ExtractMeta` is recorded in every result that came out of a forward pass
(:class:`~ihs_sight.HiddenStates`, :class:`~ihs_sight.LensResult`) and keys the states cache,
so a result can always say which weights, template and prompts made it.
"""

from __future__ import annotations

import functools
import importlib.metadata
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from ..layers import layer_names

if TYPE_CHECKING:
    from ..models import Model
    from ..prompts import EncodedPrompts


class ExtractMeta(BaseModel):
    """Everything that determines a set of hidden states (also the cache key)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    model_name: str
    """What was passed to ``load_model`` ("default", a path or a Hub id)."""
    model_source: str
    """Where the weights came from (package file, path or Hub id)."""
    model_class: str
    """The transformers class, e.g. ``LlamaForCausalLM``."""
    weights_hash: str
    """blake2b of every weight, adapters included."""
    n_layers: int
    """Number of blocks ``L``; states have ``L + 1`` layers."""
    d_model: int
    """Hidden size ``D``."""
    dtype: str
    """The model's compute dtype (states are returned as float32)."""
    chat: bool
    """Whether the chat template was applied."""
    system_prompt: str | None
    """The system prompt passed (``None``: the template's own default)."""
    template: str
    """The template rendered around the placeholder ``{prompt}``: exactly what wraps each prompt."""
    layer_names: list[str]
    """Name of each layer index: ``embed`` (block 0 input) then ``block.1`` ... ``block.L``."""
    prompt_hashes: list[str]
    """sha256 prefix of each prompt text, in order."""
    versions: dict[str, str] = Field(default_factory=dict)
    """Package versions (ihs-sight, nnsight, transformers, torch)."""
    bytes_received: int | None = None
    """Remote runs: bytes the server sent back for the prompts computed in this call (``None`` locally)."""
    bytes_per_prompt: float | None = None
    """Remote runs: ``bytes_received`` per computed prompt (cached prompts cost nothing)."""


class RunMeta(BaseModel):
    """The model and template an intervention ran on: the common part of grafting's and steering's metadata."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    model_name: str
    """What was passed to ``load_model`` ("default", a path or a Hub id)."""
    model_class: str
    """The transformers class, e.g. ``LlamaForCausalLM``."""
    weights_hash: str
    """blake2b of every weight, adapters included."""
    dtype: str
    """The model's compute dtype."""
    n_layers: int
    """Number of blocks ``L``."""
    chat: bool
    """Whether the chat template was applied."""
    system_prompt: str | None
    """The system prompt passed (``None``: the template's own default)."""
    template: str
    """The template rendered around the placeholder ``{prompt}``."""
    versions: dict[str, str] = Field(default_factory=dict)
    """Package versions (ihs-sight, nnsight, transformers, torch)."""


def run_fields(model: Model, encoded: EncodedPrompts) -> dict[str, Any]:
    """:class:`RunMeta`'s fields for prompts ``encoded`` for ``model`` (pass them to a subclass)."""
    return {"model_name": model.name, "model_class": type(model.hf).__name__, "weights_hash": model.weights_hash,
            "dtype": dtype_name(model), "n_layers": model.n_layers, "chat": encoded.chat,
            "system_prompt": encoded.system_prompt, "template": encoded.template, "versions": versions()}


@functools.cache
def _installed_versions() -> tuple[tuple[str, str], ...]:
    out = []
    for pkg in ("ihs-sight", "nnsight", "transformers", "torch"):
        try:
            out.append((pkg, importlib.metadata.version(pkg)))
        except importlib.metadata.PackageNotFoundError:
            out.append((pkg, "unknown"))
    return tuple(out)


def versions() -> dict[str, str]:
    """Package versions for result metadata; read once per process (each lookup scans the installed packages)."""
    return dict(_installed_versions())


def dtype_name(model: Model) -> str:
    """The model's compute dtype as recorded in results (``float32``, ``bfloat16``, ...)."""
    return str(model.dtype).removeprefix("torch.")


def run_meta(model: Model, encoded: EncodedPrompts) -> ExtractMeta:
    """The metadata (and cache identity) of a set of encoded prompts run through ``model``."""
    return ExtractMeta(
        **run_fields(model, encoded),
        model_source=model.source,
        d_model=model.d_model,
        layer_names=layer_names(model.n_layers),
        prompt_hashes=list(encoded.hashes),
    )


def states_context(model: Model, encoded: EncodedPrompts, kind: str) -> dict[str, object]:
    """The cache context of rows computed from these prompts on this model (see :mod:`.cache`)."""
    return {"kind": kind, "rows": "token-ids", "weights": model.weights_hash, "template": encoded.template,
            "system_prompt": encoded.system_prompt, "chat": encoded.chat, "dtype": dtype_name(model),
            "n_layers": model.n_layers, "d_model": model.d_model}


def with_bytes(meta: ExtractMeta, received: int | None, n_computed: int) -> ExtractMeta:
    """``meta`` with the bytes a remote model received (unchanged when ``received`` is ``None``)."""
    if received is None:
        return meta
    per_prompt = round(received / n_computed, 1) if n_computed else None
    return meta.model_copy(update={"bytes_received": received, "bytes_per_prompt": per_prompt})
