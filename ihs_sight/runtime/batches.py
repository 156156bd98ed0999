"""The one batch loop: how every analysis's prompts flow through a model.

Mental model (:func:`run_batches`):
1. Prompts arrive encoded once (:class:`~ihs_sight.prompts.EncodedPrompts`). Rows already in a
   cache :class:`Store` are loaded; the same text twice is computed once (``dedupe``).
2. What is left is cut into forward passes: length-bucketed, left-padded batches (every row's
   last column is its last real token, positions derived from the mask), or with ``pack``
   prompts packed end to end into rows (:mod:`ihs_sight.runtime.packing`).
3. The analysis's ``step`` runs one trace on a :class:`Batch` and returns row-aligned tensors
   (one row per prompt, in ``batch.indices`` order); each finished batch is written to the
   cache at once, so an interrupted run resumes where it stopped.
4. Rows go straight into one preallocated tensor per output, in prompt order; ``reduce`` keys
   are summed over batches instead.

Autograd is off for the whole loop: a trace's saved slices would otherwise keep graph
references. ``compile`` runs the blocks through :mod:`ihs_sight.runtime.compiled` meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from .cache import TensorCache
from .compiled import compiled_blocks
from .packing import (
    check_packing,
    check_window,
    length_batches,
    mask_kind,
    pack_rows,
    packed_batch,
    pad_batch,
)

if TYPE_CHECKING:
    from ..models import Model
    from ..prompts import EncodedPrompts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Batch:
    """One forward pass: its prompts, the model inputs, and where each prompt's last token is."""

    indices: list[int]
    """(B,) prompt indices, in the order of the rows a step returns."""
    inputs: dict[str, torch.Tensor]
    """``input_ids``, ``attention_mask``, ``position_ids``: left-padded ``[B, T]``, or packed
    rows ``[R, W]`` with a 4D block-diagonal mask."""
    last: torch.Tensor | None
    """Packed: (B,) index of each prompt's last token in the flattened ``[R * W]`` rows.
    ``None``: left-padded, every row's last column is its last token."""
    lengths: list[int]
    """(B,) each prompt's number of tokens."""

    def __len__(self) -> int:
        return len(self.indices)

    def mean_weights(self, start: int) -> torch.Tensor:
        """Weights that average each prompt's states over its own tokens after the first ``start``.

        Returns ``(B, T)`` for a left-padded batch or ``(B, R * W)`` over the flattened packed
        rows: ``1 / n`` on a prompt's tokens from position ``min(start, len - 1)`` on (at least
        its last token), 0 elsewhere.
        """
        return self.tail_weights([max(1, n - start) for n in self.lengths])

    def position_weights(self, back: int) -> torch.Tensor:
        """Weights that pick each prompt's token ``back`` positions before its last (its first, if shorter).

        ``(B, T)`` or ``(B, R * W)`` like :meth:`mean_weights`, a single 1 per prompt.
        """
        ends = self._ends()
        w = torch.zeros(len(self), self._width())
        for i, (end, n) in enumerate(zip(ends, self.lengths)):
            w[i, end - min(back, n - 1)] = 1.0
        return w

    def _width(self) -> int:
        return int(self.inputs["input_ids"].shape[1] if self.last is None else self.inputs["input_ids"].numel())

    def _ends(self) -> list[int]:
        """Each prompt's last token: the last column (left-padded) or its flattened packed index."""
        return [self._width() - 1] * len(self) if self.last is None else [int(v) for v in self.last]

    def tail_weights(self, counts: Sequence[int], *, head: int | None = None) -> torch.Tensor:
        """Weights that average each prompt's states over its last ``counts[j]`` tokens (``(B, T)`` or ``(B, R * W)``).

        ``head``: average over only the first ``head`` (>= 1) tokens of that tail (a reply's opening).
        """
        if head is not None and head < 1:
            raise ValueError(f"head must be at least 1; got {head}.")
        ends = self._ends()
        w = torch.zeros(len(self), self._width())
        for i, (end, n, count) in enumerate(zip(ends, self.lengths, counts)):
            first = end + 1 - min(max(count, 1), n)
            stop = end + 1 if head is None else min(end + 1, first + head)
            w[i, first:stop] = 1.0 / (stop - first)
        return w


@dataclass(frozen=True)
class Store:
    """A cache of some of a step's outputs (``keys``), one row per prompt hash."""

    cache: TensorCache
    keys: tuple[str, ...]


@dataclass(frozen=True)
class BatchRun:
    """What :func:`run_batches` returns."""

    rows: dict[str, torch.Tensor]
    """Every row-aligned output, ``(n_prompts, ...)`` in prompt order (cached rows included)."""
    sums: dict[str, torch.Tensor]
    """``reduce`` outputs summed over every batch."""
    n_computed: int
    """Prompts run through the model in this call (the rest came from the cache)."""
    received: int | None
    """Bytes a remote backend sent back during the call (``None`` for local runs)."""


Step = Callable[[Batch], dict[str, torch.Tensor]]
"""One trace on one batch -> row-aligned tensors (and ``reduce`` tensors)."""


def forwards(model: Model, encoded: EncodedPrompts, todo: Sequence[int], *, batch_size: int,
             width: int | None) -> Iterator[Batch]:
    """The forward passes that compute ``todo``.

    Padded (``width=None``): length-bucketed batches of ``batch_size`` prompts. Packed:
    first-fit-decreasing rows of ``width`` tokens (widened to the longest prompt),
    ``batch_size`` rows per forward, prompts in row order; the model is checked once to keep
    packed prompts apart.
    """
    ids = encoded.ids
    lengths = [len(ids[i]) for i in todo]
    if not lengths:
        return
    if width is None:
        for b in length_batches(lengths, batch_size):
            chosen = [todo[j] for j in b]
            yield Batch(chosen, pad_batch([ids[i] for i in chosen], model.pad_id), None,
                        [len(ids[i]) for i in chosen])
        return
    check_window(model, lengths)
    kind = mask_kind(model)
    check_packing(model)
    rows = [[todo[j] for j in row] for row in pack_rows(lengths, max(width, max(lengths)))]
    device = model.runs_on.input_device(model)
    for k in range(0, len(rows), batch_size):
        chunk = rows[k:k + batch_size]
        inputs, last = packed_batch([[ids[i] for i in row] for row in chunk], model.pad_id, mask=kind,
                                    dtype=model.dtype, device=device)
        chosen = [i for row in chunk for i in row]
        yield Batch(chosen, inputs, last, [len(ids[i]) for i in chosen])


def _trim_heap() -> None:
    """Give the C heap's free pages back to the OS (glibc only; a no-op elsewhere).

    Each batch allocates activations of its own width; glibc keeps what is freed (its mmap
    threshold grows after the first large free), so without this the resident memory of a long
    CPU run creeps up with the number of batches, not with what is kept.
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


class _Rows:
    """Preallocated ``(n, ...)`` outputs, filled row by row in prompt order."""

    def __init__(self, n: int, positions: dict[str, list[int]]) -> None:
        self.n = n
        self.positions = positions
        self.tensors: dict[str, torch.Tensor] = {}

    def put(self, key: str, h: str, row: torch.Tensor) -> None:
        if key not in self.tensors:
            self.tensors[key] = torch.empty((self.n, *row.shape), dtype=row.dtype)
        self.tensors[key][self.positions[h]] = row


def run_batches(
    model: Model,
    encoded: EncodedPrompts,
    step: Step,
    *,
    batch_size: int,
    pack: int | None = None,
    compile: bool = False,
    stores: Sequence[Store] = (),
    reduce: Sequence[str] = (),
    dedupe: bool = True,
    desc: str = "run",
    progress: bool = True,
    bar: Any = None,
) -> BatchRun:
    """Run ``step`` over every prompt not found in ``stores``; rows come back in prompt order.

    Args:
        model: the model the step traces.
        encoded: the prompts, templated and tokenised once.
        step: one trace on a :class:`Batch`.
        batch_size: prompts per forward pass (packed: rows per forward pass).
        pack: row width in tokens to pack prompts into (``None``: left-padded batches).
        compile: run the blocks compiled while the loop runs (local models).
        stores: caches of some outputs, rows keyed by the hash of the prompt's token ids; a prompt
            runs when any store lacks it, and each store receives the rows it lacked. Cached values
            take precedence over recomputed ones.
        reduce: outputs summed over batches (not rows; nothing cached).
        dedupe: compute the same token ids once (``False`` when rows carry per-prompt inputs
            besides the prompt, or every occurrence must count in a ``reduce``; then nothing is
            cached either).
        desc: the progress bar's label.
        progress: show a progress bar (ignored when ``bar`` is given).
        bar: a tqdm bar shared by several loops; advanced by prompts.
    """
    hashes = encoded.row_keys if dedupe else [str(i) for i in range(len(encoded))]
    positions: dict[str, list[int]] = {}
    for i, h in enumerate(hashes):
        positions.setdefault(h, []).append(i)
    out = _Rows(len(hashes), positions)
    missing: list[set[str]] = []
    cached: dict[str, set[str]] = {}  # output key -> hashes whose value came from a store
    for store in stores:
        found = store.cache.get(hashes)
        for h, row in found.items():
            for key in store.keys:
                out.put(key, h, row[key])
        for key in store.keys:
            cached.setdefault(key, set()).update(found)
        missing.append(set(positions) - set(found))
    todo = [rows[0] for h, rows in positions.items() if not stores or any(h in m for m in missing)]
    todo.sort()
    if stores and len(todo) < len(hashes):
        log.info("cache: %d of %d prompts loaded, %d to compute", len(hashes) - len(todo), len(hashes), len(todo))
    sums: dict[str, torch.Tensor] = {}
    before = model.bytes_received
    speedup = compiled_blocks(model) if compile and todo else contextlib.nullcontext()
    own_bar = bar is None
    if own_bar:
        bar = tqdm(total=len(todo), desc=desc, unit="prompt", disable=not progress or not todo)
    try:
        with torch.no_grad(), speedup:
            for batch in forwards(model, encoded, todo, batch_size=batch_size, width=pack):
                result = step(batch)
                batch_hashes = [hashes[i] for i in batch.indices]
                for store, lacking in zip(stores, missing):
                    new = [j for j, h in enumerate(batch_hashes) if h in lacking]
                    if new:
                        store.cache.put([batch_hashes[j] for j in new], {k: result[k][new] for k in store.keys})
                for key, value in result.items():
                    if key in reduce:
                        sums[key] = value if key not in sums else sums[key] + value
                        continue
                    kept = cached.get(key, set())
                    for j, h in enumerate(batch_hashes):
                        if h not in kept:
                            out.put(key, h, value[j])
                del result
                if model.device.type == "cpu":
                    _trim_heap()
                bar.update(len(batch))
    finally:
        if own_bar:
            bar.close()
    return BatchRun(rows=out.tensors, sums=sums, n_computed=len(todo),
                    received=model.runs_on.bytes_since(model, before))
