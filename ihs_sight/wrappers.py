"""Jailbreak wrapper families: the templates that put a request inside a jailbreak, and :func:`wrap`.

Two sets of families ship with the package:

- ``wrappers.json``: the 7 families of the bundled test jailbreaks and of the optional wrapped
  *train* prompts (normal and malicious alike, so a wrapper says nothing about the label);
- ``wrappers_heldout.json``: families of other kinds (long personas, transcripts to continue,
  document tasks, a request buried in a task list, character-level obfuscation), written for a
  final test only and never used to fit or choose anything.
"""

from __future__ import annotations

import base64
import functools
import json
from pathlib import Path

from . import checks
from .errors import InputError

DATA = Path(__file__).resolve().parent / "data"
FILES = {False: "wrappers.json", True: "wrappers_heldout.json"}
ENCODINGS = ("base64", "leetspeak")

_LEET = str.maketrans({"a": "4", "e": "3", "i": "1", "o": "0", "s": "5", "t": "7", "A": "4", "E": "3", "I": "1",
                       "O": "0", "S": "5", "T": "7"})


@functools.cache
def _families(heldout: bool) -> dict[str, list[str]]:
    data = json.loads((DATA / FILES[heldout]).read_text(encoding="utf-8"))
    return {name: list(f["templates"]) for name, f in data["families"].items()}


def wrappers(*, heldout: bool = False) -> dict[str, list[str]]:
    """The bundled jailbreak templates by family; ``heldout=True``: the test-only families."""
    heldout = checks.flag("heldout", heldout)
    return {name: list(templates) for name, templates in _families(heldout).items()}


def family_names() -> dict[str, bool]:
    """Every wrapper family and whether it is a held-out (test-only) one."""
    return {**{n: False for n in _families(False)}, **{n: True for n in _families(True)}}


def wrap(text: str, family: str, *, template: int = 0, encoding: str = "base64") -> str:
    """Wrap a request in a jailbreak template of ``family`` (template index modulo the family size).

    ``payload_splitting`` splits the request's words into two halves; ``obfuscation`` encodes
    it with ``encoding`` (``base64`` or ``leetspeak``); the held-out ``char_obfuscation`` spaces
    its letters out or reverses it, as its template says.
    """
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"text must be a non-empty string, got {text!r}.")
    if isinstance(template, bool) or not isinstance(template, int):
        raise InputError(f"template must be an int (an index, taken modulo the family size), got {template!r}.")
    names = family_names()
    if not isinstance(family, str) or family not in names:
        raise InputError(f"Unknown jailbreak family {family!r}; choose from {sorted(names)}.")
    templates = _families(names[family])[family]
    tpl = templates[template % len(templates)]
    if family == "payload_splitting":
        words = text.split()
        half = max(1, len(words) // 2)
        return tpl.format(part_a=" ".join(words[:half]) + " ", part_b=" ".join(words[half:]))
    if family == "obfuscation":
        if encoding == "base64":
            encoded = base64.b64encode(text.encode("utf-8")).decode("ascii")
        elif encoding == "leetspeak":
            encoded = text.translate(_LEET)
        else:
            raise InputError(f"Unknown encoding {encoding!r}; use 'base64' or 'leetspeak'.")
        return tpl.format(encoded=encoded, encoding=encoding)
    if family == "char_obfuscation":
        return tpl.format(spaced=" ".join(text.replace(" ", "/")), reversed=text[::-1],
                          words_reversed=" ".join(w[::-1] for w in text.split()))
    return tpl.format(request=text)
