"""Build the two optional wrapped sets of the bundled data (issue: harm, not form). Deterministic.

- ``wrapped_train.jsonl``: train-split normal AND malicious prompts, each family of
  ``wrappers.json`` around ``--per-family`` of each (wrapped malicious labelled ``jailbreak``,
  wrapped normal ``normal`` with its family, as in the test files), so in training a wrapper
  carries no information about the label. Only train-split prompts are used.
- ``wrapped_heldout.jsonl``: test-split malicious and normal prompts in the test-only families of
  ``wrappers_heldout.json`` (split ``test``), for a final test only.

The test-split ``jailbreak.jsonl`` and ``wrapped_normal.jsonl`` are not touched.

    python scripts/build_wrapped_sets.py [--per-family 40] [--per-heldout-family 30]
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from pathlib import Path

from ihs_sight.prompts import Prompt, bundled_prompts
from ihs_sight.wrappers import wrap, wrappers

DATA = Path(__file__).resolve().parents[1] / "ihs_sight" / "data"
SEED = 19


def _wrapped(base: list[Prompt], families: dict[str, list[str]], n: int, split: str, kind: str,
             rng: random.Random) -> list[Prompt]:
    out = []
    for family, templates in families.items():
        for j, p in enumerate(rng.sample(base, n)):
            text = wrap(p.text, family, template=j % len(templates), encoding="base64" if j % 2 == 0 else "leetspeak")
            label = "jailbreak" if p.label == "malicious" else "normal"
            out.append(Prompt(text=text, label=label, category=p.category, family=family, source=f"bundled:{kind}",
                              split=split, id=f"{p.id}-{family}-{j % len(templates)}", lookalike=p.lookalike,
                              form=p.form))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-family", type=int, default=40, help="train prompts per label and family")
    ap.add_argument("--per-heldout-family", type=int, default=30, help="test prompts per label and held-out family")
    args = ap.parse_args()
    data = bundled_prompts()
    rng = random.Random(SEED)
    train: list[Prompt] = []
    heldout: list[Prompt] = []
    for label in ("malicious", "normal"):
        source = {split: (part.normal if label == "normal" else part.malicious).items
                  for split, part in (("train", data.train), ("test", data.test))}
        train += _wrapped(source["train"], wrappers(), args.per_family, "train", "wrapped_train", rng)
        heldout += _wrapped(source["test"], wrappers(heldout=True), args.per_heldout_family, "test",
                            "wrapped_heldout", rng)
    for name, items in (("wrapped_train.jsonl", train), ("wrapped_heldout.jsonl", heldout)):
        (DATA / name).write_text("".join(p.model_dump_json(exclude_defaults=True) + "\n" for p in items),
                                 encoding="utf-8")
        print(name, json.dumps(Counter(f"{p.label}/{p.family}" for p in items)))


if __name__ == "__main__":
    main()
