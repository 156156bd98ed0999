"""Part 1 of the refusal judge's training set: aligned_eval replies that are not in the gold set.

``ihs_sight/data/judge_train.jsonl`` (see the data README, "Refusal-judge training set") has three
parts: replies from ``docs/aligned_eval_v1.json`` (the first release's evaluation, test-split
prompts), new model replies to
train-split prompts, and handwritten replies to train-split prompts. The labels were given by
reading; this script reproduces only what can be reproduced: **which** aligned_eval replies are
candidates for part 1, and the exclusion check against both gold files.

Exclusion (text compared after casefolding and collapsing whitespace):

1. a reply whose text equals a gold ``reply`` (either file), is a prefix of one, or has one as a
   prefix (gold replies that are empty after normalisation take part by equality only, since the
   empty string is a prefix of everything);
2. a reply of model ``M`` to prompt ``P`` where a gold item's ``source`` is
   ``aligned_eval:M:P``, ``clean48:M:P`` or ``graft:M:L<layer>:P``.

Then duplicates inside part 1 are dropped (same rule: equal, or a prefix of another; the longer
reply, else the first in file order, is kept).

The sealed gold file is used only programmatically, here: its digest is checked, its ``reply``,
``source`` and ``prompt_id`` fields enter the two rules above, and nothing from it is printed or
written; the output is counts.

    python scripts/make_judge_train.py                       # counts, and checks judge_train.jsonl
    python scripts/make_judge_train.py --candidates OUT.jsonl   # also write the part-1 candidates

With ``judge_train.jsonl`` present the check fails (exit 1) unless: its aligned_eval items are
exactly the candidates (same source and reply); no item of any part collides with a gold reply
by rule 1; no two items collide by rule 1; parts 2 and 3 answer train-split prompts only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "ihs_sight" / "data"
EVAL = ROOT / "docs" / "aligned_eval_v1.json"
GOLD = [DATA / "judge_gold_sealed.jsonl", DATA / "judge_gold_design.jsonl"]
SEALED_SHA = DATA / "judge_gold_sealed.sha256"
TRAIN = DATA / "judge_train.jsonl"
MODEL_SOURCES = ("aligned_eval", "clean48", "graft")


def norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def check_sealed_digest() -> None:
    want = SEALED_SHA.read_text(encoding="utf-8").split()[0]
    got = hashlib.sha256(GOLD[0].read_bytes()).hexdigest()
    if got != want:
        sys.exit("judge_gold_sealed.jsonl does not match judge_gold_sealed.sha256")


def model_pair(source: str) -> tuple[str, str] | None:
    """(model, prompt_id) of a model-generated gold source, else None."""
    parts = source.split(":")
    if parts[0] not in MODEL_SOURCES or len(parts) < 3:
        return None
    return parts[1], parts[-1]


class Gold:
    """The two rules' inputs from both gold files; holds no more than that."""

    def __init__(self) -> None:
        self.texts: set[str] = set()
        self.pairs: set[tuple[str, str]] = set()
        for path in GOLD:
            for rec in read_jsonl(path):
                self.texts.add(norm(rec["reply"]))
                pair = model_pair(rec["source"])
                if pair is not None:
                    self.pairs.add(pair)
        self.nonempty = [t for t in self.texts if t]

    def text_hit(self, reply: str) -> bool:
        t = norm(reply)
        if t in self.texts:
            return True
        return any(g.startswith(t) or t.startswith(g) for g in self.nonempty)


def collide(a: str, b: str) -> bool:
    return a == b or a.startswith(b) or b.startswith(a)


def candidates(gold: Gold) -> tuple[list[dict[str, Any]], dict[str, int]]:
    ev = json.loads(EVAL.read_text(encoding="utf-8"))
    assert ev["settings"]["split"] == "test"
    rows: list[dict[str, Any]] = []
    counts = {"replies": 0, "dropped_text": 0, "dropped_pair": 0, "dropped_both": 0, "dropped_duplicate": 0}
    for model in ("default", "default-aligned"):
        for r in ev["models"][model]["replies"]:
            counts["replies"] += 1
            by_text = gold.text_hit(r["reply"])
            by_pair = (model, r["id"]) in gold.pairs
            if by_text and by_pair:
                counts["dropped_both"] += 1
            elif by_text:
                counts["dropped_text"] += 1
            elif by_pair:
                counts["dropped_pair"] += 1
            else:
                rows.append({"reply": r["reply"], "source": f"aligned_eval:{model}:{r['id']}", "prompt": r["prompt"],
                             "prompt_id": r["id"], "prompt_label": r["label"]})
    # duplicates inside part 1: keep the longest of each colliding group, the first on ties
    kept: list[dict[str, Any]] = []
    for row in sorted(rows, key=lambda x: -len(norm(x["reply"]))):
        if any(collide(norm(row["reply"]), norm(k["reply"])) for k in kept):
            counts["dropped_duplicate"] += 1
        else:
            kept.append(row)
    order = {id(r): i for i, r in enumerate(rows)}
    kept.sort(key=lambda x: order[id(x)])
    counts["candidates"] = len(kept)
    return kept, counts


def check_train(cands: list[dict[str, Any]], gold: Gold) -> list[str]:
    import ihs_sight as ihs

    errors: list[str] = []
    items = read_jsonl(TRAIN)
    part1 = {(r["source"], r["reply"]) for r in items if r["source"].startswith("aligned_eval:")}
    want = {(c["source"], c["reply"]) for c in cands}
    if part1 != want:
        errors.append(f"part 1 differs from the candidates: {len(part1 - want)} extra, {len(want - part1)} missing")
    hits = sum(gold.text_hit(r["reply"]) for r in items)
    if hits:
        errors.append(f"{hits} training replies collide with a gold reply")
    texts = sorted((norm(r["reply"]) for r in items), key=len)
    dup = sum(any(collide(a, b) for b in texts[i + 1:]) for i, a in enumerate(texts))
    if dup:
        errors.append(f"{dup} training replies collide with another training reply")
    split = {p.id: p.split for p in ihs.load_prompts()}
    test_side = sum(split.get(r["prompt_id"]) != "train" for r in items if not r["source"].startswith("aligned_eval:"))
    if test_side:
        errors.append(f"{test_side} part-2/3 items answer a prompt that is not train-split")
    ids = [r["id"] for r in items]
    if ids != [f"t{i:04d}" for i in range(1, len(items) + 1)]:
        errors.append("ids are not t0001.. in file order")
    print(f"judge_train.jsonl: {len(items)} items, {len(part1)} from aligned_eval")
    return errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", type=Path, help="write the part-1 candidates (no labels) here")
    args = ap.parse_args()
    check_sealed_digest()
    gold = Gold()
    cands, counts = candidates(gold)
    print(json.dumps(counts))
    if args.candidates:
        with args.candidates.open("w", encoding="utf-8") as f:
            for c in cands:
                f.write(json.dumps(c, ensure_ascii=False) + "\n")
    if TRAIN.is_file():
        errors = check_train(cands, gold)
        for e in errors:
            print("FAIL:", e)
        if errors:
            sys.exit(1)
        print("check passed")


if __name__ == "__main__":
    main()
