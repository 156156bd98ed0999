"""Check JSONL files of prompts against the canonical test split; exit 1 on any hit.

Anything that trains (probes, the guard, a refusal-tuned model) must not see a test prompt or
anything close to one. For every prompt of the given files (field ``text``, or ``prompt`` as in
``distill_normal.jsonl``) this compares it with every test-split prompt of
``ihs_sight.load_prompts().test``: the normal and malicious test prompts and the requests under
the jailbreak and wrapped-normal variants (each variant's id starts with the id of the test
prompt it wraps; a variant whose base prompt is not found is compared as a whole). A hit is

* a TF-IDF cosine above ``--threshold`` (0.5; word unigrams, lowercased, the IDF fit on every
  bundled prompt plus the checked ones), or
* a shared run of ``--ngram`` (6) words (lowercased, punctuation stripped), or
* the same text (case and spacing ignored).

It also flags exact duplicates: of any bundled prompt (train split included), of another
prompt in the checked files, and of the prompts in the ``--against`` files (for example
``extra_benign.jsonl``). Only ids and scores are printed for test prompts.

    python scripts/check_overlap.py ihs_sight/data/extra_benign_v2.jsonl
    python scripts/check_overlap.py ihs_sight/data/extra_benign_v2.jsonl --against ihs_sight/data/extra_benign.jsonl
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import NamedTuple

THRESHOLD = 0.5
NGRAM = 6
_WORD = re.compile(r"[a-z0-9]+")


class Item(NamedTuple):
    key: str  # "file:id" for checked prompts, the prompt id for bundled ones
    text: str


def words(text: str) -> list[str]:
    """Lowercased words, punctuation stripped (apostrophes dropped: "don't" -> "dont")."""
    return _WORD.findall(text.lower().replace("\u2019", "'").replace("'", ""))


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    w = words(text)
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def norm(text: str) -> str:
    return " ".join(text.casefold().split())


def read_jsonl(path: Path) -> list[Item]:
    items = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        rec = json.loads(line)
        text = rec.get("text", rec.get("prompt"))
        if not isinstance(text, str) or not text.strip():
            raise SystemExit(f"{path}:{i}: no 'text' or 'prompt' field")
        items.append(Item(f"{path.name}:{rec.get('id', i)}", text))
    return items


def test_prompts() -> tuple[list[Item], list[Item]]:
    """(test-split prompts to compare with, every bundled prompt with its own text)."""
    import ihs_sight as ihs

    data = ihs.load_prompts()
    base = {p.id: p.text for p in data.test if p.family is None and p.id}
    tests: dict[str, Item] = {pid: Item(pid, text) for pid, text in base.items()}
    for p in data.test:
        if p.family is None:
            continue
        pid = (p.id or "").split("-")[0]
        if pid not in base:  # no base prompt found: compare the variant as it is
            tests[p.id or p.text] = Item(p.id or "?", p.text)
    bundled = [Item(p.id or "?", p.text) for p in data]
    return list(tests.values()), bundled


def check(
    checked: list[Item], tests: list[Item], bundled: list[Item], against: list[Item],
    threshold: float = THRESHOLD, n: int = NGRAM,
) -> tuple[list[str], float]:
    """Hits as printable lines, and the highest cosine seen."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    hits: list[str] = []
    vec = TfidfVectorizer(lowercase=True).fit([x.text for x in bundled + checked])
    sims = (vec.transform([x.text for x in checked]) @ vec.transform([x.text for x in tests]).T).toarray()
    test_grams = [ngrams(t.text, n) for t in tests]
    test_norm = {norm(t.text): t.key for t in tests}
    for i, item in enumerate(checked):
        grams = ngrams(item.text, n)
        for j, t in enumerate(tests):
            shared = len(grams & test_grams[j])
            if sims[i, j] > threshold or shared:
                hits.append(f"NEAR TEST  {item.key}  ~ {t.key}  cosine={sims[i, j]:.2f}  shared {n}-grams={shared}")
        if norm(item.text) in test_norm:
            hits.append(f"TEST COPY  {item.key}  = {test_norm[norm(item.text)]}")
    seen: dict[str, str] = {}
    for x in bundled + against:
        seen.setdefault(norm(x.text), x.key)
    own: dict[str, str] = {}
    for item in checked:
        k = norm(item.text)
        if k in seen and seen[k] != item.key and k not in test_norm:
            hits.append(f"DUPLICATE  {item.key}  = {seen[k]}")
        if k in own:
            hits.append(f"DUPLICATE  {item.key}  = {own[k]}")
        own.setdefault(k, item.key)
    top = float(sims.max()) if sims.size else 0.0
    return hits, top


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", type=Path, help="JSONL files of prompts to check")
    ap.add_argument("--against", nargs="*", type=Path, default=[], help="JSONL files to check duplicates against")
    ap.add_argument("--threshold", type=float, default=THRESHOLD, help="TF-IDF cosine above which a pair is a hit")
    ap.add_argument("--ngram", type=int, default=NGRAM, help="length of a shared word sequence that is a hit")
    args = ap.parse_args(argv)
    checked = [x for f in args.files for x in read_jsonl(f)]
    against = [x for f in args.against for x in read_jsonl(f)]
    # the same file passed twice is no duplicate of itself
    against = [x for x in against if x.key not in {c.key for c in checked}]
    tests, bundled = test_prompts()
    hits, top = check(checked, tests, bundled, against, args.threshold, args.ngram)
    for h in hits:
        print(h)
    print(f"{len(checked)} prompts checked against {len(tests)} test prompts: {len(hits)} hit(s); "
          f"highest TF-IDF cosine {top:.2f} (threshold {args.threshold}), shared {args.ngram}-grams flagged")
    return 1 if hits else 0


if __name__ == "__main__":
    sys.exit(main())
