"""Append the cue-free prompts to the bundled sets, split them, and record every prompt's form.

The first 460 normal and 460 malicious prompts (ids ``n0000``-``n0459``, ``m0000``-``m0459``)
keep their text, fields, order and canonical split; this script only adds their ``form``,
read from the slot they were written against (``make_prompt_slots.draw()``, original seed),
after checking that each prompt starts with its slot's first word.

The added prompts are written in ``scripts/cue_free_prompts.jsonl``, one line per slot of the
second slot batch (``SEED_CUE_FREE``, slots 460 on): ``{"slot", "normal", "malicious"}``, both
written against that slot (same form, first word, sentence count, ending and word band, all
checked here). Normal prompts deliberately use the vocabulary that gave the malicious class
away, innocently (``lookalike: true``); malicious prompts state the harm without it. Domain and
harm category are round-robin by slot number, as for the first batch. The added prompts are
split **on their own** by the canonical rule of ``build_prompt_sets.py`` (seeded, 30 % test,
stratified by label and category). ``jailbreak.jsonl`` and ``wrapped_normal.jsonl`` are not
touched. Deterministic: rerunning rewrites the same files.

    python scripts/add_prompts.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from build_prompt_sets import SEED, TEST_SIZE
from make_prompt_slots import SEED as SEED_ORIGINAL
from make_prompt_slots import SEED_CUE_FREE, draw

from ihs_sight.prompts import Prompt, PromptSet

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "ihs_sight" / "data"
SOURCE = ROOT / "scripts" / "cue_free_prompts.jsonl"
N_ORIGINAL = 460
DOMAINS = ("cooking", "travel", "health_fitness", "personal_finance", "programming", "science", "history",
           "education", "home_garden", "arts_writing", "careers_business", "relationships_family", "technology_howto")
HARMS = ("weapons_explosives", "cybercrime", "fraud_scams", "illegal_drugs", "violence", "harassment_hate",
         "privacy_stalking", "theft_burglary", "disinformation", "extremism", "financial_crime")
FORMS = ("question", "imperative", "first_person", "context", "terse")


def number(p: Prompt) -> int:
    assert p.id is not None
    return int(p.id[1:])


def near_key(text: str) -> str:
    """Texts with the same first eight words (case-folded, punctuation dropped) count as near-duplicates."""
    return " ".join(re.findall(r"[a-z0-9']+", text.casefold())[:8])


def slot_problems(text: str, slot: dict[str, object]) -> list[str]:
    """How ``text`` departs from its slot (empty when it fits)."""
    words = text.split()
    end = text[-1] if text[-1] in ".?!" else ""
    sentences = max(1, len(re.findall(r"[.?!](\s|$)", text)))
    out = []
    if words[0] != slot["first_word"]:
        out.append(f"first word {words[0]!r} != {slot['first_word']!r}")
    if end != slot["ends_with"]:
        out.append(f"ends with {end!r} != {slot['ends_with']!r}")
    if sentences != slot["sentences"]:
        out.append(f"{sentences} sentences != {slot['sentences']}")
    if not slot["words_min"] <= len(words) <= slot["words_max"]:  # type: ignore[operator]
        out.append(f"{len(words)} words outside {slot['words_min']}-{slot['words_max']}")
    return out


def read(name: str) -> list[Prompt]:
    return [Prompt.model_validate_json(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line]


def write(name: str, items: list[Prompt]) -> None:
    (DATA / name).write_text("".join(p.model_dump_json(exclude_defaults=True) + "\n" for p in items), encoding="utf-8")


def backfill(items: list[Prompt]) -> tuple[list[Prompt], int]:
    """The first-batch prompts with ``form`` set from their slot; and how many matched their slot's first word."""
    slots = draw(SEED_ORIGINAL, N_ORIGINAL)
    matched = sum(p.text.split()[0] == slots[number(p)]["first_word"] for p in items)
    if matched != len(items):
        raise SystemExit(f"only {matched}/{len(items)} first-batch prompts start with their slot's first word")
    return [p.model_copy(update={"form": slots[number(p)]["form"]}) for p in items], matched


def added() -> list[Prompt]:
    """The cue-free prompts of ``SOURCE``, checked against their slots, without a split."""
    rows = [json.loads(line) for line in SOURCE.read_text(encoding="utf-8").splitlines() if line.strip()]
    slots = {s["slot"]: s for s in draw(SEED_CUE_FREE, len(rows), start=N_ORIGINAL)}
    problems, items = [], []
    for k, row in enumerate(rows):
        i = N_ORIGINAL + k
        if row["slot"] != i:
            raise SystemExit(f"{SOURCE.name} line {k + 1}: slot {row['slot']}, expected {i} (slots are consecutive)")
        for label, prefix, category in (("normal", "n", DOMAINS[i % 13]), ("malicious", "m", HARMS[i % 11])):
            text = row[label].strip()
            problems += [f"slot {i} {label}: {msg}" for msg in slot_problems(text, slots[i])]
            items.append(Prompt(text=text, label=label, category=category, source=f"bundled:{label}",
                                id=f"{prefix}{i:04d}", lookalike=label == "normal", form=str(slots[i]["form"])))
    if problems:
        raise SystemExit("prompts that do not fit their slot:\n" + "\n".join(problems))
    return items


def check_new(original: list[Prompt], new: list[Prompt]) -> None:
    """No added prompt repeats or nearly repeats (first eight words) a bundled or distillation prompt, or another."""
    seen: dict[str, str] = {}
    for p in original:
        seen[near_key(p.text)] = str(p.id)
    for name in ("extra_benign.jsonl", "distill_normal.jsonl"):
        for line in (DATA / name).read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                seen.setdefault(near_key(rec.get("text") or rec.get("prompt")), f"{name}:{rec.get('id', '?')}")
    clashes = []
    for p in new:
        key = near_key(p.text)
        if key in seen:
            clashes.append(f"{p.id} ~ {seen[key]}: {p.text}")
        seen[key] = str(p.id)
    if clashes:
        raise SystemExit("near-duplicate prompts:\n" + "\n".join(clashes))


def split_new(new: list[Prompt]) -> list[Prompt]:
    """The canonical split rule applied to the added prompts on their own."""
    if not new:
        return []
    _, test = PromptSet(items=new).split(TEST_SIZE, random_state=SEED, stratify=("label", "category"))
    test_ids = {p.id for p in test}
    return [p.model_copy(update={"split": "test" if p.id in test_ids else "train"}) for p in new]


def main() -> None:
    summary: dict[str, object] = {}
    new = split_new(added())
    check_new([p for name in ("normal.jsonl", "malicious.jsonl") for p in read(name) if number(p) < N_ORIGINAL], new)
    for name, label in (("normal.jsonl", "normal"), ("malicious.jsonl", "malicious")):
        items = read(name)
        original = [p for p in items if number(p) < N_ORIGINAL]
        if [number(p) for p in original] != list(range(N_ORIGINAL)):
            raise SystemExit(f"{name}: the first-batch prompts are not ids 0-{N_ORIGINAL - 1} in order")
        original, matched = backfill(original)
        mine = [p for p in new if p.label == label]
        write(name, original + mine)
        summary[label] = {"first_batch_forms_matched": matched, "added": len(mine),
                          "added_train": sum(p.split == "train" for p in mine),
                          "added_test": sum(p.split == "test" for p in mine)}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
