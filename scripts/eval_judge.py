"""Score the shipped refusal judges on the sealed gold parts, once per judge version and part, and record it.

Three sealed parts: ``judge_gold_sealed.jsonl`` (``sealed``, written before judge v1),
``judge_gold_sealed_v2.jsonl`` (``sealed_v2``, written before judge v2, after v1's per-style
results on the first part had been read, so only the second part is blind for v2) and
``judge_gold_sealed_v3.jsonl`` (``sealed_v3``, written before judge v3, after v2's results on
part 2 had been read; blind for every version). Each is checked against its committed sha256
first. Accuracy counts the refusal and compliance items (a reply is called a refusal or not);
``unclear`` items are reported separately (how many the judge calls refusals). Per style:
precision and recall of "refusal". The phrase judge of v1 is scored beside it for comparison.

A judge version is scored once per part: the result goes into ``docs/judge_eval.json`` under the
judge's name and the part (runs made after v3's also record the sha256 of the judge's files), and a
second run for the same pair refuses to overwrite it (``--again`` only to reproduce the same number,
e.g. after a library change that must not move it; the file keeps every run).

    python scripts/eval_judge.py
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ihs_sight.judge import PhraseJudge, RefusalJudge, ReplyJudge, judge_many, judge_name, shipped_judge  # noqa: E402
from ihs_sight.judge.learned import SEEN_PARTS, VERSIONS, asset  # noqa: E402

DATA = ROOT / "ihs_sight" / "data"
OUT = ROOT / "docs" / "judge_eval.json"
PARTS = {"sealed": "judge_gold_sealed", "sealed_v2": "judge_gold_sealed_v2", "sealed_v3": "judge_gold_sealed_v3"}
"""Each sealed part's file stem under ``ihs_sight/data`` (``.jsonl`` and ``.sha256``)."""


def sealed_items(part: str = "sealed") -> list[dict[str, Any]]:
    """A sealed part, after checking its bytes against the committed digest."""
    stem = PARTS[part]
    raw = (DATA / f"{stem}.jsonl").read_bytes()
    expected = (DATA / f"{stem}.sha256").read_text(encoding="utf-8").split()[0]
    if hashlib.sha256(raw).hexdigest() != expected:
        raise SystemExit(f"{stem}.jsonl does not match {stem}.sha256: the sealed part changed.")
    return [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]


def blind(judge: RefusalJudge, part: str) -> bool:
    """Whether the judge was built without reading any result on the part (``learned.SEEN_PARTS``)."""
    if not isinstance(judge, ReplyJudge):
        return True  # the phrase judge predates every sealed part
    if judge.version not in SEEN_PARTS:
        raise SystemExit(f"Record in ihs_sight/judge/learned.py SEEN_PARTS which sealed parts' results were read "
                         f"before judge {judge.version} was built.")
    return part not in SEEN_PARTS[judge.version]


def weights_sha256(judge: RefusalJudge) -> str | None:
    """sha256 of a shipped reply judge's files (``.json`` then ``.safetensors``): which weights were scored."""
    if not isinstance(judge, ReplyJudge):
        return None
    stem = asset(judge.version)
    return hashlib.sha256(stem.with_suffix(".json").read_bytes() + stem.with_suffix(".safetensors").read_bytes()).hexdigest()


def score(called: list[bool], items: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy on decided items, false refusals, recall, and per-style precision/recall of 'refusal'."""
    decided = [(c, i) for c, i in zip(called, items) if i["label"] != "unclear"]
    correct = sum(c == (i["label"] == "refusal") for c, i in decided)
    compliant = [c for c, i in decided if i["label"] == "compliance"]
    refusals = [c for c, i in decided if i["label"] == "refusal"]
    unclear = [c for c, i in zip(called, items) if i["label"] == "unclear"]
    by_style: dict[str, dict[str, int]] = defaultdict(lambda: {"n": 0, "called_refusal": 0})
    for c, i in zip(called, items):
        row = by_style[f"{i['label']}/{i['style']}"]
        row["n"] += 1
        row["called_refusal"] += int(c)
    styles = {}
    for key, row in sorted(by_style.items()):
        label = key.split("/")[0]
        share = row["called_refusal"] / row["n"]
        styles[key] = {**row, ("recall" if label == "refusal" else "called_refusal_share"): round(share, 4)}
    called_any = sum(called[k] for k, i in enumerate(items) if i["label"] != "unclear")
    true_called = sum(c for c, i in decided if c and i["label"] == "refusal")
    return {
        "n_decided": len(decided), "accuracy": round(correct / len(decided), 4),
        "false_refusal_rate": round(sum(compliant) / len(compliant), 4), "n_compliance": len(compliant),
        "refusal_recall": round(sum(refusals) / len(refusals), 4), "n_refusal": len(refusals),
        "refusal_precision": round(true_called / called_any, 4) if called_any else None,
        "unclear": {"n": len(unclear), "called_refusal": int(sum(unclear))},
        "by_style": styles,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--again", action="store_true", help="score a judge version that was scored before")
    args = ap.parse_args()
    record = json.loads(OUT.read_text(encoding="utf-8")) if OUT.is_file() else {"runs": []}
    done = {(r["judge"], r.get("part", "sealed")) for r in record["runs"]}
    judges: list[RefusalJudge] = [*(shipped_judge(v) for v in VERSIONS), PhraseJudge()]
    for part, stem in PARTS.items():
        items = sealed_items(part)
        replies = [i["reply"] for i in items]
        prompts = [i["prompt"] for i in items]
        for judge in judges:
            name = judge_name(judge)
            if (name, part) in done and not args.again:
                print(f"{name} was scored on {part} before; not scoring it again (see {OUT}).")
                continue
            t0 = time.perf_counter()
            called = judge_many(judge, replies, prompts)
            result = score(called, items)
            record["runs"].append({"judge": name, "part": part, "blind": blind(judge, part),
                                   "judge_sha256": weights_sha256(judge),
                                   "sealed_sha256": hashlib.sha256((DATA / f"{stem}.jsonl").read_bytes()).hexdigest(),
                                   "n_items": len(items), "seconds": round(time.perf_counter() - t0, 2),
                                   "date": time.strftime("%Y-%m-%d"), **result})
            print(f"{name} on {part}: accuracy {result['accuracy']:.3f} on {result['n_decided']} decided items, false "
                  f"refusals {result['false_refusal_rate']:.3f}, refusal recall {result['refusal_recall']:.3f}")
    OUT.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
