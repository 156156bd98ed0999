"""Last-token hidden states at every layer, batched, exact, cached.

Mental model:
1. Each prompt is templated and tokenised once (:func:`ihs_sight.prompts.encode`).
2. Prompts are sorted by token length and cut into batches (length bucketing: little padding);
   each batch is left-padded, so ``[:, -1]`` is every row's last real token, and given
   mask-derived ``position_ids``, so padding shifts no position. With ``pack``, prompts are
   instead packed end to end into rows (:mod:`ihs_sight.packing`), with no padding between them.
3. One nnsight trace per batch reads ``blocks[0].input`` and every block's output and saves
   only the last-token slice: ``[B, L+1, D]`` leaves the trace, never ``[B, S, L+1, D]``.
   The same trace can also run the logit lens on those slices (:func:`trace_batch`), so
   ``extract(..., lens_top_k=k)`` gets states and lens from one forward pass.
4. Each finished batch is written to the on-disk cache (:mod:`ihs_sight.cache`) at once, so an
   interrupted run resumes and a repeated call loads instead of running.

Autograd is on inside an nnsight trace by default; local runs are wrapped in
``torch.no_grad()`` because saved slices would otherwise keep graph references (~5% time).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import inspect
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .cache import TensorCache
from .compiled import check_compilable, compiled_blocks
from .errors import InputError
from .models import Model, states_cache_dir
from .packing import check_packing, check_window, mask_kind, pack_rows, pack_width, packed_batch
from .prompts import encode, sha, template_fingerprint

if TYPE_CHECKING:
    from .lens import LensResult

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
    bytes_received: int | None = None
    """Remote runs: bytes the server sent back for the prompts computed in this call (``None`` locally)."""
    bytes_per_prompt: float | None = None
    """Remote runs: ``bytes_received`` per computed prompt (cached prompts cost nothing)."""


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
    lens: LensResult | None = None
    """The logit lens of the same forward pass, when ``extract(..., lens_top_k=k)`` asked for it."""

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
        """Write ``path.safetensors`` (the tensors) and ``path.json`` (everything else).

        A lens, when present, is stored in the same two files (tensors named ``lens.*``).
        """
        stem = Path(path).with_suffix("")
        stem.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"states": self.states.contiguous()}
        payload = self.model_dump(exclude={"states", "lens"}, mode="json")
        if self.lens is not None:
            lens_payload, lens_tensors = self.lens.to_parts()
            tensors.update({f"lens.{k}": v for k, v in lens_tensors.items()})
            payload["lens"] = lens_payload
        save_file(tensors, str(stem.with_suffix(".safetensors")))
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
            tensors = load_file(str(stem.with_suffix(".safetensors")))
            states = tensors["states"]
        except (ValueError, KeyError, OSError) as e:
            raise InputError(f"Cannot read hidden states at {stem}: {e}") from e
        lens_payload = payload.pop("lens", None)
        if lens_payload is not None:
            from .lens import LensResult

            lens_tensors = {k.removeprefix("lens."): v for k, v in tensors.items() if k.startswith("lens.")}
            payload["lens"] = LensResult.from_parts(lens_payload, lens_tensors)
        return cls(states=states, **payload)


@functools.cache
def _versions() -> dict[str, str]:
    """Package versions for the metadata; read once per process (each lookup scans the installed packages)."""
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


LENS_ROWS = 256
"""Rows per unembedding matrix product in the lens: several layers' slices are stacked until
about this many rows, so the product is compute-bound rather than a re-read of the whole
unembedding per layer, while memory stays bounded by ``LENS_ROWS x V`` floats."""


def _forward_kwargs(model: Model) -> dict[str, Any]:
    """Extra forward arguments: only the last position's logits, and no key-value cache.

    The traces here never read the model's own logits; computing them for every position is
    ~20% of a small model's forward. Nor do they decode further, so a cache of every layer's
    keys and values would be built for nothing. Hidden states are unaffected.
    """
    try:
        params = inspect.signature(model.hf.forward).parameters
    except (TypeError, ValueError):
        return {}
    kwargs: dict[str, Any] = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    if "use_cache" in params:
        kwargs["use_cache"] = False
    return kwargs


def _saves_to_host(model: Model) -> bool:
    """Whether a trace copies each saved slice to the host as it is taken.

    Remote (and simulated) traces must: what they return is serialised. A local trace keeps
    the state slices on the model's device and copies them after the forward pass: a ``.cpu()``
    per layer inside the trace would wait for the GPU at every block (a host sync per layer).
    """
    return model.backend != "local"


def trace_batch(
    model: Model,
    batch: dict[str, torch.Tensor],
    **kwargs: Any,
) -> dict[str, torch.Tensor]:
    """:func:`_trace_batch` through the model's backend (remote: retries, clear errors, byte count)."""
    from .backends import run

    last = kwargs.get("last")
    n_prompts = int(batch["input_ids"].shape[0]) if last is None else len(last)
    return run(model, lambda: _trace_batch(model, batch, **kwargs), n_prompts=n_prompts)


def _trace_batch(
    model: Model,
    batch: dict[str, torch.Tensor],
    *,
    states: bool = True,
    lens_layers: Sequence[int] = (),
    top_k: int = 5,
    category_ids: Sequence[torch.Tensor] = (),
    prob_sum_layers: Sequence[int] = (),
    last: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """One nnsight trace over a left-padded or packed batch; only what is asked for leaves it.

    Walks layers ``0..L`` in forward order and takes each layer's last-token state ``h``
    (``[B, D]``). For a layer in ``lens_layers`` or ``prob_sum_layers`` it computes the lens
    ``softmax(unembed(final_norm(h)))`` in float32 — the final norm applied once, the config's
    logit soft-capping ``tanh(x / cap) * cap`` applied where set — then reduces it in the trace.
    Slices of consecutive layers are stacked into one product of about :data:`LENS_ROWS` rows.

    Args:
        model: the model.
        batch: from :func:`pad_batch`, or the inputs of :func:`ihs_sight.packing.packed_batch`.
        states: return the states.
        lens_layers: layers whose lens top-k (and category masses) to return.
        top_k: k of the lens top-k.
        category_ids: one id tensor per emotion category; their probability sums are returned.
        prob_sum_layers: layers whose full-vocabulary lens probabilities are summed (over the
            batch and these layers) into one vector.
        last: for a packed batch, each prompt's last-token index in the flattened rows
            (``None``: a left-padded batch, whose last column is every row's last token).

    Returns:
        As requested (B: prompts): ``states`` (B, L+1, D) float32; ``lens_ids`` (B, n_lens, k) int64;
        ``lens_logits`` and ``lens_probs`` (B, n_lens, k) float32; ``lens_mass``
        (B, n_lens, n_categories) float32; ``prob_sum`` (V,) float32.

    The trace body uses only torch and nnsight operations, so it runs unchanged on NDIF.
    """
    import nnsight

    blocks = model.blocks()
    index = model.arch.output_index
    norm = model.envoy(model.arch.final_norm)
    unembed = model.envoy(model.arch.unembed)
    cap = model.softcap
    lens_set, sum_set = set(lens_layers), set(prob_sum_layers)
    wanted = sorted(lens_set | sum_set)
    cats = list(category_ids)
    n_prompts = int(batch["input_ids"].shape[0]) if last is None else len(last)
    chunk = max(1, LENS_ROWS // n_prompts)  # layers per unembedding product
    to_host = _saves_to_host(model)
    # A packed batch's index, copied once to each device the states live on: indexing a device
    # tensor with a host index copies it at every layer, and the host waits for the device each time.
    last_on: dict[torch.device, torch.Tensor] = {}
    if last is not None and not to_host:
        for device in {p.device for p in model.hf.parameters()}:
            last_on[device] = last.to(device)
    with model.nn.trace(batch, remote=model.remote, **_forward_kwargs(model)):
        saved_states = nnsight.save([])
        lens_ids = nnsight.save([])
        lens_logits = nnsight.save([])
        lens_probs = nnsight.save([])
        lens_mass = nnsight.save([])
        prob_sum = nnsight.save([])
        pending = []
        total = None  # running sum of the prob_sum layers' distributions, [V]
        for layer in range(len(blocks) + 1):
            if layer == 0:
                full = blocks[0].input
            else:
                out = blocks[layer - 1].output
                full = out if index is None else out[index]
            hidden = full[:, -1] if last is None else full.flatten(0, 1)[last_on.get(full.device, last)]
            if states:
                # clone(): on a CPU server .cpu() is a no-op and the slice would ship the
                # whole [B, T, D] storage it views (and, kept on the device, keep it alive).
                saved_states.append(hidden.detach().cpu().clone() if to_host else hidden.detach().clone())
            if layer in lens_set or layer in sum_set:
                pending.append((layer, hidden))
            if pending and (len(pending) == chunk or layer == wanted[-1]):
                rows = torch.cat([h for _, h in pending], 0)  # [n * B, D], layer-major
                # The modules are called as plain functions here: extra math on the slices,
                # not the model's own (hooked) call of the norm and the unembedding.
                logits = unembed(norm(rows)).float()
                if cap is not None:
                    logits = torch.tanh(logits / cap) * cap
                logits = logits.view(len(pending), -1, logits.shape[-1])  # [n, B, V]
                probs = logits.softmax(-1)
                top = probs.topk(top_k, dim=-1)
                for j, (at, _) in enumerate(pending):
                    if at in lens_set:
                        lens_ids.append(top.indices[j].detach().cpu())
                        lens_probs.append(top.values[j].detach().cpu())
                        lens_logits.append(logits[j].gather(-1, top.indices[j]).detach().cpu())
                        if cats:
                            masses = [probs[j][:, c.to(probs.device)].sum(-1) for c in cats]
                            lens_mass.append(torch.stack(masses, -1).detach().cpu())
                    if at in sum_set:
                        total = probs[j].sum(0) if total is None else total + probs[j].sum(0)
                pending = []
        if total is not None:
            prob_sum.append(total.detach().cpu())
    result: dict[str, torch.Tensor] = {}
    if states:
        # Slices kept on the device are stacked there and copied to the host once, in the model's
        # dtype (half the bytes of float32 for bf16); slices from blocks on different GPUs
        # (device_map="auto") are copied one at a time.
        slices = list(saved_states)
        if len({t.device for t in slices}) > 1:
            slices = [t.cpu() for t in slices]
        result["states"] = torch.stack(slices, 1).cpu().float()
    if lens_set:
        result["lens_ids"] = torch.stack(list(lens_ids), 1).long()
        result["lens_probs"] = torch.stack(list(lens_probs), 1).float()
        result["lens_logits"] = torch.stack(list(lens_logits), 1).float()
        if cats:
            result["lens_mass"] = torch.stack(list(lens_mass), 1).float()
    if sum_set:
        result["prob_sum"] = prob_sum[0].float()
    return result


def extract_meta(
    model: Model, texts: list[str], *, chat: bool, system_prompt: str | None, template: str
) -> ExtractMeta:
    """The metadata (and cache identity) of a set of prompts run through ``model``."""
    return ExtractMeta(
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
        prompt_hashes=[sha(t) for t in texts],
        versions=dict(_versions()),
    )


def _trim_heap() -> None:
    """Give the C heap's free pages back to the OS (glibc only; a no-op elsewhere).

    Each batch allocates activations of its own width; glibc keeps what is freed (its mmap
    threshold grows after the first large free), so without this the resident memory of a long
    CPU extraction creeps up with the number of batches, not with what is kept.
    """
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim  # noqa: B018 (present on glibc only)
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC: Any = None


def with_bytes(meta: ExtractMeta, model: Model, before: int, n_computed: int) -> ExtractMeta:
    """``meta`` with the bytes a remote model received since ``before`` (unchanged for local models)."""
    if model.backend != "remote":
        return meta
    received = model.bytes_received - before
    return meta.model_copy(update={"bytes_received": received,
                                   "bytes_per_prompt": round(received / n_computed, 1) if n_computed else None})


def _forwards(
    model: Model, ids: list[list[int]], todo: list[int], *, batch_size: int, pack: bool | int
) -> Iterator[tuple[list[int], dict[str, torch.Tensor], torch.Tensor | None]]:
    """The forward passes that compute ``todo``: (prompt indices, model inputs, packed last-token index).

    Padded: length-bucketed batches of ``batch_size`` prompts. Packed: first-fit-decreasing
    rows, ``batch_size`` rows per forward, prompts in row order.
    """
    lengths = [len(ids[i]) for i in todo]
    width = pack_width(pack, lengths) if todo else None
    if width is None:
        for b in length_batches(lengths, batch_size):
            batch = [todo[j] for j in b]
            yield batch, pad_batch([ids[i] for i in batch], model.pad_id), None
        return
    check_window(model, lengths)
    kind = mask_kind(model)
    check_packing(model)
    rows = [[todo[j] for j in row] for row in pack_rows(lengths, width)]
    # Local inputs are built where the model runs; a remote request ships host tensors.
    device = model.device if model.backend == "local" else torch.device("cpu")
    for k in range(0, len(rows), batch_size):
        forward = rows[k:k + batch_size]
        inputs, last = packed_batch([[ids[i] for i in row] for row in forward], model.pad_id, mask=kind,
                                    dtype=model.dtype, device=device)
        yield [i for row in forward for i in row], inputs, last


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
            padding each batch to its longest prompt (:mod:`ihs_sight.packing`): no compute on
            padding and fewer, larger forwards, the fast path on a GPU. Checked once per model
            to keep prompts apart exactly; needs SDPA or eager attention. States equal the
            padded path's to float rounding.
        compile: run the blocks' insides through ``torch.compile`` during this call
            (:mod:`ihs_sight.compiled`; local models): fused kernels on a GPU, after a one-time
            compilation of seconds to a minute. Best with ``pack``, whose rows keep shapes few.

    Returns:
        :class:`HiddenStates` with ``states`` of shape (n_prompts, L + 1, d_model), and
        ``lens`` (a :class:`ihs_sight.lens.LensResult`) when ``lens_top_k`` is set.

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
    pack_width(pack, [1])  # a bad pack value fails even when every prompt is cached
    if compile:
        check_compilable(model)  # fails even when every prompt is cached
    lens_spec = None
    if lens_top_k is not None:
        from .lens import lens_spec_for

        lens_spec = lens_spec_for(model, lens_top_k)
    ids, template = prepare(model, texts, chat=chat, system_prompt=system_prompt)
    meta = extract_meta(model, texts, chat=chat, system_prompt=system_prompt, template=template)
    hashes = meta.prompt_hashes
    store = lens_store = None
    if cache is not False:
        root = states_cache_dir() if cache is True else Path(cache)
        context = {"kind": "last_token_states", "weights": meta.weights_hash, "template": template,
                   "system_prompt": system_prompt, "chat": chat, "dtype": meta.dtype,
                   "n_layers": meta.n_layers, "d_model": meta.d_model}
        store = TensorCache(root, context)
        if lens_spec is not None:
            # A context of its own: the lens rows depend on k and on the lexicon's token ids too.
            lens_store = TensorCache(root, {**context, "kind": "logit_lens", **lens_spec.cache_key()})
    found = store.get(hashes) if store is not None else {}
    found_lens = lens_store.get(hashes) if lens_store is not None else {}
    want_lens = lens_spec is not None
    todo = [i for i, h in enumerate(hashes) if h not in found or (want_lens and h not in found_lens)]
    # The same text twice is computed once.
    first: dict[str, int] = {}
    todo = [i for i in todo if first.setdefault(hashes[i], i) == i]
    if found:
        log.info("cache: %d of %d prompts loaded, %d to compute", len(texts) - len(todo), len(texts), len(todo))
    # Rows go straight into one preallocated (N, L+1, D) tensor: memory grows by one state row
    # per prompt, with no per-batch tensors kept alive and no final stacking copy.
    positions: dict[str, list[int]] = {}
    for i, h in enumerate(hashes):
        positions.setdefault(h, []).append(i)
    states_out = torch.empty(len(texts), meta.n_layers + 1, meta.d_model, dtype=torch.float32)
    cached = set(found)
    for h, row in found.items():
        states_out[positions[h]] = row["states"].float()
    del found  # the loaded cache entries
    computed_lens: dict[str, dict[str, torch.Tensor]] = {}
    trace_kwargs = lens_spec.trace_kwargs() if lens_spec is not None else {}
    received_before = model.bytes_received
    speedup = compiled_blocks(model) if compile and todo else contextlib.nullcontext()
    with torch.no_grad(), speedup, tqdm(total=len(todo), desc="extract", unit="prompt",
                                        disable=not progress or not todo) as bar:
        for batch, inputs, last in _forwards(model, ids, todo, batch_size=batch_size, pack=pack):
            out = trace_batch(model, inputs, last=last, **trace_kwargs)
            batch_hashes = [hashes[i] for i in batch]
            lens_rows = {k: v for k, v in out.items() if k.startswith("lens_")}
            if store is not None:
                # Rows whose states were cached already (only their lens was missing) are not rewritten.
                new = [j for j, h in enumerate(batch_hashes) if h not in cached]
                if new:
                    store.put([batch_hashes[j] for j in new], {"states": out["states"][new]})
            if lens_store is not None:
                lens_store.put(batch_hashes, lens_rows)
            for j, h in enumerate(batch_hashes):
                if h not in cached:
                    states_out[positions[h]] = out["states"][j]
                if lens_rows:
                    computed_lens[h] = {k: v[j].clone() for k, v in lens_rows.items()}
            del out, lens_rows
            if model.device.type == "cpu":
                _trim_heap()
            bar.update(len(batch))
    meta = with_bytes(meta, model, received_before, len(todo))
    lens = None
    if lens_spec is not None:
        lens_rows_all = [computed_lens[h] if h in computed_lens else found_lens[h] for h in hashes]
        lens = lens_spec.build(
            {k: torch.stack([r[k] for r in lens_rows_all], 0) for k in lens_spec.row_keys},
            prompts=texts, labels=labels, meta=meta,
        )
    return HiddenStates(
        states=states_out,
        prompts=texts,
        labels=labels,
        categories=categories,
        families=families,
        meta=meta,
        lens=lens,
    )


# HiddenStates.lens refers to LensResult, defined in .lens, which imports this module: importing
# it here (after everything .lens needs is defined) lets .lens complete HiddenStates at import,
# whichever of the two modules is imported first.
from . import lens as _lens  # noqa: F401
