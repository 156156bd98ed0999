"""What a graft writes: donor states, checked and resolved once per call.

A graft (or an added steering vector) needs one vector per target at each layer. It comes from
donor prompts (their last-token states, extracted with the targets' template), a
``HiddenStates`` computed earlier, or a tensor ``[D]`` / ``[N, D]`` used as given at every
layer; ``pairing="mean"`` averages the rows, ``"paired"`` gives row ``i`` to target ``i``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch

from .errors import InputError
from .extract import HiddenStates, extract
from .models import Model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Donors:
    """The rows a graft (or a steering vector) is made of, and how they were given."""

    kind: Literal["prompts", "states", "tensor"]
    """``prompts`` (extracted here), ``states`` (a ``HiddenStates``) or ``tensor``."""
    n: int
    """Number of rows."""
    rows: torch.Tensor
    """(n, L+1, D) donor states for prompts/states; (n, D) for a tensor (the same at every layer)."""

    def vectors(self, layer: int, pairing: str, n_targets: int, scale: float) -> torch.Tensor:
        """(n_targets, D) float32 graft vectors."""
        rows = self.rows if self.kind == "tensor" else self.rows[:, layer]
        rows = rows.float()
        vecs = rows.mean(0, keepdim=True).expand(n_targets, -1) if pairing == "mean" else rows
        vecs = scale * vecs
        if not torch.isfinite(vecs).all():
            raise InputError(
                f"The graft vectors at layer {layer} contain NaN or inf (the source states overflowed); "
                "use a float32 model or a smaller scale."
            )
        return vecs.contiguous()



def check_tensor(model: Model, source: torch.Tensor, pairing: str, n_targets: int) -> torch.Tensor:
    """A user's tensor source as float32 rows ``(n, D)``, checked against the model and the pairing."""
    d = model.d_model
    if not (torch.is_floating_point(source)):
        raise InputError(
            f"source tensor has dtype {source.dtype}; graft vectors must be floating point (e.g. .float())."
        )
    if source.ndim not in (1, 2) or source.shape[-1] != d or source.numel() == 0:
        raise InputError(
            f"source tensor has shape {tuple(source.shape)}; "
            f"expected [{d}] (one vector) or [N, {d}] (one per row)."
        )
    if not torch.isfinite(source).all():
        raise InputError("source tensor contains NaN or inf; pass finite values.")
    rows = source.detach().to("cpu", torch.float32)
    if rows.ndim == 1:
        if pairing == "paired":
            raise InputError(
                f"pairing='paired' needs one source row per target ([{n_targets}, {d}]); "
                "a single [D] vector goes with pairing='mean'."
            )
        rows = rows[None]
    if pairing == "paired" and rows.shape[0] != n_targets:
        raise InputError(
            f"pairing='paired' needs one source row per target: "
            f"got {rows.shape[0]} rows for {n_targets} targets."
        )
    return rows


def resolve_donors(
    model: Model,
    source: Any,
    *,
    pairing: str,
    n_targets: int,
    chat: bool,
    system_prompt: str | None,
    batch_size: int,
    cache: bool | str | Any,
    progress: bool,
) -> Donors:
    """Donor rows from a tensor, a ``HiddenStates`` or donor prompts (extracted with the targets' template)."""
    if isinstance(source, torch.Tensor):
        rows = check_tensor(model, source, pairing, n_targets)
        return Donors(kind="tensor", n=rows.shape[0], rows=rows)
    if isinstance(source, HiddenStates):
        if source.meta.weights_hash != model.weights_hash:
            raise InputError(
                "source HiddenStates were extracted from different weights; extract them with this model."
            )
        if source.meta.chat != chat or source.meta.system_prompt != system_prompt:
            log.warning(
                "source states were extracted with chat=%s, system_prompt=%r; the targets use chat=%s, %r",
                source.meta.chat, source.meta.system_prompt, chat, system_prompt,
            )
        states = source.states
        kind: Literal["prompts", "states"] = "states"
    else:
        if isinstance(source, str):
            raise InputError("source must be a list of prompts, not a single string; wrap it: [prompt].")
        if not (hasattr(source, "texts") or isinstance(source, (list, tuple))):
            raise InputError(
                f"source must be a PromptSet, a list of prompts, a HiddenStates or a tensor [D] / [N, D]; "
                f"got {type(source).__name__}."
            )
        if len(source) == 0:
            raise InputError("source is empty; pass at least one donor prompt.")
        try:
            states = extract(
                model, source, batch_size=batch_size, chat=chat, system_prompt=system_prompt,
                cache=cache, progress=progress,
            ).states
        except InputError as e:
            raise InputError(f"source: {e}") from None
        kind = "prompts"
    if pairing == "paired" and states.shape[0] != n_targets:
        raise InputError(
            f"pairing='paired' needs one donor per target: "
            f"got {states.shape[0]} donors for {n_targets} targets."
        )
    return Donors(kind=kind, n=states.shape[0], rows=states)
