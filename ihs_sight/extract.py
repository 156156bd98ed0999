"""Last-token hidden states at every layer, batched, exact, cached.

Mental model:
1. Each prompt is templated and tokenised once (:func:`ihs_sight.prompts.encode_prompts`).
2. The shared batch loop (:func:`ihs_sight.runtime.batches.run_batches`) cuts them into
   length-bucketed, left-padded batches -- or, with ``pack``, rows of prompts packed end to end --
   loads what the on-disk cache holds and writes each finished batch to it at once, so an
   interrupted run resumes and a repeated call loads instead of running.
3. One nnsight trace per batch (:func:`ihs_sight.runtime.traces.last_token_states`) reads
   ``blocks[0].input`` and every block's output and saves only the last-token slice:
   ``[B, L+1, D]`` leaves the trace, never ``[B, S, L+1, D]``.
4. The same trace can also feed a *same-pass reader*: ``extract(..., lens_top_k=k)`` gets the
   logit lens of the very same forward pass. Readers plug in through :func:`register_reader`
   (the lens registers itself when :mod:`ihs_sight.lens` is imported), so this module never
   imports the analyses built on top of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import torch
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from . import checks, io
from .deprecations import moved, warn
from .errors import InputError
from .models import Model, states_cache_dir
from .prompts import EncodedPrompts, encode_prompts
from .runtime import traces
from .runtime.batches import Batch, Store, run_batches
from .runtime.cache import TensorCache
from .runtime.compiled import check_compilable
from .runtime.packing import check_pack
from .runtime.provenance import ExtractMeta, run_meta, states_context, with_bytes

if TYPE_CHECKING:
    from .lens import LensResult

    SamePass: TypeAlias = LensResult | None
else:
    SamePass: TypeAlias = Any  # the annotation pydantic sees: no import of the lens at run time

log = logging.getLogger(__name__)

__all__ = ["ExtractMeta", "HiddenStates", "extract", "register_reader"]

__getattr__ = moved(__name__, {
    "pad_batch": ("ihs_sight.runtime.packing", "pad_batch"),
    "length_batches": ("ihs_sight.runtime.packing", "length_batches"),
    "LENS_ROWS": ("ihs_sight.runtime.traces", "LENS_ROWS"),
})


# ---------------------------------------------------------------------------- same-pass readers


class Reader(Protocol):
    """What a same-pass reader adds to the states trace, and how it builds its result."""

    row_keys: tuple[str, ...]
    """The trace outputs it reads (one row per prompt)."""

    def trace_kwargs(self) -> dict[str, Any]:
        """Extra keyword arguments of :func:`ihs_sight.runtime.traces.last_token_states`."""
        ...

    def cache_key(self) -> dict[str, Any]:
        """What its cached rows depend on besides the states' own cache key."""
        ...

    def build(self, rows: dict[str, torch.Tensor], *, encoded: EncodedPrompts, meta: ExtractMeta) -> Any:
        """Its result from every prompt's rows."""
        ...


@dataclass(frozen=True)
class _Registered:
    make: Callable[[Model, Any], Reader]
    from_parts: Callable[[dict[str, Any], dict[str, torch.Tensor]], Any]


_READERS: dict[str, _Registered] = {}


def register_reader(name: str, make: Callable[[Model, Any], Reader],
                    from_parts: Callable[[dict[str, Any], dict[str, torch.Tensor]], Any]) -> None:
    """Register a same-pass reader: ``make(model, arg)`` builds it, ``from_parts`` reloads its saved result."""
    _READERS[name] = _Registered(make, from_parts)


def _reader(name: str) -> _Registered:
    if name not in _READERS:  # only when ihs_sight.lens was never imported (ihs_sight/__init__ imports it)
        raise InputError(f"No same-pass reader {name!r} is registered; import ihs_sight.{name} first.")
    return _READERS[name]


# ---------------------------------------------------------------------------- result


class HiddenStates(BaseModel):
    """Each prompt's last-token hidden state at every layer.

    Layer ``0`` is the input of the first block (the embeddings, position embeddings
    included where the model adds them); layer ``l >= 1`` is the output of block ``l``,
    before any final norm.
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True, extra="forbid", use_attribute_docstrings=True)

    states: torch.Tensor
    """(n_prompts, n_layers + 1, d_model) float32 last-token states."""
    prompts: list[str]
    """(n_prompts,) the prompt texts, before templating."""
    labels: list[str] | None = None
    """(n_prompts,) e.g. ``normal`` / ``malicious``, when the prompts came with labels."""
    categories: list[str | None] | None = None
    """(n_prompts,) harm category or everyday domain, when known."""
    families: list[str | None] | None = None
    """(n_prompts,) jailbreak wrapper family, when known."""
    meta: ExtractMeta
    lens: SamePass = None
    """The logit lens (a :class:`~ihs_sight.LensResult`) of the same forward pass, when
    ``extract(..., lens_top_k=k)`` asked for it."""

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:  # pydantic wraps the validator's errors; say which field, as InputError
            raise InputError(f"Invalid HiddenStates: {checks.validation_message(e)}") from None

    @model_validator(mode="after")
    def _consistent(self) -> HiddenStates:
        s = self.states
        if s.ndim != 3 or not torch.is_floating_point(s):
            raise ValueError(f"states must be a float tensor (n_prompts, n_layers + 1, d_model), got {s.dtype} "
                             f"{tuple(s.shape)}")
        n = s.shape[0]
        if len(self.prompts) != n:
            raise ValueError(f"{len(self.prompts)} prompts for {n} rows of states")
        for name in ("labels", "categories", "families"):
            values = getattr(self, name)
            if values is not None and len(values) != n:
                raise ValueError(f"{len(values)} {name} for {n} prompts")
        if (s.shape[1], s.shape[2]) != (self.meta.n_layers + 1, self.meta.d_model):
            raise ValueError(f"states have shape {tuple(s.shape)}; the model has {self.meta.n_layers} blocks and "
                             f"d_model {self.meta.d_model}")
        if not bool(torch.isfinite(s).all()):
            prompt, layer = (~torch.isfinite(s)).nonzero()[0, :2].tolist()
            raise ValueError(f"states hold NaN or inf (first: prompt {prompt}, layer {layer})")
        return self

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def n_layers(self) -> int:
        """Number of blocks ``L`` (``states.shape[1] == L + 1``)."""
        return self.states.shape[1] - 1

    def layer(self, index: int) -> torch.Tensor:
        """(n_prompts, d_model) the states at one layer index."""
        return self.states[:, index]

    def save(self, path: str | Path) -> Path:
        """Write ``path.safetensors`` (the tensors) and ``path.json`` (everything else), atomically.

        A lens, when present, is stored in the same two files (tensors named ``lens.*``).
        """
        tensors = {"states": self.states}
        payload = self.model_dump(exclude={"states", "lens"}, mode="json")
        if self.lens is not None:
            lens_payload, lens_tensors = self.lens.to_parts()
            tensors.update({f"lens.{k}": v for k, v in lens_tensors.items()})
            payload["lens"] = lens_payload
        return io.save_pair(path, payload, tensors)

    @classmethod
    def load(cls, path: str | Path) -> HiddenStates:
        """Read what :meth:`save` wrote."""
        payload, tensors, _ = io.load_pair(path, what="hidden states")
        stem = io.pair_stem(path)
        if "states" not in tensors:
            raise InputError(f"Cannot read hidden states at {stem}: no 'states' tensor.")
        try:
            lens_payload = payload.pop("lens", None)
            if lens_payload is not None:
                lens_tensors = {k.removeprefix("lens."): v for k, v in tensors.items() if k.startswith("lens.")}
                payload["lens"] = _reader("lens").from_parts(lens_payload, lens_tensors)
            return cls(states=tensors["states"], **payload)
        except (InputError, TypeError) as e:
            raise InputError(f"Cannot read hidden states at {stem}: {e}") from None


# ---------------------------------------------------------------------------- extract


def encode_for(model: Model, prompts: Any, *, chat: bool, system_prompt: str | None,
               what: str = "prompts") -> EncodedPrompts:
    """Check, template and tokenise prompts once for ``model`` (every analysis's first step)."""
    return encode_prompts(model.tokenizer, prompts, chat=chat, system_prompt=system_prompt,
                          max_length=model.max_length, what=what)


def cache_root(cache: Any) -> Path | None:
    """The cache directory a ``cache=`` argument names: ``True`` the user's, a path that one, ``False`` none."""
    if cache is False or cache is None:
        return None
    if cache is True:
        return states_cache_dir()
    if isinstance(cache, (str, Path)):
        return Path(cache)
    raise InputError(f"cache must be True, False or a directory path, got {cache!r}.")


def prepare(model: Model, prompts: list[str], *, chat: bool, system_prompt: str | None) -> tuple[
        list[list[int]], str]:
    """Deprecated: token ids and rendered template of prompts; use :func:`encode_for` (an ``EncodedPrompts``)."""
    warn("ihs_sight.extract.prepare", "ihs_sight.extract.encode_for")
    encoded = encode_for(model, prompts, chat=chat, system_prompt=system_prompt)
    return encoded.ids, encoded.template


def check_finite(states: torch.Tensor, indices: list[int], model: Model) -> None:
    """Refuse NaN or inf states, naming the prompt, the first layer and the dtype (fp16 overflows on some models)."""
    bad = ~torch.isfinite(states)
    if bool(bad.any()):
        row, layer = bad.nonzero()[0, :2].tolist()
        dtype = str(model.dtype).removeprefix("torch.")
        advice = ("float16 overflows on some models: load it with dtype='bfloat16' or 'float32'"
                  if model.dtype == torch.float16 else "check the model's weights (nothing is cached)")
        raise InputError(f"prompts[{indices[row]}] has NaN or inf states from layer {layer} on in {dtype}; "
                         f"{advice}.")


def trace_batch(model: Model, batch: dict[str, torch.Tensor], **kwargs: Any) -> dict[str, torch.Tensor]:
    """One states trace on a batch (:func:`ihs_sight.runtime.traces.last_token_states`)."""
    return traces.last_token_states(model, batch, **kwargs)


def extract(
    model: Model,
    prompts: Any,
    *,
    batch_size: int = 16,
    chat: bool = True,
    system_prompt: str | None = None,
    cache: bool | str | Path = True,
    progress: bool = True,
    lens_top_k: int | None = None,
    pack: bool | int = False,
    compile: bool = False,
) -> HiddenStates:
    """Last-token hidden states of every prompt at every layer.

    Args:
        model: from :func:`ihs_sight.load_model`.
        prompts: a list of strings or a :class:`ihs_sight.PromptSet` (its labels, categories
            and families travel into the result).
        batch_size: prompts per forward pass (with ``pack``: packed rows per forward pass).
        chat: apply the tokenizer's chat template (``False``: raw text, for base models).
        system_prompt: ``None`` keeps the template's default system prompt.
        cache: ``True`` uses the user cache directory, a path uses that directory, ``False``
            computes everything and stores nothing.
        progress: show a progress bar.
        lens_top_k: also run the logit lens in the same forward pass and return its top-k
            tokens at every layer (with emotion masses for the v1 lexicon) as ``.lens``;
            cached beside the states, keyed by k and the lexicon.
        pack: pack prompts end to end into rows of this many tokens (``True``: 256) instead of
            padding each batch to its longest prompt (:mod:`ihs_sight.runtime.packing`): no
            compute on padding and fewer, larger forwards, the fast path on a GPU. Checked once
            per model to keep prompts apart exactly; needs SDPA or eager attention. States
            equal the padded path's to float rounding.
        compile: run the blocks' insides through ``torch.compile`` during this call
            (:mod:`ihs_sight.runtime.compiled`; local models): fused kernels on a GPU, after a
            one-time compilation of seconds to a minute. Best with ``pack``, whose rows keep
            shapes few.

    Returns:
        :class:`HiddenStates` with ``states`` of shape (n_prompts, L + 1, d_model), and
        ``lens`` (a :class:`ihs_sight.LensResult`) when ``lens_top_k`` is set.

    Examples:
        >>> states = extract(load_model(), ["How do I bake bread?", "Write a haiku."])
        >>> states.states.shape
        torch.Size([2, 31, 576])
    """
    batch_size = checks.batch_size(batch_size)
    width = check_pack(pack)  # a bad value fails even when every prompt is cached
    if compile:
        check_compilable(model)
    root = cache_root(cache)
    reader = _reader("lens").make(model, lens_top_k) if lens_top_k is not None else None
    encoded = encode_for(model, prompts, chat=chat, system_prompt=system_prompt)
    meta = run_meta(model, encoded)
    stores: list[Store] = []
    if root is not None:
        context = states_context(model, encoded, "last_token_states")
        stores.append(Store(TensorCache(root, context), ("states",)))
        if reader is not None:
            # A context of its own: the lens rows depend on k and on the lexicon's token ids too.
            stores.append(Store(TensorCache(root, {**context, "kind": "logit_lens", **reader.cache_key()}),
                                reader.row_keys))
    kwargs = reader.trace_kwargs() if reader is not None else {}

    def step(batch: Batch) -> dict[str, torch.Tensor]:
        out = trace_batch(model, batch.inputs, last=batch.last, **kwargs)
        check_finite(out["states"], batch.indices, model)  # before anything is cached
        return out

    run = run_batches(model, encoded, step, batch_size=batch_size, pack=width, compile=compile, stores=stores,
                      desc="extract", progress=progress)
    meta = with_bytes(meta, run.received, run.n_computed)
    lens = reader.build(run.rows, encoded=encoded, meta=meta) if reader is not None else None
    labelled = encoded.labelled
    labels = encoded.labels()
    return HiddenStates(
        states=run.rows["states"],
        prompts=encoded.texts,
        labels=labels if labels is not None and None not in labels else None,
        categories=list(encoded.prompts.categories) if labelled else None,
        families=list(encoded.prompts.families) if labelled else None,
        meta=meta,
        lens=lens,
    )
