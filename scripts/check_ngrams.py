"""Check that no refusal template shares a word 5-gram with a gold reply; exit 1 if one does.

A refusal judge is scored on gold replies; a model trained on refusal templates that share
wording with those replies would be scored on what it was taught. This fills each template of
REFUSALS_JSON (``refusals.json``: ``templates``; ``refusals_v2.json``: ``styles``) with every
topic of its ``topics`` (templates without ``{topic}`` are used as they are), and compares
their word n-grams (``--n``, 5; lowercased, punctuation stripped, apostrophes dropped so
"can't" is "cant") with those of every reply (field ``reply``) in the GOLD_JSONL files.

Only template ids (``style[i]`` or ``templates[i]``), the topic keys whose fill overlaps, and
counts are printed, never gold text or the shared words, so it can run on a sealed gold set.

    python scripts/check_ngrams.py ihs_sight/data/refusals_v2.json ihs_sight/data/judge_gold_sealed.jsonl \\
        ihs_sight/data/judge_gold_design.jsonl
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

N = 5
_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("\u2019", "'").replace("'", ""))


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    w = words(text)
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def templates(spec: dict[str, object]) -> dict[str, str]:
    """Template id -> template, for a v1 (``templates``) or v2 (``styles``) refusal file."""
    styles, flat = spec.get("styles"), spec.get("templates")
    if isinstance(styles, dict):
        return {f"{style}[{i}]": str(t) for style, ts in styles.items() for i, t in enumerate(ts)}
    if isinstance(flat, list):
        return {f"templates[{i}]": str(t) for i, t in enumerate(flat)}
    raise SystemExit("no 'styles' or 'templates' in the refusal file")


def fills(template: str, topics: dict[str, str]) -> dict[str, str]:
    """Topic key -> filled template ("" for a template without the slot)."""
    if "{topic}" not in template:
        return {"": template}
    return {key: template.replace("{topic}", t) for key, t in topics.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("refusals", type=Path, help="refusals.json or refusals_v2.json")
    ap.add_argument("gold", nargs="+", type=Path, help="JSONL files with a 'reply' field")
    ap.add_argument("--n", type=int, default=N, help="n-gram length in words (default 5)")
    args = ap.parse_args(argv)

    spec = json.loads(args.refusals.read_text(encoding="utf-8"))
    topics: dict[str, str] = spec.get("topics", {})
    tmpl = templates(spec)

    # n-gram -> indices of the gold replies that contain it
    gold: dict[tuple[str, ...], set[int]] = {}
    n_replies = 0
    for path in args.gold:
        if not path.exists():
            print(f"{path}: not found", file=sys.stderr)
            return 2
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            reply = json.loads(line).get("reply")
            if not isinstance(reply, str):
                print(f"{path.name} line {i}: no 'reply' field", file=sys.stderr)
                return 2
            for g in ngrams(reply, args.n):
                gold.setdefault(g, set()).add(n_replies)
            n_replies += 1

    hit_templates = 0
    for tid, t in tmpl.items():
        filled = fills(t, topics)
        shared: set[tuple[str, ...]] = set()
        hit_topics = []
        for key, f in filled.items():
            common = ngrams(f, args.n) & gold.keys()
            if common:
                hit_topics.append(key)
            shared |= common
        if shared:
            hit_templates += 1
            replies = set().union(*(gold[g] for g in shared))
            where = f" (topics: {', '.join(hit_topics)})" if hit_topics != [""] else ""
            print(f"OVERLAP  {tid}: {len(shared)} shared {args.n}-gram(s), in {len(hit_topics)} of {len(filled)} "
                  f"fill(s){where}, {len(replies)} gold reply(ies)")
    print(f"{len(tmpl)} templates ({args.refusals.name}) against {n_replies} gold replies: "
          f"{hit_templates} template(s) share a word {args.n}-gram")
    return 1 if hit_templates else 0


if __name__ == "__main__":
    sys.exit(main())
