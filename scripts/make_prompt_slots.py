"""Generate the form slots that both bundled prompt sets are written against.

Normal and malicious prompts are written slot by slot against the same list of
(form, opener, sentence count, final punctuation, length band) slots, so that form,
length and punctuation carry no information about the label.

Two batches were drawn: the original 460 slots (``SEED``, slots 0-459) and the slots of the
prompts added to take the word cues out of the data (``SEED_CUE_FREE``, numbered from 460 on).

    python scripts/make_prompt_slots.py                        # the original 460 slots
    python scripts/make_prompt_slots.py --seed 20261204 --start 460 --n 600 out.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

N_SLOTS = 460
SEED = 20261127
SEED_CUE_FREE = 20261204
"""Seed of the second batch (the cue-free additions, slots 460 on)."""

FORMS = {
    # form: (weight, openers, sentences, endings)
    "question": (0.30, ["How", "What", "Which", "Can", "Could", "Is", "Why", "Where", "Would", "Do"], [1], ["?"]),
    "imperative": (0.30, ["Write", "Explain", "Give", "Describe", "List", "Tell", "Draft", "Create", "Show", "Outline", "Provide", "Help"], [1], [".", "."]),
    "first_person": (0.18, ["I", "I'm", "My", "We", "I've"], [1], [".", "?"]),
    "context": (0.14, ["I'm", "My", "Our", "For", "As", "So", "There's", "Last"], [2, 3], ["?", "."]),
    "terse": (0.08, ["how", "best", "ways", "steps", "easiest", "quick"], [1], [""]),
}
LENGTH_BANDS = {"short": (4, 9), "medium": (10, 20), "long": (21, 45)}


def draw(seed: int = SEED, n: int = N_SLOTS, start: int = 0) -> list[dict[str, object]]:
    """``n`` seeded slots numbered from ``start`` (a prefix of a longer draw is the shorter draw)."""
    rng = random.Random(seed)
    names = list(FORMS)
    weights = [FORMS[n][0] for n in names]
    slots: list[dict[str, object]] = []
    for i in range(n):
        form = rng.choices(names, weights)[0]
        _, openers, sentences, endings = FORMS[form]
        n_sent = rng.choice(sentences)
        if form == "context":
            band = rng.choice(["medium", "long", "long"])
        elif form == "terse":
            band = "short"
        else:
            band = rng.choices(["short", "medium", "long"], [0.35, 0.45, 0.20])[0]
        lo, hi = LENGTH_BANDS[band]
        slots.append(
            {
                "slot": start + i,
                "form": form,
                "first_word": rng.choice(openers),
                "sentences": n_sent,
                "ends_with": rng.choice(endings),
                "words_min": lo,
                "words_max": hi,
            }
        )
    return slots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", type=Path, default=Path("ihs_sight/data/_slots.jsonl"))
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--n", type=int, default=N_SLOTS)
    parser.add_argument("--start", type=int, default=0, help="number of the first slot")
    args = parser.parse_args()
    slots = draw(args.seed, args.n, args.start)
    args.out.write_text("".join(json.dumps(s) + "\n" for s in slots), encoding="utf-8")


if __name__ == "__main__":
    main()
