"""Regional ``torch.compile`` of the blocks for one extraction, nnsight's block hooks kept.

A GPU forward of a mid-sized model spends a good part of its time in small elementwise
kernels (norms, rotary embeddings, activations) that compilation fuses. nnsight instruments
every module, and compiling through its hooks breaks the graph at each one; the traces here
read only each block's input and output, though. So while :func:`compiled_blocks` is open,
each block runs a compiled copy of its forward (nnsight's controller still hands the block's
input and output to the trace), and the modules inside the blocks run uninstrumented (nnsight's
controllers and transformers' output-recording hooks set aside).
Everything is restored on exit, so later traces can reach any module again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError

if TYPE_CHECKING:
    from ..models import Model

RECOMPILE_LIMIT = 64
"""Dynamo's per-function recompile limit is raised to at least this: batches of new shapes
recompile, and the default (8) would silently fall back to uncompiled code."""

_CAPTURE_HOOKS = "transformers.utils.output_capturing"
"""Module of transformers' forward hooks that record attentions on request. They read a context
variable, which torch.compile cannot trace (a graph break, and recompiles, in every block); the
traces here never request those outputs, so the hooks inside the blocks are set aside too."""

_COMPILED: dict[tuple[Callable[..., Any], bool | None], Callable[..., Any]] = {}
"""One compiled function per block class forward: every block (and every call) shares its graphs."""


def _compiled(body: Callable[..., Any], dynamic: bool | None) -> Callable[..., Any]:
    key = (body, dynamic)
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(body, dynamic=dynamic)
    return _COMPILED[key]


def check_compilable(model: Model) -> None:
    """Refuse a remote or simulated model: its traces run on the server, which compiles nothing.

    Raises:
        InputError: for a non-local backend.
    """
    if not model.runs_on.compiles:
        raise InputError(f"compile runs on local models only; this model runs on the {model.backend!r} backend.")


@contextmanager
def compiled_blocks(model: Model, *, dynamic: bool | None = None) -> Iterator[None]:
    """Run every block's forward compiled while the context is open.

    Args:
        model: a local model (a remote trace runs on the server, which compiles nothing).
        dynamic: passed to ``torch.compile`` (``None``: specialise on the first shapes, then
            mark what changes as dynamic).

    Raises:
        InputError: for a remote or simulated backend, blocks nnsight has not wrapped, or
            accelerate hooks inside the blocks.
    """
    check_compilable(model)
    blocks = model.block_modules()
    # nnsight's controller sits in each module's instance ``forward`` and runs ``state.body``,
    # the unbound class forward (nnsight 0.8).
    states: list[Any] = [getattr(block.__dict__.get("forward"), "state", None) for block in blocks]
    if any(state is None or not callable(getattr(state, "body", None)) or state.sourced for state in states):
        raise InputError("compile needs blocks wrapped by nnsight 0.8 and not instrumented with .source.")
    if any("_hf_hook" in m.__dict__ for block in blocks for child in block.children() for m in child.modules()):
        # accelerate moves tensors in hooks on those modules (offloading), which their own forward skips.
        raise InputError("compile does not support modules inside the blocks dispatched by accelerate (offloading); "
                         "extract without compile.")
    unwrapped: list[tuple[torch.nn.Module, Any]] = []
    unhooked: list[tuple[torch.nn.Module, int, Any]] = []
    swapped: list[tuple[Any, Callable[..., Any]]] = []
    config = torch._dynamo.config
    knob = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # torch < 2.6
    limit = getattr(config, knob)
    setattr(config, knob, max(limit, RECOMPILE_LIMIT))
    try:
        for block, state in zip(blocks, states):
            for child in block.children():
                for module in child.modules():
                    # Without nnsight's controller in the instance, the class's own forward runs.
                    hook = module.__dict__.pop("forward", None)
                    if hook is not None:
                        unwrapped.append((module, hook))
                    for key, fn in list(module._forward_hooks.items()):
                        if getattr(fn, "__module__", None) == _CAPTURE_HOOKS:
                            unhooked.append((module, key, module._forward_hooks.pop(key)))
            swapped.append((state, state.body))
            state.body = _compiled(state.body, dynamic)
        yield
    finally:
        for state, body in swapped:
            state.body = body
        for module, hook in unwrapped:
            module.__dict__["forward"] = hook
        for module, key, fn in unhooked:
            module._forward_hooks[key] = fn
        setattr(config, knob, limit)
