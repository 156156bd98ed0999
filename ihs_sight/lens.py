"""Logit lens at every layer's last token, emotion masses, Top-K Intermediate Consistency.

Mental model:
1. The lens of layer ``l`` reads that layer's last-token state ``h`` (``l = 0``: the input of
   the first block; ``l >= 1``: block ``l``'s output, no final norm) and asks the model's own
   head what it would predict from it: ``softmax(unembed(final_norm(h)))``, the final norm
   applied exactly once and the config's logit soft-capping applied where set. At ``l = L`` this
   is the model's real next-token distribution.
2. All of it runs inside the nnsight trace (:func:`ihs_sight.runtime.traces.last_token_states`): only the
   top-k ids, logits and probabilities (``[N, L+1, k]``) and each emotion category's
   full-vocabulary probability mass (``[N, L+1, 3]``) leave it, never ``[N, L+1, V]``.
3. A :class:`LensResult` then answers the paper's questions per prompt and per dataset:
   which tokens each layer guesses (:meth:`LensResult.top_tokens`, :meth:`LensResult.heatmap`),
   how much "emotion" they carry (:meth:`LensResult.emotions`), and how uniformly a dataset's
   layers agree (:meth:`LensResult.consistency`, Top-K Intermediate Consistency).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import torch
from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer, ValidationError, model_validator

from . import checks, io
from .emotions import (
    CATEGORIES,
    EmotionProfile,
    Lexicon,
    category_id_tensors,
    category_of_ids,
    decoded_vocab,
    emotion_profile,
    resolve_lexicon,
)
from .errors import InputError
from .extract import encode_for, register_reader
from .layers import check_band, check_layers, middle_band
from .models import Model
from .prompts import EncodedPrompts
from .runtime import traces
from .runtime.batches import Batch, run_batches
from .runtime.compiled import check_compilable
from .runtime.packing import check_pack
from .runtime.provenance import ExtractMeta, run_meta, with_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)


def _as_tensor(dtype: torch.dtype) -> Any:
    def convert(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.to(dtype)
        if isinstance(value, (list, tuple)):
            return torch.tensor(value, dtype=dtype)
        return value

    return convert


def _to_list(value: torch.Tensor) -> Any:
    return value.tolist()


LongTensor = Annotated[
    torch.Tensor, BeforeValidator(_as_tensor(torch.long)), PlainSerializer(_to_list, when_used="json")
]
FloatTensor = Annotated[
    torch.Tensor, BeforeValidator(_as_tensor(torch.float32)), PlainSerializer(_to_list, when_used="json")
]
_TENSOR_FIELDS = ("token_ids", "probs", "logits", "emotion_mass", "emotion_counts")


def check_top_k(top_k: Any, vocab_size: int) -> int:
    """``top_k`` as an integer in ``1..vocab_size``, else :class:`InputError`."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= vocab_size:
        raise InputError(
            f"top_k must be an integer between 1 and the vocabulary size {vocab_size}, got {top_k!r}."
        )
    return top_k


class TokenCount(BaseModel):
    """How many prompts have one token in their top-k at one layer."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    token_id: int
    """Vocabulary id."""
    token: str
    """The decoded token (leading space kept)."""
    count: int
    """Number of prompts whose top-k contains it."""
    share: float
    """``count / n_prompts``."""
    category: str | None
    """Its emotion category, or ``None``."""


class Consistency(BaseModel):
    """Top-K Intermediate Consistency (TIC) per layer and over a band.

    For layer ``l`` with top-k sets ``T_1..T_N`` (one per prompt), let ``F`` be the ``k`` tokens
    that occur in most of the ``T_i`` (ties broken by the smaller token id). Then
    ``TIC_l = (1/k) * sum over t in F of |{i : t in T_i}| / N``: the mean share of prompts whose
    top-k contains each of the layer's k most frequent tokens. It is 1 exactly when every prompt
    has the same top-k set, and 1/N when no token is shared by two prompts.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    layers: list[int]
    """(n_layers,) layer index of each entry."""
    per_layer: list[float]
    """(n_layers,) TIC at each layer, in [1/N, 1]."""
    frequent: list[list[int]]
    """(n_layers, k) the k most frequent token ids ``F`` of each layer."""
    band: tuple[int, int]
    """(lo, hi) the inclusive band of ``band_mean``."""
    band_mean: float
    """Mean of ``per_layer`` over the layers in ``band``."""
    top_k: int
    """k."""
    n_prompts: int
    """N."""
    name: str | None = None
    """A label for plots and comparisons."""

    def plot(self, *others: Consistency, title: str | None = None) -> Figure:
        """TIC against the layer, for this result and any ``others``."""
        from .plots.lens import consistency_plot

        return consistency_plot([self, *others], title=title)


class ConsistencyComparison(BaseModel):
    """Top-K Intermediate Consistency of two datasets or two models, side by side."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    a: Consistency
    """The first result."""
    b: Consistency
    """The second result."""
    band_mean_diff: float
    """``a.band_mean - b.band_mean``."""
    per_layer_diff: list[float] | None
    """(n_layers,) ``a.per_layer - b.per_layer`` when both cover the same layers, else ``None``."""

    def plot(self, title: str | None = None) -> Figure:
        """Both TIC curves against the layer."""
        from .plots.lens import consistency_plot

        return consistency_plot([self.a, self.b], title=title)


def topk_consistency(token_ids: torch.Tensor) -> tuple[list[float], list[list[int]]]:
    """TIC of every layer of an ``(N, n_layers, k)`` id tensor, and each layer's ``F``.

    See :class:`Consistency` for the formula.
    """
    n, n_layers, k = token_ids.shape
    values, frequent = [], []
    for j in range(n_layers):
        ids, counts = torch.unique(token_ids[:, j].reshape(-1), return_counts=True)  # ids ascending
        order = torch.sort(-counts, stable=True).indices[:k]  # stable: ties keep the smaller id first
        values.append(float(counts[order].double().mean() / n))
        frequent.append(ids[order].tolist())
    return values, frequent


class LensResult(BaseModel):
    """The logit lens of a set of prompts: top-k tokens and emotion masses per prompt and layer.

    ``layers[j]`` names the layer of index ``j`` along dimension 1 of every tensor (all layers
    ``0..L`` unless ``logit_lens(..., layers=...)`` chose some). Tensors travel as safetensors
    with :meth:`save` / :meth:`load`; ``model_dump_json`` writes them as nested lists.
    """

    model_config = ConfigDict(
        frozen=True, arbitrary_types_allowed=True, extra="forbid", use_attribute_docstrings=True
    )

    token_ids: LongTensor
    """(n_prompts, n_lens_layers, top_k) int64 token ids, most probable first."""
    probs: FloatTensor
    """(n_prompts, n_lens_layers, top_k) float32 lens probabilities of ``token_ids``."""
    logits: FloatTensor
    """(n_prompts, n_lens_layers, top_k) float32 lens logits of ``token_ids`` (after soft-capping)."""
    emotion_mass: FloatTensor
    """(n_prompts, n_lens_layers, n_categories) float32 full-vocabulary probability of each category."""
    emotion_counts: LongTensor
    """(n_prompts, n_lens_layers, n_categories) int64 number of top-k tokens in each category."""
    layers: list[int]
    """(n_lens_layers,) layer index of each entry: 0 = embeddings, l = block l's output."""
    top_k: int
    """k."""
    categories: list[str]
    """(n_categories,) emotion category names, in tensor order."""
    vocab: dict[int, str]
    """Decoded string of every token id in ``token_ids`` (leading space kept)."""
    token_category: dict[int, str]
    """Emotion category of each id in ``vocab`` that has one."""
    lexicon_version: str
    """The lexicon that defined the categories."""
    lexicon_sizes: dict[str, int]
    """Number of token ids in each category for this tokenizer."""
    prompts: list[str]
    """(n_prompts,) the prompt texts, before templating."""
    labels: list[str | None] | None = None
    """(n_prompts,) labels, when the prompts came with them."""
    meta: ExtractMeta
    """Model, template and prompt identities (the same record as :class:`HiddenStates`)."""

    @model_validator(mode="after")
    def _shapes(self) -> LensResult:
        n, nl, k, c = len(self.prompts), len(self.layers), self.top_k, len(self.categories)
        expect = {
            "token_ids": (n, nl, k),
            "probs": (n, nl, k),
            "logits": (n, nl, k),
            "emotion_mass": (n, nl, c),
            "emotion_counts": (n, nl, c),
        }
        for name, shape in expect.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(
                    f"{name} has shape {got}, expected {shape} (prompts, layers, k or categories)"
                )
        if self.labels is not None and len(self.labels) != n:
            raise ValueError(f"{len(self.labels)} labels for {n} prompts")
        for name in ("probs", "logits", "emotion_mass"):
            if not bool(torch.isfinite(getattr(self, name)).all()):
                raise ValueError(f"{name} hold NaN or inf")
        missing = set(torch.unique(self.token_ids).tolist()) - set(self.vocab)
        if missing:
            raise ValueError(f"vocab lacks the strings of {len(missing)} token ids (e.g. {min(missing)})")
        return self

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:  # say which field, as InputError
            raise InputError(f"Invalid LensResult: {checks.validation_message(e)}") from None

    def __len__(self) -> int:
        return len(self.prompts)

    def index_of(self, layer: int) -> int:
        """Position of a layer index (negative: counted from the last layer) along the tensors' dimension 1."""
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise InputError(f"layer must be an integer, got {layer!r}.")
        if layer < 0:
            layer += self.meta.n_layers + 1
        if layer not in self.layers:
            raise InputError(f"Layer {layer} is not in this lens result; its layers are {self.layers}.")
        return self.layers.index(layer)

    def tokens(self) -> list[list[list[str]]]:
        """(n_prompts, n_lens_layers, top_k) the decoded top-k token strings."""
        return [[[self.vocab[int(i)] for i in row] for row in prompt] for prompt in self.token_ids.tolist()]

    def top_tokens(self, layer: int, n: int | None = None) -> list[TokenCount]:
        """The tokens found in the prompts' top-k at ``layer``, most frequent first (ties: smaller id).

        Args:
            layer: layer index (0 = embeddings; negative counts from the last layer).
            n: keep only the ``n`` most frequent (default: all).
        """
        j = self.index_of(layer)
        ids, counts = torch.unique(self.token_ids[:, j].reshape(-1), return_counts=True)
        order = torch.sort(-counts, stable=True).indices
        if n is not None:
            order = order[:n]
        return [
            TokenCount(
                token_id=int(ids[o]),
                token=self.vocab[int(ids[o])],
                count=int(counts[o]),
                share=float(counts[o]) / len(self),
                category=self.token_category.get(int(ids[o])),
            )
            for o in order
        ]

    def emotions(self, name: str | None = None) -> EmotionProfile:
        """Per-layer emotion scores: mean full-vocabulary mass, top-k share and top-1 share per category."""
        return emotion_profile(self, name=name)

    def consistency(self, band: tuple[int, int] | None = None, name: str | None = None) -> Consistency:
        """Top-K Intermediate Consistency per layer and its mean over ``band`` (default: :func:`middle_band`).

        See :class:`Consistency` for the formula.
        """
        band = middle_band(self.meta.n_layers) if band is None else check_band(band, self.meta.n_layers)
        in_band = [j for j, layer in enumerate(self.layers) if band[0] <= layer <= band[1]]
        if not in_band:
            raise InputError(f"No lens layer lies in the band {band}; this result has layers {self.layers}.")
        per_layer, frequent = topk_consistency(self.token_ids)
        return Consistency(
            layers=list(self.layers),
            per_layer=per_layer,
            frequent=frequent,
            band=band,
            band_mean=sum(per_layer[j] for j in in_band) / len(in_band),
            top_k=self.top_k,
            n_prompts=len(self),
            name=name,
        )

    def subset(self, indices: Sequence[int]) -> LensResult:
        """The result restricted to some prompts (in the given order)."""
        idx = [int(i) for i in indices]
        if not idx:
            raise InputError("subset() needs at least one prompt index.")
        if any(not -len(self) <= i < len(self) for i in idx):
            raise InputError(f"Prompt indices must lie in [-{len(self)}, {len(self)}).")
        sel = torch.tensor(idx, dtype=torch.long)
        kept = set(self.token_ids[sel].reshape(-1).tolist())
        meta = self.meta.model_copy(update={"prompt_hashes": [self.meta.prompt_hashes[i] for i in idx]})
        return self.model_copy(
            update={
                **{name: getattr(self, name)[sel] for name in _TENSOR_FIELDS},
                "prompts": [self.prompts[i] for i in idx],
                "labels": None if self.labels is None else [self.labels[i] for i in idx],
                "vocab": {i: s for i, s in self.vocab.items() if i in kept},
                "token_category": {i: c for i, c in self.token_category.items() if i in kept},
                "meta": meta,
            }
        )

    def select(self, label: str) -> LensResult:
        """The prompts with one label (e.g. ``"malicious"``)."""
        if self.labels is None:
            raise InputError(
                "This lens result has no labels; pass a PromptSet to logit_lens() or use subset()."
            )
        idx = [i for i, lab in enumerate(self.labels) if lab == label]
        if not idx:
            raise InputError(
                f"No prompt is labelled {label!r}; labels here: {sorted({str(x) for x in self.labels})}."
            )
        return self.subset(idx)

    def heatmap(self, layers: Sequence[int] | None = None, *, title: str | None = None) -> Figure:
        """Top tokens per layer: rank-r most frequent top-k token of each layer, coloured by emotion."""
        from .plots.lens import lens_heatmap

        return lens_heatmap(self, layers=layers, title=title)

    def plot(self, layers: Sequence[int] | None = None, *, title: str | None = None) -> Figure:
        """Same as :meth:`heatmap`."""
        return self.heatmap(layers, title=title)

    def to_parts(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(JSON-ready metadata, tensors): what :meth:`save` writes and :meth:`from_parts` reads."""
        payload = self.model_dump(mode="json", exclude=set(_TENSOR_FIELDS))
        return payload, {name: getattr(self, name).contiguous() for name in _TENSOR_FIELDS}

    @classmethod
    def from_parts(cls, payload: dict[str, Any], tensors: dict[str, torch.Tensor]) -> LensResult:
        """Rebuild from :meth:`to_parts`' output."""
        missing = [name for name in _TENSOR_FIELDS if name not in tensors]
        if missing:
            raise InputError(
                f"Lens tensors {missing} are missing; the files were not written by LensResult.save()."
            )
        try:
            return cls.model_validate({**payload, **{name: tensors[name] for name in _TENSOR_FIELDS}})
        except ValidationError as e:
            raise InputError(f"Invalid LensResult: {checks.validation_message(e)}") from None

    def save(self, path: str | Path) -> Path:
        """Write ``path.safetensors`` (the tensors) and ``path.json`` (everything else), atomically."""
        payload, tensors = self.to_parts()
        return io.save_pair(path, payload, tensors)

    @classmethod
    def load(cls, path: str | Path) -> LensResult:
        """Read what :meth:`save` wrote."""
        payload, tensors, _ = io.load_pair(path, what="a lens result")
        try:
            return cls.from_parts(payload, tensors)
        except InputError as e:
            raise InputError(f"Cannot read a lens result at {io.pair_stem(path)}: {e}") from None


@dataclass
class LensSpec:
    """What one lens run computes, resolved once for a model: k, layers, lexicon and its ids."""

    top_k: int
    layers: list[int]
    lexicon: Lexicon
    token_ids: dict[str, list[int]]
    category_tensors: list[torch.Tensor]
    vocab_size: int
    row_keys: tuple[str, ...] = ("lens_ids", "lens_probs", "lens_logits", "lens_mass")
    tokenizer: Any = field(default=None, repr=False)

    def cache_key(self) -> dict[str, Any]:
        """What, besides the states' own key, the cached lens rows depend on."""
        return {
            "top_k": self.top_k,
            "layers": self.layers,
            "lexicon": self.lexicon.version,
            "lexicon_digest": self.lexicon.digest,
            "lexicon_ids": {cat: len(v) for cat, v in self.token_ids.items()},
            "lexicon_ids_hash": hash_ids(self.token_ids),
        }

    def trace_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`ihs_sight.runtime.traces.last_token_states` for this lens."""
        return {"lens_layers": self.layers, "top_k": self.top_k, "category_ids": self.category_tensors}

    def build(self, rows: dict[str, torch.Tensor], *, encoded: EncodedPrompts, meta: ExtractMeta) -> LensResult:
        """A :class:`LensResult` from the stacked trace outputs of every prompt."""
        ids = rows["lens_ids"]
        unique = sorted(set(ids.reshape(-1).tolist()))
        vocab = decoded_vocab(self.tokenizer)
        strings = {i: vocab[i] if i < len(vocab) else str(self.tokenizer.decode([i])) for i in unique}
        counts = torch.stack([torch.isin(ids, t).sum(-1) for t in self.category_tensors], -1).long()
        return LensResult(
            token_ids=ids,
            probs=rows["lens_probs"],
            logits=rows["lens_logits"],
            emotion_mass=rows["lens_mass"],
            emotion_counts=counts,
            layers=self.layers,
            top_k=self.top_k,
            categories=list(CATEGORIES),
            vocab=strings,
            token_category=category_of_ids(unique, self.token_ids),
            lexicon_version=self.lexicon.version,
            lexicon_sizes={cat: len(t) for cat, t in zip(CATEGORIES, self.category_tensors)},
            prompts=encoded.texts,
            labels=encoded.labels(),
            meta=meta,
        )


def hash_ids(token_ids: dict[str, list[int]]) -> str:
    """A short hash of resolved lexicon ids (they depend on the tokenizer as well as the words)."""
    return hashlib.sha256(json.dumps(token_ids, sort_keys=True).encode()).hexdigest()[:16]


def lens_spec_for(model: Model, top_k: Any, *, lexicon: str | Lexicon = "v1", layers: Any = None) -> LensSpec:
    """Validate lens arguments against ``model`` and resolve the lexicon's token ids."""
    vocab_size = model.vocab_size
    k = check_top_k(top_k, vocab_size)
    lex = resolve_lexicon(lexicon)
    return LensSpec(
        top_k=k,
        layers=sorted(set(check_layers(layers, model.n_layers))),
        lexicon=lex,
        token_ids=lex.token_ids(model.tokenizer),
        category_tensors=category_id_tensors(lex, model.tokenizer, vocab_size),
        vocab_size=vocab_size,
        tokenizer=model.tokenizer,
    )


# extract(..., lens_top_k=k) reads the lens in the states' own forward pass through this hook.
register_reader("lens", lambda model, k: lens_spec_for(model, k), lambda payload, tensors: LensResult.from_parts(
    payload, tensors))


def logit_lens(
    model: Model,
    prompts: Any,
    *,
    top_k: int = 5,
    layers: Sequence[int] | int | None = None,
    lexicon: str | Lexicon = "v1",
    batch_size: int = 16,
    chat: bool = True,
    system_prompt: str | None = None,
    progress: bool = True,
    pack: bool | int = False,
    compile: bool = False,
) -> LensResult:
    """Top-k lens tokens and emotion masses of every prompt's last token at every layer.

    One nnsight trace per batch computes ``softmax(unembed(final_norm(h)))`` for each layer's
    last-token state ``h`` (the final norm applied once, soft-capping where the config sets it)
    and keeps only the top-k and the per-category probability sums. Hidden states are not
    kept; use ``extract(..., lens_top_k=k)`` to get both from one forward pass.

    Args:
        model: from :func:`ihs_sight.load_model`.
        prompts: a list of strings or a :class:`ihs_sight.PromptSet` (labels travel along).
        top_k: tokens kept per prompt and layer.
        layers: layer indices (0 = embeddings, l = block l's output); ``None`` is all ``0..L``.
        lexicon: emotion lexicon version or object for the masses and top-k counts.
        batch_size: prompts per forward pass (with ``pack``: packed rows per forward pass).
        chat: apply the chat template.
        system_prompt: ``None`` keeps the template's default.
        progress: show a progress bar.
        pack: pack prompts into rows of this many tokens (``True``: 256), as in :func:`ihs_sight.extract`.
        compile: compile the blocks for this call, as in :func:`ihs_sight.extract`.

    Returns:
        :class:`LensResult` with ``token_ids`` of shape (n_prompts, n_layers, top_k).

    Examples:
        >>> data = ihs.load_prompts()
        >>> lens = logit_lens(model, data.malicious.head(20), top_k=5)
        >>> [t.token for t in lens.top_tokens(20, n=5)]
        >>> lens.emotions().mass["negative"][20], lens.consistency().band_mean
    """
    batch_size = checks.batch_size(batch_size)
    width = check_pack(pack)
    if compile:
        check_compilable(model)
    spec = lens_spec_for(model, top_k, lexicon=lexicon, layers=layers)
    encoded = encode_for(model, prompts, chat=chat, system_prompt=system_prompt)
    meta = run_meta(model, encoded)
    kwargs = spec.trace_kwargs()

    def step(batch: Batch) -> dict[str, torch.Tensor]:
        return traces.last_token_states(model, batch.inputs, last=batch.last, states=False, **kwargs)

    run = run_batches(model, encoded, step, batch_size=batch_size, pack=width, compile=compile, dedupe=False,
                      desc="lens", progress=progress)
    return spec.build(run.rows, encoded=encoded, meta=with_bytes(meta, run.received, len(encoded)))


def compare_consistency(
    a: LensResult | Consistency,
    b: LensResult | Consistency,
    *,
    band: tuple[int, int] | None = None,
    names: tuple[str, str] = ("a", "b"),
) -> ConsistencyComparison:
    """Top-K Intermediate Consistency of two datasets (or two models), with their difference.

    Args:
        a: a lens result (its consistency is computed over ``band``) or a :class:`Consistency`.
        b: the same for the second dataset or model.
        band: the layer band; ``None`` uses each result's own :func:`middle_band` (so two models
            of different depth are compared on their own middle layers).
        names: labels of the two curves.

    Returns:
        :class:`ConsistencyComparison`; ``per_layer_diff`` is set when both cover the same layers.
    """

    def resolve(x: LensResult | Consistency, name: str) -> Consistency:
        if isinstance(x, LensResult):
            return x.consistency(band, name=name)
        if isinstance(x, Consistency):
            if band is not None and tuple(band) != x.band:
                raise InputError(
                    f"band={band} differs from the Consistency's own band {x.band}; pass the LensResult."
                )
            return x.model_copy(update={"name": name})
        raise InputError(
            f"compare_consistency takes LensResult or Consistency objects, got {type(x).__name__}."
        )

    ca, cb = resolve(a, names[0]), resolve(b, names[1])
    same = ca.layers == cb.layers
    return ConsistencyComparison(
        a=ca,
        b=cb,
        band_mean_diff=ca.band_mean - cb.band_mean,
        per_layer_diff=[x - y for x, y in zip(ca.per_layer, cb.per_layer)] if same else None,
    )
