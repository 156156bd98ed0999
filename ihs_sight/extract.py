"""Last-token hidden states at every layer, batched, exact, cached.

Mental model:
1. Each prompt is templated and tokenised once (:func:`ihs_sight.prompts.encode`).
2. Prompts are sorted by token length and cut into batches (length bucketing: little padding);
   each batch is left-padded, so ``[:, -1]`` is every row's last real token, and given
   mask-derived ``position_ids``, so padding shifts no position.
3. One nnsight trace per batch reads ``blocks[0].input`` and every block's output and saves
   only the last-token slice: ``[B, L+1, D]`` leaves the trace, never ``[B, S, L+1, D]``.
4. Each finished batch is written to the on-disk cache (:mod:`ihs_sight.cache`) at once, so an
   interrupted run resumes and a repeated call loads instead of running.

Autograd is on inside an nnsight trace by default; local runs are wrapped in
``torch.no_grad()`` because saved slices would otherwise keep graph references (~5% time).
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .cache import TensorCache
from .errors import InputError
from .models import Model, cache_dir
from .prompts import encode, sha, template_fingerprint

log = logging.getLogger(__name__)


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
        """Write ``path.safetensors`` (the tensor) and ``path.json`` (everything else)."""
        stem = Path(path).with_suffix("")
        stem.parent.mkdir(parents=True, exist_ok=True)
        save_file({"states": self.states.contiguous()}, str(stem.with_suffix(".safetensors")))
        payload = self.model_dump(exclude={"states"}, mode="json")
        stem.with_suffix(".json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
        return stem

    @classmethod
    def load(cls, path: str | Path) -> HiddenStates:
        """Read what :meth:`save` wrote."""
        stem = Path(path).with_suffix("")
        for suffix in (".json", ".safetensors"):
            if not stem.with_suffix(suffix).is_file():
                raise InputError(f"Missing {stem.with_suffix(suffix)}; save() writes a .json and a .safetensors file.")
        try:
            payload = json.loads(stem.with_suffix(".json").read_text(encoding="utf-8"))
            states = load_file(str(stem.with_suffix(".safetensors")))["states"]
        except (ValueError, KeyError, OSError) as e:
            raise InputError(f"Cannot read hidden states at {stem}: {e}") from e
        return cls(states=states, **payload)


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("ihs-sight", "nnsight", "transformers", "torch"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def _validate_prompts(prompts: Any) -> list[str]:
    if isinstance(prompts, str):
        raise InputError("prompts must be a list of strings, not a single string; wrap it: [prompt].")
    try:
        items = list(prompts)
    except TypeError:
        raise InputError(f"prompts must be a list of strings, got {type(prompts).__name__}.") from None
    if not items:
        raise InputError("prompts is empty; pass at least one prompt.")
    for i, p in enumerate(items):
        if not isinstance(p, str):
            raise InputError(f"prompts[{i}] is {type(p).__name__}, not a string.")
        if not p.strip():
            raise InputError(f"prompts[{i}] is an empty string; remove it.")
    return items


def prepare(
    model: Model, prompts: list[str], *, chat: bool, system_prompt: str | None
) -> tuple[list[list[int]], str]:
    """Tokenise every templated prompt once and check it fits the model's context."""
    template = template_fingerprint(model.tokenizer, chat=chat, system_prompt=system_prompt)
    ids = encode(model.tokenizer, prompts, chat=chat, system_prompt=system_prompt)
    limit = model.max_length
    for i, row in enumerate(ids):
        if len(row) > limit:
            raise InputError(
                f"prompts[{i}] is {len(row)} tokens after templating; the model accepts at most {limit}. Shorten it."
            )
        if not row:
            raise InputError(f"prompts[{i}] tokenises to nothing.")
    return ids, template


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad token ids; ``position_ids`` count each row from its first real token."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": input_ids, "attention_mask": mask, "position_ids": position_ids}


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def trace_last_token_states(model: Model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, L+1, D) last-token states of one left-padded batch, from one nnsight trace.

    The trace body uses only torch and nnsight operations, so it runs unchanged on NDIF.
    """
    import nnsight

    blocks = model.blocks()
    index = model.arch.output_index
    with model.nn.trace(batch, remote=model.remote):
        states = nnsight.save([])
        states.append(blocks[0].input[:, -1].detach().cpu())
        for block in blocks:
            out = block.output
            hidden = out if index is None else out[index]
            states.append(hidden[:, -1].detach().cpu())
    return torch.stack(list(states), 1).float()


def extract(
    model: Model,
    prompts: Any,
    *,
    batch_size: int = 16,
    chat: bool = True,
    system_prompt: str | None = None,
    cache: bool | str | Path = True,
    progress: bool = True,
) -> HiddenStates:
    """Last-token hidden states of every prompt at every layer.

    Args:
        model: from :func:`ihs_sight.load_model`.
        prompts: a list of strings or a :class:`ihs_sight.PromptSet` (its labels, categories
            and families travel into the result).
        batch_size: prompts per forward pass.
        chat: apply the tokenizer's chat template (``False``: raw text, for base models).
        system_prompt: ``None`` keeps the template's default system prompt.
        cache: ``True`` uses the user cache directory, a path uses that directory, ``False``
            computes everything and stores nothing.
        progress: show a progress bar.

    Returns:
        :class:`HiddenStates` with ``states`` of shape (n_prompts, L + 1, d_model).

    Examples:
        >>> states = extract(load_model(), ["How do I bake bread?", "Write a haiku."])
        >>> states.states.shape
        torch.Size([2, 31, 576])
    """
    labels = categories = families = None
    if hasattr(prompts, "texts") and hasattr(prompts, "labels"):
        labels, categories, families = list(prompts.labels), list(prompts.categories), list(prompts.families)
        prompts = list(prompts.texts)
    texts = _validate_prompts(prompts)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}.")
    ids, template = prepare(model, texts, chat=chat, system_prompt=system_prompt)
    hashes = [sha(t) for t in texts]
    meta = ExtractMeta(
        model_name=model.name,
        model_source=model.source,
        model_class=type(model.hf).__name__,
        weights_hash=model.weights_hash,
        n_layers=model.n_layers,
        d_model=model.d_model,
        dtype=str(model.dtype).removeprefix("torch."),
        chat=chat,
        system_prompt=system_prompt,
        template=template,
        layer_names=["embed"] + [f"block.{i}" for i in range(1, model.n_layers + 1)],
        prompt_hashes=hashes,
        versions=_versions(),
    )
    store = None
    if cache is not False:
        root = (cache_dir() / "states") if cache is True else Path(cache)
        store = TensorCache(root, {"kind": "last_token_states", "weights": meta.weights_hash, "template": template,
                                   "system_prompt": system_prompt, "chat": chat, "dtype": meta.dtype,
                                   "n_layers": meta.n_layers, "d_model": meta.d_model})
    found = store.get(hashes) if store is not None else {}
    todo = [i for i, h in enumerate(hashes) if h not in found]
    # The same text twice is computed once.
    first: dict[str, int] = {}
    todo = [i for i in todo if first.setdefault(hashes[i], i) == i]
    if found:
        log.info("cache: %d of %d prompts loaded, %d to compute", len(texts) - len(todo), len(texts), len(todo))
    computed: dict[str, torch.Tensor] = {}
    batches = [[todo[j] for j in b] for b in length_batches([len(ids[i]) for i in todo], batch_size)]
    pad_id = model.tokenizer.pad_token_id
    if pad_id is None:
        pad_id = model.tokenizer.eos_token_id or 0
    with torch.no_grad(), tqdm(total=len(todo), desc="extract", unit="prompt", disable=not progress or not todo) as bar:
        for batch in batches:
            states = trace_last_token_states(model, pad_batch([ids[i] for i in batch], pad_id))
            batch_hashes = [hashes[i] for i in batch]
            if store is not None:
                store.put(batch_hashes, {"states": states})
            for h, row in zip(batch_hashes, states):
                computed[h] = row
            bar.update(len(batch))
    rows = [found[h]["states"] if h in found else computed[h] for h in hashes]
    return HiddenStates(
        states=torch.stack(rows, 0),
        prompts=texts,
        labels=labels,
        categories=categories,
        families=families,
        meta=meta,
    )
