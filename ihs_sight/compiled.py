"""Regional ``torch.compile`` of the blocks' insides for one extraction, nnsight's block hooks kept.

A GPU forward of a mid-sized model spends a tenth of its time in small elementwise kernels
(norms, rotary embeddings, activations) that compilation fuses. nnsight instruments every
module, and compiling through its hooks breaks the graph at each one; the traces here read
only each block's input and output, though. So for the duration of :func:`compiled_blocks`
each block's child modules run their own, uninstrumented forward, compiled; the blocks keep
nnsight's hooks. Everything is restored on exit, so later traces can reach any module again.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

from .errors import InputError

if TYPE_CHECKING:
    from .models import Model

RECOMPILE_LIMIT = 64
"""Dynamo's per-function recompile limit is raised to at least this: batches of new shapes
recompile, and the default (8) would silently fall back to uncompiled code."""


@contextmanager
def compiled_blocks(model: Model, *, dynamic: bool | None = None) -> Iterator[None]:
    """Run the blocks' child modules compiled while the context is open.

    Args:
        model: a local model (a remote trace runs on the server, which compiles nothing).
        dynamic: passed to ``torch.compile`` (``None``: specialise on the first shapes, then
            mark what changes as dynamic).

    Raises:
        InputError: for a remote or simulated backend.
    """
    if model.backend != "local":
        raise InputError(f"compile runs on local models only; this model runs on the {model.backend!r} backend.")
    from .models import _resolve_attr

    unwrapped: list[tuple[torch.nn.Module, Any]] = []
    compiled: list[torch.nn.Module] = []
    limit = torch._dynamo.config.recompile_limit
    torch._dynamo.config.recompile_limit = max(limit, RECOMPILE_LIMIT)
    try:
        for block in _resolve_attr(model.hf, model.arch.blocks):
            for child in block.children():
                for module in child.modules():
                    # nnsight installs its hook as the instance's ``forward``; without it the class's runs.
                    hook = module.__dict__.pop("forward", None)
                    if hook is not None:
                        unwrapped.append((module, hook))
                child.compile(dynamic=dynamic)
                compiled.append(child)
        yield
    finally:
        for child in compiled:
            child._compiled_call_impl = None
        for module, hook in unwrapped:
            module.__dict__["forward"] = hook
        torch._dynamo.config.recompile_limit = limit
