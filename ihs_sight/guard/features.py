"""Guard features: one or a few layers' states of each prompt, the forward pass stopped after the deepest.

Five ways to read a prompt, chosen out of fold (#19: a guard should read the request, not its
wrapper). Three give one state per prompt (:data:`STATE_POOLS`), any probe reads them:

- ``"last"``: the last real token, the paper's object (the end of the template's assistant header);
- ``"user_last"``: the last token of the user's own message, before the template's closing
  tokens (where Zhao et al. 2025 find harmfulness encoded apart from refusal);
- ``"mean"`` (the default): the average over the prompt's own tokens, every position after the
  chat template's common prefix, so the closing tokens are included.

Two score every one of those tokens with one per-token probe and pool the probabilities
(:data:`TOKEN_POOLS`; no knowledge of where a payload sits): ``"max"`` takes the highest,
``"topk"`` the mean of the :data:`TOP_K` highest. Their probe is fitted on token states labelled
with their prompt's label (:class:`TokenStates`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import checks
from ..errors import InputError
from ..extract import cache_root, encode_for
from ..layers import check_layers
from ..models import Model
from ..prompts import template_prefix as _prefix_tokens
from ..prompts import template_suffix as _suffix_tokens
from ..runtime import traces
from ..runtime.batches import Batch, Store, forwards, run_batches
from ..runtime.cache import TensorCache
from ..runtime.compiled import check_compilable
from ..runtime.packing import check_pack
from ..runtime.provenance import dtype_name

Pool = Literal["last", "user_last", "mean", "max", "topk"]
POOLS: tuple[Pool, ...] = ("last", "user_last", "mean", "max", "topk")
STATE_POOLS: tuple[Pool, ...] = ("last", "user_last", "mean")
"""Pools with one state per prompt (:func:`layer_features`)."""
TOKEN_POOLS: tuple[Pool, ...] = ("max", "topk")
"""Pools of a per-token probe's probabilities (:func:`token_states`, :func:`pool_scores`)."""
TOP_K = 4
"""Tokens ``"topk"`` averages: the highest-scoring ones of each prompt (all of them when it has fewer)."""
FIT_TOKENS = 4
"""Tokens per prompt a per-token probe is fitted on: the last one and a seeded draw of the rest,
so long prompts do not outweigh short ones."""


def template_prefix(model: Model, *, chat: bool, system_prompt: str | None) -> int:
    """Number of leading template tokens every prompt shares (system prompt, user-turn opening).

    :func:`ihs_sight.prompts.template_prefix` on the model's tokenizer; ``pool="mean"`` averages
    the positions after it.
    """
    return _prefix_tokens(model.tokenizer, chat=chat, system_prompt=system_prompt)


def template_suffix(model: Model, *, chat: bool, system_prompt: str | None) -> int:
    """Number of trailing template tokens every prompt shares (end of the user turn, assistant header).

    :func:`ihs_sight.prompts.template_suffix` on the model's tokenizer; ``pool="user_last"`` reads
    the position this many tokens before the last.
    """
    return _suffix_tokens(model.tokenizer, chat=chat, system_prompt=system_prompt)


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
    if pool in TOKEN_POOLS:
        raise InputError(f"pool={pool!r} pools a per-token probe's scores, not states; read the token states "
                         "with token_states() (or score with a Guard).")
    batch_size = checks.batch_size(batch_size)
    width = check_pack(pack)
    if compile:
        check_compilable(model)
    layer_list = check_layers(layers, model.n_layers)
    root = cache_root(cache)
    encoded = encode_for(model, prompts, chat=chat, system_prompt=system_prompt)
    start = template_prefix(model, chat=chat, system_prompt=system_prompt) if pool == "mean" else 0
    back = template_suffix(model, chat=chat, system_prompt=system_prompt) if pool == "user_last" else 0
    stores = []
    if root is not None:
        key: dict[str, Any] = {
            "kind": "guard_features", "rows": "token-ids", "pool": pool, "start": start, "layers": layer_list,
            "weights": model.weights_hash, "template": encoded.template, "system_prompt": system_prompt,
            "chat": chat, "dtype": dtype_name(model)}
        if pool == "user_last":
            key["back"] = back
        stores.append(Store(TensorCache(root, key), ("features",)))

    def step(batch: Batch) -> dict[str, torch.Tensor]:
        if pool == "mean":
            weights = batch.mean_weights(start)
        elif pool == "user_last":
            weights = batch.position_weights(back)
        else:
            weights = None
        return traces.layer_features(model, batch.inputs, layer_list, last=batch.last, weights=weights)

    run = run_batches(model, encoded, step, batch_size=batch_size, pack=width, compile=compile, stores=stores,
                      desc="guard", progress=progress)
    return run.rows["features"]


# ---------------------------------------------------------------------------- per-token pools


@dataclass(frozen=True)
class TokenStates:
    """Each prompt's own token states at some layers, flattened: prompt ``i`` owns rows ``offsets[i]:offsets[i + 1]``.

    A prompt's own tokens are those after the template's common prefix (as ``pool="mean"``
    averages), in order; its last row is its last token.
    """

    states: torch.Tensor
    """(n_tokens, n_layers, D) float32."""
    offsets: torch.Tensor
    """(n_prompts + 1,) int64 row offsets."""

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def rows(self, prompts: Sequence[int] | np.ndarray[Any, Any]) -> torch.Tensor:
        """Row indices of the given prompts' tokens, prompt after prompt."""
        o = self.offsets
        return torch.cat([torch.arange(int(o[i]), int(o[i + 1])) for i in prompts]) if len(prompts) else (
            torch.zeros(0, dtype=torch.long))

    def owners(self, prompts: Sequence[int] | np.ndarray[Any, Any]) -> torch.Tensor:
        """For each row of :meth:`rows`, the position of its prompt in ``prompts``."""
        o = self.offsets
        return torch.cat([torch.full((int(o[i + 1] - o[i]),), j, dtype=torch.long) for j, i in enumerate(prompts)])

    def fit_rows(self, prompts: Sequence[int] | np.ndarray[Any, Any], random_state: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rows, owner)`` a per-token probe is fitted on: each prompt's last token and a seeded draw of
        up to ``FIT_TOKENS - 1`` of its others; ``owner[r]`` is the position of row ``r``'s prompt in ``prompts``."""
        rng = np.random.default_rng(random_state)
        rows, owner = [], []
        for j, i in enumerate(prompts):
            lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
            others = np.arange(lo, hi - 1)
            take = rng.choice(others, size=min(FIT_TOKENS - 1, len(others)), replace=False) if len(others) else others
            picked = np.sort(np.append(take, hi - 1))
            rows.append(torch.from_numpy(picked.astype(np.int64)))
            owner.append(torch.full((len(picked),), j, dtype=torch.long))
        return torch.cat(rows), torch.cat(owner)


def token_states(
    model: Model,
    prompts: Any,
    layers: Sequence[int],
    *,
    batch_size: int = 16,
    chat: bool = True,
    system_prompt: str | None = None,
    progress: bool = True,
) -> TokenStates:
    """Every own token's state of each prompt at ``layers``; each batch's pass stops after ``max(layers)``.

    Left-padded, length-bucketed batches; not cached (one row per token, not per prompt).
    """
    batch_size = checks.batch_size(batch_size)
    layer_list = check_layers(layers, model.n_layers)
    encoded = encode_for(model, prompts, chat=chat, system_prompt=system_prompt)
    start = template_prefix(model, chat=chat, system_prompt=system_prompt)
    own: list[torch.Tensor | None] = [None] * len(encoded)
    with torch.no_grad(), tqdm(total=len(encoded), desc="guard tokens", unit="prompt", disable=not progress) as bar:
        for batch in forwards(model, encoded, list(range(len(encoded))), batch_size=batch_size, width=None):
            states = traces.token_states(model, batch.inputs, layer_list)["states"]  # (B, T, n_layers, D)
            for j, (i, n) in enumerate(zip(batch.indices, batch.lengths)):
                keep = max(1, n - start)
                own[i] = states[j, states.shape[1] - keep:].clone()
            bar.update(len(batch))
    parts = [t for t in own if t is not None]
    counts = torch.tensor([0] + [len(t) for t in parts], dtype=torch.long)
    return TokenStates(states=torch.cat(parts), offsets=counts.cumsum(0))


def pool_scores(p: torch.Tensor | np.ndarray[Any, Any], owner: torch.Tensor, n: int, pool: Pool) -> np.ndarray[Any, Any]:
    """(n, ...) prompt scores from per-token scores ``p`` (n_rows, ...): the max, or the mean of the top :data:`TOP_K`."""
    pool = checks.one_of("pool", pool, TOKEN_POOLS)
    owner = torch.as_tensor(owner, dtype=torch.long)
    in_range = len(owner) > 0 and int(owner.min()) >= 0 and int(owner.max()) < n
    if len(owner) != len(p) or not in_range or int(torch.bincount(owner, minlength=n).min()) == 0:
        raise InputError(f"pool_scores needs one owner in 0..{n - 1} per token score, with every prompt owning "
                         f"a token; got {len(owner)} owners for {len(p)} scores.")
    scores = torch.as_tensor(np.asarray(p), dtype=torch.float64)
    out = torch.empty((n, *scores.shape[1:]), dtype=torch.float64)
    order = torch.argsort(owner, stable=True)
    owner_sorted, scores_sorted = owner[order], scores[order]
    counts = torch.bincount(owner_sorted, minlength=n).tolist()
    for j, chunk in enumerate(torch.split(scores_sorted, counts)):
        if pool == "max":
            out[j] = chunk.max(0).values
        else:
            k = min(TOP_K, len(chunk))
            out[j] = chunk.topk(k, dim=0).values.mean(0)
    return out.numpy()
