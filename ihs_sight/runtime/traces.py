"""Every nnsight trace body of ihs-sight, side by side.

Mental model: a trace body is the code inside ``with model.nn.trace(...)``. nnsight runs it
against the real forward pass, locally; for NDIF (and ``backend="simulate"``) it serialises the
body's source and the values it names and runs them on the server, where ihs_sight is **not
installed**. Hence the rule for every body here, stated once:

1. it names only torch tensors, Python scalars and containers of them, and nnsight envoys
   (``model.nn`` and its modules) -- never an ihs_sight object, function or class;
2. it calls no helper of ours, which is why the graft edit and the steering edit are each
   written out in both the next-token and the generation trace, and the guard's walk over the
   layers in both its readers (one state per prompt, every token) (the documented duplications);
3. it reads modules in forward order, and saves only the small tensors that should leave it
   (last-token slices, top-k, masses), as host copies when the backend ships results.

The functions here take a batch built by :mod:`ihs_sight.runtime.batches` (left-padded, ``last``
``None``: every row's last column is its last token; or packed rows, ``last``: each prompt's
index into the flattened ``[R * W]`` positions) and return host tensors, one row per prompt.
They run through the model's backend (:func:`ihs_sight.backends.run`).
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..backends import Expected, run

if TYPE_CHECKING:
    from ..models import Model

LENS_ROWS = 256
"""Rows per unembedding matrix product in the lens: several layers' slices are stacked until
about this many rows, so the product is compute-bound rather than a re-read of the whole
unembedding per layer, while memory stays bounded by ``LENS_ROWS x V`` floats."""


@functools.cache
def _forward_params(forward: Any) -> frozenset[str]:
    try:
        return frozenset(inspect.signature(forward).parameters)
    except (TypeError, ValueError):
        return frozenset()


def forward_kwargs(model: Model) -> dict[str, Any]:
    """Extra forward arguments: only the last position's logits, and no key-value cache.

    The traces here read at most the last position's logits; computing them for every position
    is ~20% of a small model's forward. Nor do they decode further, so a cache of every layer's
    keys and values would be built for nothing. Hidden states are unaffected.
    """
    params = _forward_params(type(model.hf).forward)
    kwargs: dict[str, Any] = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    if "use_cache" in params:
        kwargs["use_cache"] = False
    return kwargs


def _n_prompts(batch: dict[str, torch.Tensor], last: torch.Tensor | None) -> int:
    return int(batch["input_ids"].shape[0]) if last is None else len(last)


def _last_on_devices(model: Model, last: torch.Tensor | None) -> dict[torch.device, torch.Tensor]:
    """A packed batch's index, copied once to each device the states live on (local runs).

    Indexing a device tensor with a host index copies the index at every layer, and the host
    waits for the device each time.
    """
    if last is None or model.runs_on.ships_results:
        return {}
    return {device: last.to(device) for device in {p.device for p in model.hf.parameters()}}


# ---------------------------------------------------------------------------- last-token states and lens


def last_token_states(
    model: Model,
    batch: dict[str, torch.Tensor],
    *,
    last: torch.Tensor | None = None,
    states: bool = True,
    lens_layers: Sequence[int] = (),
    top_k: int = 5,
    category_ids: Sequence[torch.Tensor] = (),
    prob_sum_layers: Sequence[int] = (),
) -> dict[str, torch.Tensor]:
    """Last-token states and the logit lens of one batch, from one trace (extract, lens, induce).

    Walks layers ``0..L`` in forward order and takes each layer's last-token state ``h``
    (``[B, D]``). For a layer in ``lens_layers`` or ``prob_sum_layers`` it computes the lens
    ``softmax(unembed(final_norm(h)))`` in float32 -- the final norm applied once, the config's
    logit soft-capping ``tanh(x / cap) * cap`` applied where set -- then reduces it in the trace.
    Slices of consecutive layers are stacked into one product of about :data:`LENS_ROWS` rows.

    Returns:
        As requested (B: prompts): ``states`` (B, L+1, D) float32; ``lens_ids`` (B, n_lens, k) int64;
        ``lens_logits`` and ``lens_probs`` (B, n_lens, k) float32; ``lens_mass``
        (B, n_lens, n_categories) float32; ``prob_sum`` (V,) float32, summed over the batch and
        the ``prob_sum_layers``.
    """
    n = _n_prompts(batch, last)
    vocab, n_lens = model.vocab_size, len(set(lens_layers))
    expect: dict[str, Expected] = {}  # what a server's result must be (checked before anything is kept)
    if states:
        expect["states"] = Expected((n, model.n_layers + 1, model.d_model), "float")
    if n_lens:
        expect["lens_ids"] = Expected((n, n_lens, top_k), "index", vocab)
        expect["lens_probs"] = expect["lens_logits"] = Expected((n, n_lens, top_k), "float")
        if category_ids:
            expect["lens_mass"] = Expected((n, n_lens, len(category_ids)), "float")
    if prob_sum_layers:
        expect["prob_sum"] = Expected((vocab,), "float")
    return run(model, functools.partial(_last_token_states, model, batch, last=last, states=states,
                                        lens_layers=lens_layers, top_k=top_k, category_ids=category_ids,
                                        prob_sum_layers=prob_sum_layers), n_prompts=n, expect=expect)


def _last_token_states(
    model: Model,
    batch: dict[str, torch.Tensor],
    *,
    last: torch.Tensor | None,
    states: bool,
    lens_layers: Sequence[int],
    top_k: int,
    category_ids: Sequence[torch.Tensor],
    prob_sum_layers: Sequence[int],
) -> dict[str, torch.Tensor]:
    import nnsight

    blocks = model.blocks()
    index = model.arch.output_index
    norm = model.envoy(model.arch.final_norm)
    unembed = model.envoy(model.arch.unembed)
    cap = model.softcap
    lens_set, sum_set = set(lens_layers), set(prob_sum_layers)
    wanted = sorted(lens_set | sum_set)
    cats = list(category_ids)
    chunk = max(1, LENS_ROWS // _n_prompts(batch, last))  # layers per unembedding product
    to_host = model.runs_on.ships_results
    last_on = _last_on_devices(model, last)
    with model.nn.trace(batch, remote=model.remote, **forward_kwargs(model)):
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


# ---------------------------------------------------------------------------- guard features


def layer_features(
    model: Model,
    batch: dict[str, torch.Tensor],
    layers: Sequence[int],
    *,
    last: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """``features`` (B, len(layers), D) float32 of one batch; the pass stops after ``max(layers)``.

    ``weights`` averages each layer's states over positions: (B, T) for a left-padded batch,
    (B, R * W) over the flattened packed rows; ``None`` takes each prompt's last token. A stack of
    K such weightings, (K, B, ...), gives K averages from the one pass, side by side: (B, len(layers), K * D).
    """
    n = _n_prompts(batch, last)
    k = 1 if weights is None or weights.dim() == 2 else int(weights.shape[0])
    return run(model, functools.partial(_layer_features, model, batch, layers, last=last, weights=weights),
               n_prompts=n, expect={"features": Expected((n, len(layers), k * model.d_model), "float")})


def _layer_features(
    model: Model,
    batch: dict[str, torch.Tensor],
    layers: Sequence[int],
    *,
    last: torch.Tensor | None,
    weights: torch.Tensor | None,
) -> dict[str, torch.Tensor]:
    import nnsight

    blocks = model.blocks()
    index = model.arch.output_index
    wanted, deepest = set(layers), max(layers)
    last_on = _last_on_devices(model, last)
    with model.nn.trace(batch, remote=model.remote, **forward_kwargs(model)) as tracer:
        saved = nnsight.save([])
        for layer in range(deepest + 1):
            if layer not in wanted:
                continue
            if layer == 0:
                hidden = blocks[0].input
            else:
                out = blocks[layer - 1].output
                hidden = out if index is None else out[index]
            if weights is None:
                feature = hidden[:, -1] if last is None else hidden.flatten(0, 1)[last_on.get(hidden.device, last)]
            else:
                w = weights.to(device=hidden.device, dtype=torch.float32)
                averages = []
                for wk in w if w.dim() == 3 else w[None]:
                    if last is None:
                        averages.append((hidden.float() * wk[:, :, None]).sum(1))
                    else:
                        averages.append(wk @ hidden.flatten(0, 1).float())
                feature = averages[0] if len(averages) == 1 else torch.cat(averages, -1)
            saved.append(feature.detach().float().cpu().clone())
        if deepest < len(blocks):
            tracer.stop()
    taken = sorted(wanted)  # the order the forward pass reached them
    return {"features": torch.stack(list(saved), 1)[:, [taken.index(x) for x in layers]]}


def token_states(model: Model, batch: dict[str, torch.Tensor], layers: Sequence[int]) -> dict[str, torch.Tensor]:
    """``states`` (B, T, len(layers), D) float32: every position of a left-padded batch; the pass stops after ``max(layers)``."""
    n, width = int(batch["input_ids"].shape[0]), int(batch["input_ids"].shape[1])
    return run(model, functools.partial(_token_states, model, batch, layers), n_prompts=n,
               expect={"states": Expected((n, width, len(layers), model.d_model), "float")})


def _token_states(model: Model, batch: dict[str, torch.Tensor], layers: Sequence[int]) -> dict[str, torch.Tensor]:
    import nnsight

    blocks = model.blocks()
    index = model.arch.output_index
    wanted, deepest = set(layers), max(layers)
    with model.nn.trace(batch, remote=model.remote, **forward_kwargs(model)) as tracer:
        saved = nnsight.save([])
        for layer in range(deepest + 1):
            if layer not in wanted:
                continue
            if layer == 0:
                hidden = blocks[0].input
            else:
                out = blocks[layer - 1].output
                hidden = out if index is None else out[index]
            saved.append(hidden.detach().float().cpu().clone())
        if deepest < len(blocks):
            tracer.stop()
    taken = sorted(wanted)
    return {"states": torch.stack(list(saved), 2)[:, :, [taken.index(x) for x in layers]]}


# ---------------------------------------------------------------------------- graft: next token and generation


def grafted_next_token(
    model: Model,
    batch: dict[str, torch.Tensor],
    *,
    last: torch.Tensor | None = None,
    mode: str | None,
    layer: int,
    vecs: torch.Tensor,
    neg_ids: torch.Tensor,
    pos_ids: torch.Tensor,
    top_k: int,
    keep_logits: bool,
) -> dict[str, torch.Tensor]:
    """Next-token top-k and lexicon masses of one batch with a graft at ``layer`` (``mode=None``: clean).

    Returns ``top_ids`` / ``top_probs`` (B, k), ``neg_mass`` / ``pos_mass`` (B,) and, with
    ``keep_logits``, ``logits`` (B, V) float32, rows in the batch's prompt order.
    """
    n, vocab = _n_prompts(batch, last), model.vocab_size
    expect = {"top_ids": Expected((n, top_k), "index", vocab), "top_probs": Expected((n, top_k), "float"),
              "neg_mass": Expected((n,), "float"), "pos_mass": Expected((n,), "float")}
    if keep_logits:
        expect["logits"] = Expected((n, vocab), "float")
    return run(model, functools.partial(_grafted_next_token, model, batch, last=last, mode=mode, layer=layer,
                                        vecs=vecs, neg_ids=neg_ids, pos_ids=pos_ids, top_k=top_k,
                                        keep_logits=keep_logits), n_prompts=n, expect=expect)


def _grafted_next_token(
    model: Model,
    batch: dict[str, torch.Tensor],
    *,
    last: torch.Tensor | None,
    mode: str | None,
    layer: int,
    vecs: torch.Tensor,
    neg_ids: torch.Tensor,
    pos_ids: torch.Tensor,
    top_k: int,
    keep_logits: bool,
) -> dict[str, torch.Tensor]:
    import nnsight

    blocks = model.blocks()
    index = model.arch.output_index
    norm = model.envoy(model.arch.final_norm)
    unembed = model.envoy(model.arch.unembed)
    cap = model.softcap
    # The body reads the envoy, not `model`: an ihs_sight object would have to be unpickled
    # on the server, where ihs_sight is not installed.
    root = model.nn
    last_on = _last_on_devices(model, last)
    with model.nn.trace(batch, remote=model.remote, **forward_kwargs(model)):
        if mode == "seed":
            # The original code's graft: block `layer` runs (so a KV cache would come from the
            # un-grafted input) but its output is replaced by its input, last positions overwritten.
            block = blocks[layer - 1]
            seeded = block.input.clone()
            if last is None:
                seeded[:, -1] = vecs.to(seeded.device, seeded.dtype)
            else:
                seeded.view(-1, seeded.shape[-1])[last_on.get(seeded.device, last)] = vecs.to(
                    seeded.device, seeded.dtype)
            out = block.output
            hidden = out if index is None else out[index]
            hidden[:] = seeded
        elif mode is not None:
            if layer == 0:
                hidden = blocks[0].input
            else:
                out = blocks[layer - 1].output
                hidden = out if index is None else out[index]
            if last is None:
                if mode == "replace":
                    hidden[:, -1] = vecs.to(hidden.device, hidden.dtype)
                else:
                    hidden[:, -1] += vecs.to(hidden.device, hidden.dtype)
            else:
                flat = hidden.view(-1, hidden.shape[-1])  # a view: writes reach the residual stream
                at = last_on.get(hidden.device, last)
                if mode == "replace":
                    flat[at] = vecs.to(hidden.device, hidden.dtype)
                else:
                    flat[at] = flat[at] + vecs.to(hidden.device, hidden.dtype)
        if last is None:
            logits = root.output.logits[:, -1].float()
        else:
            # Packed rows: the model keeps only each row's last column, so the head runs here on
            # every prompt's own last position of the final norm's output (soft-capped where set).
            normed = norm.output
            logits = unembed(normed.flatten(0, 1)[last_on.get(normed.device, last)]).float()
            if cap is not None:
                logits = torch.tanh(logits / cap) * cap
        probs = logits.softmax(-1)
        top = probs.topk(top_k, dim=-1)
        top_ids = nnsight.save(top.indices.detach().cpu())
        top_probs = nnsight.save(top.values.detach().cpu())
        neg_mass = nnsight.save(probs[:, neg_ids.to(probs.device)].sum(-1).detach().cpu())
        pos_mass = nnsight.save(probs[:, pos_ids.to(probs.device)].sum(-1).detach().cpu())
        if keep_logits:
            full = nnsight.save(logits.detach().cpu().clone())  # a copy: the slice views [B, T, V]
    found = {"top_ids": top_ids, "top_probs": top_probs, "neg_mass": neg_mass, "pos_mass": pos_mass}
    if keep_logits:
        found["logits"] = full
    return found


def grafted_generation(
    model: Model,
    batch: dict[str, torch.Tensor],
    *,
    mode: str | None,
    layer: int,
    vecs: torch.Tensor,
    max_new_tokens: int,
    pad_id: int,
) -> dict[str, torch.Tensor]:
    """``generated`` (B, new) greedy token ids of one left-padded batch, grafted at the prefill only.

    The graft is the same as in :func:`grafted_next_token` (written out again: trace bodies call
    no helper). It is written without ``tracer.iter``, so it binds to the first forward -- the
    prefill that predicts the first new token; later steps see the grafted state only through
    the KV cache of the blocks after the graft, as a prompt-level jailbreak would act.
    """
    n, width = (int(x) for x in batch["input_ids"].shape)
    # generate() stops early once every row has ended: 1..max_new_tokens new tokens.
    new = range(width + min(1, max_new_tokens), width + max_new_tokens + 1)
    ids = run(model, functools.partial(_grafted_generation, model, batch, mode=mode, layer=layer, vecs=vecs,
                                       max_new_tokens=max_new_tokens, pad_id=pad_id), n_prompts=n,
              expect={"generated": Expected((n, new), "index", model.vocab_size)})["generated"]
    return {"generated": ids[:, width:]}


def _grafted_generation(
    model: Model,
    batch: dict[str, torch.Tensor],
    *,
    mode: str | None,
    layer: int,
    vecs: torch.Tensor,
    max_new_tokens: int,
    pad_id: int,
) -> dict[str, torch.Tensor]:
    import nnsight

    blocks = model.blocks()
    index = model.arch.output_index
    # generate derives position ids from the mask itself and extends them step by step.
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with model.nn.generate(
        inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id, remote=model.remote
    ) as tracer:
        if mode == "seed":
            block = blocks[layer - 1]
            seeded = block.input.clone()
            seeded[:, -1] = vecs.to(seeded.device, seeded.dtype)
            out = block.output
            hidden = out if index is None else out[index]
            hidden[:] = seeded
        elif mode is not None:
            if layer == 0:
                hidden = blocks[0].input
            else:
                out = blocks[layer - 1].output
                hidden = out if index is None else out[index]
            if mode == "replace":
                hidden[:, -1] = vecs.to(hidden.device, hidden.dtype)
            else:
                hidden[:, -1] += vecs.to(hidden.device, hidden.dtype)
        generated = nnsight.save(tracer.result.detach().cpu())
    return {"generated": generated}


# ---------------------------------------------------------------------------- directions and steering


def tail_states(model: Model, batch: dict[str, torch.Tensor], *, n_tail: int) -> dict[str, torch.Tensor]:
    """``states`` (B, n_tail, L+1, D) float32: every layer's states at the last ``n_tail`` positions.

    The batch must be left-padded (``last=None``), so the last ``n_tail`` columns of every row
    are its last ``n_tail`` tokens (a chat template's post-instruction tokens, for directions).
    """
    n = int(batch["input_ids"].shape[0])
    return run(model, functools.partial(_tail_states, model, batch, n_tail=n_tail), n_prompts=n,
               expect={"states": Expected((n, n_tail, model.n_layers + 1, model.d_model), "float")})


def _tail_states(model: Model, batch: dict[str, torch.Tensor], *, n_tail: int) -> dict[str, torch.Tensor]:
    import nnsight

    blocks = model.blocks()
    index = model.arch.output_index
    with model.nn.trace(batch, remote=model.remote, **forward_kwargs(model)) as tracer:
        saved = nnsight.save([])
        for layer in range(len(blocks) + 1):
            if layer == 0:
                full = blocks[0].input
            else:
                out = blocks[layer - 1].output
                full = out if index is None else out[index]
            saved.append(full[:, -n_tail:].detach().float().cpu().clone())
        tracer.stop()
    return {"states": torch.stack(list(saved), 2)}


def steered_next_token(
    model: Model,
    batch: dict[str, torch.Tensor],
    *,
    mode: str | None,
    unit: torch.Tensor,
    add: torch.Tensor,
    layers: Sequence[int],
    attn: str,
    neg_ids: torch.Tensor,
    pos_ids: torch.Tensor,
    top_k: int,
    keep_logits: bool,
) -> dict[str, torch.Tensor]:
    """Next-token top-k, lexicon masses (and logits) of one left-padded batch, steered.

    ``mode="ablate"`` projects ``unit`` (D,) out of every block's input, every attention
    sublayer's output and the last block's output, at every position; ``"add"`` adds ``add``
    (D,) to the states of ``layers`` at every position; ``None`` runs clean.

    Returns ``top_ids`` / ``top_probs`` (B, k), ``neg_mass`` / ``pos_mass`` (B,) and, with
    ``keep_logits``, ``logits`` (B, V) float32.
    """
    n, vocab = int(batch["input_ids"].shape[0]), model.vocab_size
    expect = {"top_ids": Expected((n, top_k), "index", vocab), "top_probs": Expected((n, top_k), "float"),
              "neg_mass": Expected((n,), "float"), "pos_mass": Expected((n,), "float")}
    if keep_logits:
        expect["logits"] = Expected((n, vocab), "float")
    return run(model, functools.partial(_steered_next_token, model, batch, mode=mode, unit=unit, add=add,
                                        layers=list(layers), attn=attn, neg_ids=neg_ids, pos_ids=pos_ids,
                                        top_k=top_k, keep_logits=keep_logits), n_prompts=n, expect=expect)


def _steered_next_token(
    model: Model,
    batch: dict[str, torch.Tensor],
    *,
    mode: str | None,
    unit: torch.Tensor,
    add: torch.Tensor,
    layers: list[int],
    attn: str,
    neg_ids: torch.Tensor,
    pos_ids: torch.Tensor,
    top_k: int,
    keep_logits: bool,
) -> dict[str, torch.Tensor]:
    import nnsight

    blocks = model.blocks()
    index = model.arch.output_index
    root = model.nn
    wanted = set(layers)
    kwargs = forward_kwargs(model)
    with model.nn.trace(batch, remote=model.remote, **kwargs):
        # The steering edit; written out again in _steered_generation (trace bodies call no helper).
        if mode == "ablate":
            for i, block in enumerate(blocks):
                h = block.input
                d = unit.to(h.device, h.dtype)
                block.input = h - (h @ d).unsqueeze(-1) * d
                a = getattr(block, attn).output
                a = a[0] if isinstance(a, tuple) else a  # attention: (hidden, weights); a sandwich norm: hidden
                a -= (a @ d).unsqueeze(-1) * d
                if i == len(blocks) - 1:
                    out = block.output
                    hidden = out if index is None else out[index]
                    hidden -= (hidden @ d).unsqueeze(-1) * d
        elif mode == "add":
            for layer in sorted(wanted):
                if layer == 0:
                    h = blocks[0].input
                    blocks[0].input = h + add.to(h.device, h.dtype)
                else:
                    out = blocks[layer - 1].output
                    hidden = out if index is None else out[index]
                    hidden += add.to(hidden.device, hidden.dtype)
        logits = root.output.logits[:, -1].float()
        probs = logits.softmax(-1)
        top = probs.topk(top_k, dim=-1)
        top_ids = nnsight.save(top.indices.detach().cpu())
        top_probs = nnsight.save(top.values.detach().cpu())
        neg_mass = nnsight.save(probs[:, neg_ids.to(probs.device)].sum(-1).detach().cpu())
        pos_mass = nnsight.save(probs[:, pos_ids.to(probs.device)].sum(-1).detach().cpu())
        if keep_logits:
            full = nnsight.save(logits.detach().cpu().clone())
    found = {"top_ids": top_ids, "top_probs": top_probs, "neg_mass": neg_mass, "pos_mass": pos_mass}
    if keep_logits:
        found["logits"] = full
    return found


def steered_generation(
    model: Model,
    batch: dict[str, torch.Tensor],
    *,
    mode: str | None,
    unit: torch.Tensor,
    add: torch.Tensor,
    layers: Sequence[int],
    attn: str,
    max_new_tokens: int,
    pad_id: int,
) -> dict[str, torch.Tensor]:
    """``generated`` (B, new) greedy ids of one left-padded batch, steered at **every** step.

    The edit of :func:`steered_next_token` runs inside ``tracer.iter``, so it binds to the
    prefill and to every decoding step (each new token is edited at its own step; earlier
    tokens reach later steps through the KV cache, edited). The result is read in a second,
    empty invoke: code after an ``iter`` loop never runs when every row stops early at EOS.
    """
    n, width = (int(x) for x in batch["input_ids"].shape)
    new = range(width + min(1, max_new_tokens), width + max_new_tokens + 1)
    with warnings.catch_warnings():
        # When every row has ended (EOS) before max_new_tokens, nnsight warns that the loop's
        # later steps were never reached: expected here, and the result is read in its own invoke.
        warnings.filterwarnings("ignore", message=".*was never reached.*")
        ids = run(model, functools.partial(_steered_generation, model, batch, mode=mode, unit=unit, add=add,
                                           layers=list(layers), attn=attn, max_new_tokens=max_new_tokens,
                                           pad_id=pad_id), n_prompts=n,
                  expect={"generated": Expected((n, new), "index", model.vocab_size)})["generated"]
    return {"generated": ids[:, width:]}


def _steered_generation(
    model: Model,
    batch: dict[str, torch.Tensor],
    *,
    mode: str | None,
    unit: torch.Tensor,
    add: torch.Tensor,
    layers: list[int],
    attn: str,
    max_new_tokens: int,
    pad_id: int,
) -> dict[str, torch.Tensor]:
    import nnsight

    blocks = model.blocks()
    index = model.arch.output_index
    wanted = set(layers)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with model.nn.generate(
        max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id, remote=model.remote
    ) as tracer:
        with tracer.invoke(inputs):
            if mode is not None:
                for _step in tracer.iter[:max_new_tokens]:
                    if mode == "ablate":
                        for i, block in enumerate(blocks):
                            h = block.input
                            d = unit.to(h.device, h.dtype)
                            block.input = h - (h @ d).unsqueeze(-1) * d
                            a = getattr(block, attn).output
                            a = a[0] if isinstance(a, tuple) else a
                            a -= (a @ d).unsqueeze(-1) * d
                            if i == len(blocks) - 1:
                                out = block.output
                                hidden = out if index is None else out[index]
                                hidden -= (hidden @ d).unsqueeze(-1) * d
                    else:
                        for layer in sorted(wanted):
                            if layer == 0:
                                h = blocks[0].input
                                blocks[0].input = h + add.to(h.device, h.dtype)
                            else:
                                out = blocks[layer - 1].output
                                hidden = out if index is None else out[index]
                                hidden += add.to(hidden.device, hidden.dtype)
        with tracer.invoke():
            generated = nnsight.save(tracer.result.detach().cpu())
    return {"generated": generated}
