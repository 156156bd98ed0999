"""The layer index ``l = 0..L``, stated once, and its checks.

One numbering everywhere (states, probes, lens, graft, guard, plots, JSON): ``l = 0`` is the
input of the first block (the embeddings, position embeddings included where the model adds
them; transformers' ``hidden_states[0]``), and ``l >= 1`` is the output of block ``l``
(nnsight's ``blocks[l - 1].output``), with no final norm. Grafting "at layer ``l``" overwrites
that same state; a guard "at layer ``l``" runs blocks ``1..l`` only.

Every public parameter naming layers goes through :func:`check_layer`, :func:`check_layers`
or :func:`check_band`, so every entry point accepts and refuses the same values with the
same message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .checks import as_list
from .errors import InputError


def _is_index(value: Any) -> bool:
    # numpy integers pass through ``__index__``; bool is an int to Python but never a layer.
    if isinstance(value, bool):
        return False
    try:
        return bool(int(value.__index__()) == value)
    except (AttributeError, TypeError):
        return False


def layer_names(n_layers: int) -> list[str]:
    """Name of each index: ``embed`` (the input of block 1), then ``block.1`` .. ``block.L``."""
    return ["embed"] + [f"block.{i}" for i in range(1, n_layers + 1)]


def check_layer(layer: Any, n_layers: int, *, low: int = 0, what: str = "layer") -> int:
    """``layer`` as an ``int`` in ``low..n_layers``, else :class:`InputError`.

    Args:
        layer: the value given.
        n_layers: ``L``, the model's number of blocks.
        low: the smallest index allowed (1 where layer 0, the embeddings, means nothing, e.g. a
            guard's exit layer or the ``seed`` graft's skipped block).
        what: the parameter's name, for the message.
    """
    if not _is_index(layer):
        raise InputError(f"{what} must be an integer layer index, got {layer!r}.")
    value = int(layer)
    if not low <= value <= n_layers:
        first = "0 (embeddings)" if low == 0 else str(low)
        raise InputError(f"{what}={value} is out of range: {what} must be an integer layer index in "
                         f"{first}..{n_layers} (l = output of block l).")
    return value


def check_layers(layers: Any, n_layers: int, *, low: int = 0, what: str = "layers") -> list[int]:
    """A non-empty list of layer indices in ``low..n_layers``, in the order given.

    ``None`` means every index ``low..n_layers``; a single integer means that layer alone.
    """
    if layers is None:
        return list(range(low, n_layers + 1))
    if _is_index(layers):
        layers = [layers]
    values = as_list(what, layers, "None, an integer or a list of integers")
    if not values:
        raise InputError(f"{what} is empty; pass None for every layer.")
    return [check_layer(v, n_layers, low=low, what="layer") for v in values]


def check_band(band: Any, n_layers: int) -> tuple[int, int]:
    """A band ``(lo, hi)`` of layers, inclusive, with ``0 <= lo <= hi <= L``."""
    try:
        lo, hi = band
    except (TypeError, ValueError):
        raise InputError(f"A layer band is a pair (lo, hi), got {band!r}.") from None
    if not (_is_index(lo) and _is_index(hi)):
        raise InputError(f"Band limits must be integers, got {band!r}.")
    if not 0 <= lo <= hi <= n_layers:
        raise InputError(f"Band {band!r} must satisfy 0 <= lo <= hi <= {n_layers} (layer 0 = embeddings).")
    return int(lo), int(hi)


def band_layers(band: Sequence[int]) -> list[int]:
    """Every layer index of an inclusive band."""
    return list(range(band[0], band[1] + 1))


def middle_band(n_layers: int) -> tuple[int, int]:
    """The default "middle layers" band ``(L // 2, 3L // 4)``, inclusive.

    For the 32-layer models of the paper this is 16..24, the band of its lens figures; for
    SmolLM2-135M (L = 30) it is 15..22.
    """
    return n_layers // 2, (3 * n_layers) // 4


def conversion_band(n_layers: int) -> tuple[int, int]:
    """The default band where recognition turns into a refusal: ``(3L // 4, L)``, inclusive.

    The paper reads emotions in the middle layers of 7B-70B models. In the refusal-tuned
    SmolLM2-135M (L = 30) the refusal forms later: over layers 15-22 91% of held-out malicious
    prompts still lean positive, over 22-30 most lean negative; hence the last quarter.
    """
    return (3 * n_layers) // 4, n_layers
