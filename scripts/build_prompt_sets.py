"""Rebuild the canonical split and the jailbreak / wrapped-normal sets of the bundled data.

Reads ``ihs_sight/data/normal.jsonl`` and ``malicious.jsonl`` (written by hand for this
project), assigns the canonical train/test split (stratified by label and category, seeded),
and writes ``jailbreak.jsonl`` and ``wrapped_normal.jsonl`` from **test-split** prompts only,
so nothing that trains ever sees a prompt a jailbreak was built from. Deterministic.

    python scripts/build_prompt_sets.py

Only the first 460 prompts of each set are split here and wrapped; prompts added later
(``scripts/add_prompts.py``) keep their own split and are never wrapped.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from ihs_sight.prompts import Prompt, PromptSet
from ihs_sight.wrappers import wrap, wrappers

DATA = Path(__file__).resolve().parents[1] / "ihs_sight" / "data"
SEED = 0
TEST_SIZE = 0.3
PER_FAMILY = 50


def read(name: str) -> list[Prompt]:
    return [Prompt.model_validate_json(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line]


def write(name: str, items: list[Prompt]) -> None:
    (DATA / name).write_text("".join(p.model_dump_json(exclude_defaults=True) + "\n" for p in items), encoding="utf-8")


def wrapped(base: list[Prompt], label: str, kind: str, rng: random.Random) -> list[Prompt]:
    out = []
    for family, templates in wrappers().items():
        chosen = rng.sample(base, PER_FAMILY)
        for j, p in enumerate(chosen):
            encoding = "base64" if j % 2 == 0 else "leetspeak"
            text = wrap(p.text, family, template=j % len(templates), encoding=encoding)
            out.append(Prompt(text=text, label=label, category=p.category, family=family, source=f"bundled:{kind}",
                              split="test", id=f"{p.id}-{family}-{j % len(templates)}"))
    return out


FIRST_SET = 460
"""Prompts of the first writing (ids below this); later additions (``scripts/add_prompts.py``) keep
the split that script gave them, and no wrapped prompt is built from them."""


def _first_set(p: Prompt) -> bool:
    return p.id is not None and int(p.id[1:]) < FIRST_SET


def main() -> None:
    base = PromptSet(items=[p.model_copy(update={"split": None}) for p in read("normal.jsonl") + read("malicious.jsonl")
                            if _first_set(p)])
    train, test = base.split(TEST_SIZE, random_state=SEED, stratify=("label", "category"))
    test_ids = {p.id for p in test}
    for name in ("normal.jsonl", "malicious.jsonl"):
        items = [p.model_copy(update={"split": "test" if p.id in test_ids else "train"}) if _first_set(p) else p
                 for p in read(name)]
        write(name, items)
    rng = random.Random(SEED)
    test_mal = [p for p in test if p.label == "malicious"]
    test_norm = [p for p in test if p.label == "normal"]
    write("jailbreak.jsonl", wrapped(test_mal, "jailbreak", "jailbreak", rng))
    write("wrapped_normal.jsonl", wrapped(test_norm, "normal", "wrapped_normal", rng))
    counts = {"train": train.counts(), "test": test.counts()}
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
