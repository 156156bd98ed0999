"""Generate the form slots that both bundled prompt sets are written against.

Normal and malicious prompts are written slot by slot against the same list of
(form, opener, sentence count, final punctuation, length band) slots, so that form,
length and punctuation carry no information about the label.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

N_SLOTS = 460
SEED = 20261127

FORMS = {
    # form: (weight, openers, sentences, endings)
    "question": (0.30, ["How", "What", "Which", "Can", "Could", "Is", "Why", "Where", "Would", "Do"], [1], ["?"]),
    "imperative": (0.30, ["Write", "Explain", "Give", "Describe", "List", "Tell", "Draft", "Create", "Show", "Outline", "Provide", "Help"], [1], [".", "."]),
    "first_person": (0.18, ["I", "I'm", "My", "We", "I've"], [1], [".", "?"]),
    "context": (0.14, ["I'm", "My", "Our", "For", "As", "So", "There's", "Last"], [2, 3], ["?", "."]),
    "terse": (0.08, ["how", "best", "ways", "steps", "easiest", "quick"], [1], [""]),
}
LENGTH_BANDS = {"short": (4, 9), "medium": (10, 20), "long": (21, 45)}


def main(out: Path) -> None:
    rng = random.Random(SEED)
    names = list(FORMS)
    weights = [FORMS[n][0] for n in names]
    slots = []
    for i in range(N_SLOTS):
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
                "slot": i,
                "form": form,
                "first_word": rng.choice(openers),
                "sentences": n_sent,
                "ends_with": rng.choice(endings),
                "words_min": lo,
                "words_max": hi,
            }
        )
    out.write_text("".join(json.dumps(s) + "\n" for s in slots), encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("ihs_sight/data/_slots.jsonl"))
