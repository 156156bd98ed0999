"""On-disk cache of per-prompt tensors, stored one entry per batch of prompts.

An entry is a safetensors file of row-aligned tensors plus a JSON sidecar naming the prompt
hash of every row and the sha256 of the safetensors bytes. Entries live in a directory per
*context* (weights hash, template, system prompt, chat flag, dtype, what was computed), so a
lookup only needs prompt hashes. Writes are atomic (temp file, then rename; the JSON is
written last and is the commit marker), so an interrupted run leaves whole entries only and
resumes without redoing them. A corrupted or truncated entry is detected by its checksum,
logged as a warning, deleted and recomputed — never used.

A cache that cannot be used (a full disk, a read-only or vanished directory) is not the user's
input error: it gives one :class:`~ihs_sight.errors.CacheWarning` per cache, stops writing, and
the computation goes on and returns its results. Temporary files of writers that are gone (their
process has ended, or older than :data:`STALE_S`) and data files whose JSON commit marker never
came are swept when a cache directory is opened; a live writer's files are never touched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .. import io
from ..errors import CacheWarning

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def context_key(parts: dict[str, Any]) -> str:
    """A directory name for everything that changes the cached values."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:32]


class TensorCache:
    """Row-keyed tensors under ``root/<context>/``; one ``.safetensors`` + ``.json`` per batch."""

    def __init__(self, root: Path, context: dict[str, Any]) -> None:
        self.dir = root / context_key(context)
        self.context = context
        self.usable = True
        """False once a write failed: later rows are computed but no longer stored."""
        io.sweep(self.dir)

    def _unusable(self, error: OSError) -> None:
        if self.usable:
            warnings.warn(CacheWarning(f"The states cache at {self.dir} cannot be written ({error}); the results "
                                       "are returned but not stored. Free space or pass cache= another directory."),
                          stacklevel=4)
        self.usable = False
    def _index(self) -> dict[str, tuple[Path, int]]:
        index: dict[str, tuple[Path, int]] = {}
        try:
            metas = sorted(self.dir.glob("*.json")) if self.dir.is_dir() else []
        except OSError as e:
            self._unusable(e)
            return index
        for meta_path in metas:
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                hashes = meta["rows"]
                if meta.get("version") != FORMAT_VERSION:
                    continue
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("ignoring unreadable cache index %s; its rows will be recomputed", meta_path)
                self._drop(meta_path.with_suffix(""))
                continue
            for row, h in enumerate(hashes):
                index.setdefault(h, (meta_path.with_suffix(""), row))
        return index

    def _drop(self, stem: Path) -> None:
        for suffix in (".safetensors", ".json"):
            try:
                stem.with_suffix(suffix).unlink()
            except OSError:  # already gone, or a read-only directory: nothing more to do
                pass

    def _read_entry(self, stem: Path) -> dict[str, torch.Tensor] | None:
        try:
            meta = json.loads(stem.with_suffix(".json").read_text(encoding="utf-8"))
            data = stem.with_suffix(".safetensors").read_bytes()
            if hashlib.sha256(data).hexdigest() != meta["sha256"]:
                raise ValueError("checksum mismatch")
            tensors = st_load(data)
            if any(t.shape[0] != len(meta["rows"]) for t in tensors.values()):
                raise ValueError("row count mismatch")
            return tensors
        except Exception as e:  # any damage means: do not use, recompute
            log.warning("cache entry %s is corrupted (%s); recomputing it", stem.name, e)
            self._drop(stem)
            return None

    def get(self, hashes: list[str]) -> dict[str, dict[str, torch.Tensor]]:
        """Per-row tensors for every hash found intact: ``{hash: {name: tensor}}``."""
        index = self._index()
        wanted: dict[Path, list[tuple[str, int]]] = {}
        for h in set(hashes):
            if h in index:
                stem, row = index[h]
                wanted.setdefault(stem, []).append((h, row))
        found: dict[str, dict[str, torch.Tensor]] = {}
        for stem, rows in wanted.items():
            tensors = self._read_entry(stem)
            if tensors is None:
                continue
            for h, row in rows:
                found[h] = {name: t[row] for name, t in tensors.items()}
        return found

    def put(self, hashes: list[str], tensors: dict[str, torch.Tensor]) -> None:
        """Store one batch: ``tensors[name]`` has one row per hash (a :class:`CacheWarning`, once, if it cannot)."""
        if not self.usable:
            return
        stem = self.dir / hashlib.sha256("|".join(hashes).encode()).hexdigest()[:32]
        data = st_save({k: v.contiguous() for k, v in tensors.items()})
        meta = {"version": FORMAT_VERSION, "rows": hashes, "sha256": hashlib.sha256(data).hexdigest(),
                "context": self.context}
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            io.write_bytes(stem.with_suffix(".safetensors"), data)
            io.write_json(stem.with_suffix(".json"), meta, indent=None)
        except OSError as e:
            self._drop(stem)  # no data file without its commit marker
            self._unusable(e)

    def entries(self) -> list[Path]:
        """The safetensors files of this context (for inspection and tests)."""
        return sorted(self.dir.glob("*.safetensors")) if self.dir.is_dir() else []
