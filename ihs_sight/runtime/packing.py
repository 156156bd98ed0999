"""How prompts become model inputs: left-padded batches, or packed rows with no padding between prompts.

Padding (:func:`pad_batch`): prompts of similar length (:func:`length_batches`) are left-padded,
so every row's last column is its last real token, and given mask-derived ``position_ids``.

Packing (the rest of this module): several prompts share one row of a forward pass.

A padded batch spends compute on pad tokens and runs many short forwards; on a GPU that caps
throughput well below peak. Packing puts prompts end to end in rows of ``width`` tokens
(first-fit decreasing), restarts ``position_ids`` at each prompt and passes a 4D
block-diagonal causal mask, so every prompt attends only to itself and sees the positions it
would see alone. Each prompt's last-token state is then read at its own (row, column).

Exactness needs a model that takes its positions from ``position_ids`` and honours a 4D mask
(rotary and learned absolute positions do; ALiBi built from a 2D mask does not), so
:func:`check_packing` verifies that once per model before the first packed run.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..errors import IhsSightError, InputError
from . import traces

if TYPE_CHECKING:
    from ..models import Model

DEFAULT_WIDTH = 256
"""Row width used by ``pack=True``. Wider rows waste attention work on masked blocks (SDPA with
a dense mask is quadratic in the row); 256 was the fastest of 256/512/1024 on an H200."""

_CHECKED: weakref.WeakSet[Any] = weakref.WeakSet()
"""Models that passed :func:`check_packing` in this process (dropped with the model)."""

CHECK_RATIO = 0.1
"""A packed prompt must differ from the same prompt run alone by less than this fraction of
how much a neighbour's tokens would change it (see :func:`check_packing`)."""


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


def pack_rows(lengths: Sequence[int], width: int) -> list[list[int]]:
    """First-fit decreasing: indices of the prompts in each row; a row's lengths sum to <= ``width``."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        for r, free in enumerate(room):
            if free >= lengths[i]:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(width - lengths[i])
    return rows


def packed_batch(rows: Sequence[Sequence[Sequence[int]]], pad_id: int, *,
                 mask: str = "bool", dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Model inputs for rows of packed token-id lists, and each prompt's flat last-token index.

    Args:
        rows: per row, the token ids of the prompts packed into it.
        pad_id: fills each row's tail.
        mask: ``"bool"`` (True = attend; SDPA) or ``"additive"`` (0 or the dtype's minimum; eager attention).
        dtype: the additive mask's dtype (the model's).
        device: where to build the inputs (the model's device: the ``[R, 1, W, W]`` mask is
            made there from ``[R, W]`` segment ids instead of being built on the host and copied).

    Returns:
        ``{"input_ids", "position_ids", "attention_mask"}`` with ids ``[R, W]`` and the mask
        ``[R, 1, W, W]``, and ``last`` ``[n_prompts]``: index of each prompt's last token in the
        ``[R * W]`` flattened rows, prompts in row order. The tail is a segment of its own.
    """
    width = max(sum(len(p) for p in row) for row in rows)
    ids_rows: list[list[int]] = []
    pos_rows: list[list[int]] = []
    seg_rows: list[list[int]] = []
    last: list[int] = []
    for r, row in enumerate(rows):
        ids_row: list[int] = []
        pos_row: list[int] = []
        seg_row: list[int] = []
        for s, ids in enumerate(row):
            ids_row.extend(ids)
            pos_row.extend(range(len(ids)))
            seg_row.extend([s] * len(ids))
            last.append(r * width + len(ids_row) - 1)
        tail = width - len(ids_row)
        ids_rows.append(ids_row + [pad_id] * tail)
        pos_rows.append(pos_row + list(range(tail)))
        seg_rows.append(seg_row + [-1] * tail)  # the tail is a segment of its own
    input_ids = torch.tensor(ids_rows, dtype=torch.long, device=device)
    position_ids = torch.tensor(pos_rows, dtype=torch.long, device=device)
    segment = torch.tensor(seg_rows, dtype=torch.long, device=device)
    causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
    attention: torch.Tensor = ((segment[:, :, None] == segment[:, None, :]) & causal)[:, None]
    if mask == "additive":
        attention = torch.zeros(attention.shape, dtype=dtype, device=device).masked_fill(~attention,
                                                                                          torch.finfo(dtype).min)
    return ({"input_ids": input_ids, "position_ids": position_ids, "attention_mask": attention},
            torch.tensor(last, dtype=torch.long))


def mask_kind(model: Model) -> str:
    """How this model takes a 4D mask: ``"bool"`` (SDPA) or ``"additive"`` (eager attention).

    Raises:
        InputError: for attention implementations that take no 4D mask (flash-attention, flex).
    """
    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    if impl == "sdpa":
        return "bool"
    if impl == "eager":
        return "additive"
    raise InputError(f"pack needs 'sdpa' or 'eager' attention; this model uses {impl!r}. "
                     "Load it with attn_implementation='sdpa', or extract with pack=False.")


def check_window(model: Model, lengths: Sequence[int]) -> None:
    """Refuse packing when a prompt is longer than a sliding attention window.

    The packed mask is one full causal mask per segment for every layer; it equals a sliding
    window mask only while every prompt fits inside the window.
    """
    window = getattr(model.config, "sliding_window", None)
    if getattr(model.config, "use_sliding_window", True) is False or not isinstance(window, int):
        return
    longest = max(lengths)
    if longest > window:
        raise InputError(f"A prompt is {longest} tokens, longer than the model's sliding attention window ({window}): "
                         "packing would let it attend past the window. Extract with pack=False.")


def _probe_ids(model: Model) -> tuple[list[int], list[int]]:
    """Two short token sequences for :func:`check_packing`, from the model's own tokenizer."""
    tok = model.tokenizer
    first = [int(i) for i in tok.encode("The river carried small boats past the old mill.", add_special_tokens=False)]
    second = [int(i) for i in tok.encode("Seven bright stars rose above the quiet hills.", add_special_tokens=False)]
    if len(first) < 2 or len(second) < 2:  # a tokenizer that maps text to almost nothing
        vocab = int(model.config.vocab_size)
        first, second = [i % vocab for i in range(11, 23)], [i % vocab for i in range(41, 51)]
    window = getattr(model.config, "sliding_window", None)
    if isinstance(window, int) and window >= 2:  # a lone prompt inside the window sees all of itself
        first, second = first[:window], second[:window]
    return first, second


def check_packing(model: Model) -> None:
    """Verify once per model that packing leaves a prompt's states as they are alone.

    Runs a second prompt three ways: alone, packed after a first prompt, and after the first
    prompt with a plain causal mask (what a model that ignored the packed mask and positions
    would compute). Packing passes when the packed run is closer to the lone run than
    :data:`CHECK_RATIO` times the plain run's distance, at the last layer; a relative test, so
    it holds in any dtype.

    Raises:
        InputError: the model mixes packed prompts, or fails on packed input (ALiBi built from
            a 2D mask, for one).
    """
    if model in _CHECKED:
        return
    first, second = _probe_ids(model)
    inputs, last = packed_batch([[first, second]], model.pad_id, mask=mask_kind(model), dtype=model.dtype)
    name = type(model.hf).__name__
    with torch.no_grad():
        try:
            packed = traces.last_token_states(model, inputs, last=last)["states"][1, -1]
        except IhsSightError:  # remote failures keep their own type
            raise
        except Exception as e:  # whatever the model's code raises, packing is unsupported
            raise InputError(f"{name} cannot run packed rows ({type(e).__name__}: {e}); it does not take "
                             "position_ids and a 4D mask. Extract with pack=False.") from e
        plain = traces.last_token_states(model, pad_batch([second, first + second], model.pad_id))["states"][:, -1]
    alone, mixed = plain[0], plain[1]
    error = float((packed - alone).norm())
    contamination = float((mixed - alone).norm())
    if not error <= CHECK_RATIO * contamination:
        raise InputError(f"{name} does not keep packed prompts apart (a packed prompt's last state "
                         f"moved {error:.3g}, against {contamination:.3g} for a neighbour it should not see): its "
                         "positions or mask do not follow position_ids and a 4D mask. Extract with pack=False.")
    _CHECKED.add(model)


def check_pack(pack: Any) -> int | None:
    """The row width a ``pack=`` argument asks for: ``None`` (no packing), :data:`DEFAULT_WIDTH` or the int given."""
    if pack is False or pack is None:
        return None
    if pack is True:
        return DEFAULT_WIDTH
    if isinstance(pack, int) and not isinstance(pack, bool) and pack > 0:
        return pack
    raise InputError(f"pack must be True, False or a positive row width in tokens, got {pack!r}.")


def pack_width(pack: Any, lengths: Sequence[int]) -> int | None:
    """Row width for ``pack=...`` and these prompt lengths: rows are widened to the longest prompt."""
    width = check_pack(pack)
    return None if width is None else max(width, max(lengths))


def forget_checks() -> None:
    """Forget which models passed :func:`check_packing` (tests that change a model's attention)."""
    _CHECKED.clear()
