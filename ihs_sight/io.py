"""One on-disk format, written atomically: tensors as safetensors beside a JSON sidecar.

Every result that holds tensors (:class:`~ihs_sight.HiddenStates`, :class:`~ihs_sight.LensResult`,
:class:`~ihs_sight.LayerProbe`, a :class:`~ihs_sight.Guard` bundle, the states cache) is saved as
``stem.safetensors`` (the tensors) and ``stem.json`` (everything else), never pickled. Every
file is written under a temporary name in its own directory and renamed into place, so a reader
sees the old file or the new one, never half of one; the JSON is written last and is the commit
marker of the pair. Directories (a guard bundle) are built under a temporary name and renamed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from .errors import InputError

log = logging.getLogger(__name__)


def _temp_name(path: Path) -> Path:
    # pid and a random part: two writers (threads or processes) never share a temporary file.
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


STALE_S = 3600.0
"""A temporary file, or a data file without its JSON, older than this is a dead writer's leftover."""
_TEMP = re.compile(r"^\..+\.(?:tmp|old)-(\d+)-[0-9a-f]+$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def sweep(directory: Path, *, now: float | None = None) -> int:
    """Delete dead writers' leftovers in ``directory``; returns how many.

    A temporary file or directory of this module (``.name.tmp-<pid>-<id>``, and the
    ``.name.old-<pid>-<id>`` a directory replacement moves aside) is a dead writer's when its
    process is gone or it is older than :data:`STALE_S`; a ``.safetensors`` without its ``.json``
    counts only when older than :data:`STALE_S` (a live writer writes the JSON right after it).
    A live writer's files are never touched.
    """
    now = time.time() if now is None else now
    removed = 0
    try:
        entries = list(directory.iterdir())
    except OSError:
        return 0
    for path in entries:
        try:
            age = now - path.stat().st_mtime
            match = _TEMP.match(path.name)
            if match:
                stale = not _alive(int(match.group(1))) or age > STALE_S
            else:
                stale = path.suffix == ".safetensors" and not path.with_suffix(".json").exists() and age > STALE_S
            if stale:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                removed += 1
        except OSError:  # vanished meanwhile, or not ours to delete
            continue
    if removed:
        log.info("swept %d leftover file(s) of interrupted writers from %s", removed, directory)
    return removed


def write_bytes(path: str | Path, data: bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same directory, then rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(target)
    try:
        with tmp.open("wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 text atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, payload: Any, *, indent: int | None = 1) -> Path:
    """Write a JSON document atomically (``default=str`` for paths and the like)."""
    return write_text(path, json.dumps(payload, indent=indent, default=str))


def read_json(path: str | Path, *, what: str | None = None) -> Any:
    """A JSON document, or :class:`InputError` naming the file when it cannot be read or parsed."""
    target = Path(path)
    try:
        return json.loads(target.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"Cannot read {what or target}: {e}") from e


PAIR_SUFFIXES = (".json", ".safetensors")


def pair_stem(path: str | Path) -> Path:
    """The stem of a JSON + safetensors pair: ``path`` without a ``.json`` / ``.safetensors`` suffix.

    Any other suffix is part of the name, so ``dirs/model.refusal`` and ``dirs/model.harmfulness``
    stay two pairs (``Path.with_suffix`` would map both to ``dirs/model``, one overwriting the other).
    """
    p = Path(path)
    return p.with_suffix("") if p.suffix in PAIR_SUFFIXES else p


def _sibling(base: Path, suffix: str) -> Path:
    return base.with_name(base.name + suffix)


def save_pair(stem: str | Path, payload: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], *,
              metadata: dict[str, str] | None = None) -> Path:
    """Write ``stem.safetensors`` (``tensors``, with optional string ``metadata``) then ``stem.json``.

    Returns:
        The stem, without suffix.
    """
    base = pair_stem(stem)
    data = st_save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    write_bytes(_sibling(base, ".safetensors"), data)
    write_json(_sibling(base, ".json"), dict(payload))
    return base


def load_pair(stem: str | Path, *, writer: str = "save()", what: str = "results") -> tuple[
        dict[str, Any], dict[str, torch.Tensor], dict[str, str]]:
    """Read what :func:`save_pair` wrote: (JSON payload, tensors, safetensors metadata).

    Args:
        stem: the path, with or without suffix.
        writer: who writes such files, for the message about a missing one.
        what: what the files hold, for the message about an unreadable one.

    Raises:
        InputError: a file is missing or cannot be read; the message names it.
    """
    base = pair_stem(stem)
    for suffix in PAIR_SUFFIXES:
        if not _sibling(base, suffix).is_file():
            raise InputError(f"Missing {_sibling(base, suffix)}; {writer} writes a .json and a .safetensors file.")
    payload = read_json(_sibling(base, ".json"), what=f"{what} at {_sibling(base, '.json')}")
    if not isinstance(payload, dict):
        raise InputError(f"Cannot read {what} at {_sibling(base, '.json')}: not a JSON object.")
    path = str(_sibling(base, ".safetensors"))
    try:
        with safe_open(path, framework="pt") as f:
            metadata = dict(f.metadata() or {})
        tensors = load_file(path)
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise InputError(f"Cannot read {what} at {path}: {e}") from e
    return payload, tensors, metadata


def replace_dir(target: str | Path, build: Callable[[Path], Any]) -> Path:
    """Build a directory with ``build(tmp)`` under a temporary name, then put it at ``target``.

    An existing ``target`` is replaced only once the new one is complete; a failed build
    leaves ``target`` as it was and removes the temporary directory.
    """
    final = Path(target)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(final)
    old = final.with_name(f".{final.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir()
        build(tmp)
        if final.exists():
            os.replace(final, old)  # a directory cannot be renamed over a non-empty one
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not final.exists():
            os.replace(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return final
