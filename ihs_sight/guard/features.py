"""Guard features: one or a few layers' states of each prompt, the forward pass stopped after the deepest.

``pool="last"`` reads the last real token's state, the paper's object; ``pool="mean"`` (the
default) averages the layer's states over the prompt's own tokens: every position after the
chat template's common prefix (the system prompt and the opening of the user turn, identical for
every prompt), so the template's closing tokens are included. On SmolLM2-135M the mean reaches a
given accuracy several layers earlier.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from .. import checks
from ..extract import cache_root, encode_for
from ..layers import check_layers
from ..models import Model
from ..prompts import template_prefix as _prefix_tokens
from ..runtime import traces
from ..runtime.batches import Batch, Store, run_batches
from ..runtime.cache import TensorCache
from ..runtime.compiled import check_compilable
from ..runtime.packing import check_pack
from ..runtime.provenance import dtype_name

Pool = Literal["last", "mean"]
POOLS: tuple[Pool, ...] = ("last", "mean")


def template_prefix(model: Model, *, chat: bool, system_prompt: str | None) -> int:
    """Number of leading template tokens every prompt shares (system prompt, user-turn opening).

    :func:`ihs_sight.prompts.template_prefix` on the model's tokenizer; ``pool="mean"`` averages
    the positions after it.
    """
    return _prefix_tokens(model.tokenizer, chat=chat, system_prompt=system_prompt)


def layer_features(
    model: Model,
    prompts: Any,
    layers: Sequence[int],
    *,
    pool: Pool = "mean",
    batch_size: int = 16,
    chat: bool = True,
    system_prompt: str | None = None,
    cache: bool | str | Path = True,
    progress: bool = True,
    pack: bool | int = False,
    compile: bool = False,
) -> torch.Tensor:
    """(n_prompts, len(layers), D) guard features; each batch's forward pass stops after ``max(layers)``.

    Args:
        model: from :func:`ihs_sight.load_model`.
        prompts: strings or a :class:`PromptSet`.
        layers: layer indices (0 = embeddings, l = block l's output).
        pool: ``"last"`` token or ``"mean"`` over the prompt's own tokens (see the module doc).
        batch_size: prompts per forward pass (with ``pack``: packed rows per forward pass).
        chat, system_prompt: as in :func:`ihs_sight.extract`.
        cache: as in :func:`ihs_sight.extract`; rows are cached per (pool, layers).
        progress: show a progress bar.
        pack, compile: as in :func:`ihs_sight.extract`.
    """
    pool = checks.one_of("pool", pool, POOLS)
    batch_size = checks.batch_size(batch_size)
    width = check_pack(pack)
    if compile:
        check_compilable(model)
    layer_list = check_layers(layers, model.n_layers)
    root = cache_root(cache)
    encoded = encode_for(model, prompts, chat=chat, system_prompt=system_prompt)
    start = template_prefix(model, chat=chat, system_prompt=system_prompt) if pool == "mean" else 0
    stores = []
    if root is not None:
        stores.append(Store(TensorCache(root, {
            "kind": "guard_features", "rows": "token-ids", "pool": pool, "start": start, "layers": layer_list,
            "weights": model.weights_hash, "template": encoded.template, "system_prompt": system_prompt,
            "chat": chat, "dtype": dtype_name(model)}), ("features",)))

    def step(batch: Batch) -> dict[str, torch.Tensor]:
        weights = batch.mean_weights(start) if pool == "mean" else None
        return traces.layer_features(model, batch.inputs, layer_list, last=batch.last, weights=weights)

    run = run_batches(model, encoded, step, batch_size=batch_size, pack=width, compile=compile, stores=stores,
                      desc="guard", progress=progress)
    return run.rows["features"]

