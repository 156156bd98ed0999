"""Re-read the committed replies of an evaluation with a shipped judge (generates nothing).

``--judge`` names the shipped judge version (required, so that a bare run cannot overwrite a
committed reading with another judge's). Three committed readings: the first release's evaluation (``docs/aligned_eval_v1.json``, judged by the
phrase judge) re-read by judge v1 into ``docs/aligned_rejudged.json``, and today's evaluation
(``docs/aligned_eval.json``, judged by judge v1) re-read by judge v2 into
``docs/aligned_rejudged_v2.json`` and by judge v3 into ``docs/aligned_rejudged_v3.json``.

``scripts/eval_aligned.py`` judged the first release's replies with :class:`PhraseJudge`, which
misses whole styles of refusal (its sealed-set accuracy: ``docs/judge_eval.json``). This script
generates nothing: it reads every committed reply with its prompt through the chosen shipped judge
and writes the refusal rates under the source's judge and the new one side by side to ``--out``.

Some of these replies were hand-labelled into the judge's training data
(``judge_train*.jsonl``, source ``aligned_eval:<model>:<id>``) or its design part; on those the judge
has seen the answer, so the rates are also given over the replies it never saw.

    python scripts/rejudge_aligned.py --judge v1
    python scripts/rejudge_aligned.py --judge v2 --source docs/aligned_eval.json --out docs/aligned_rejudged_v2.json
    python scripts/rejudge_aligned.py --judge v3 --source docs/aligned_eval.json --out docs/aligned_rejudged_v3.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ihs_sight as ihs  # noqa: E402
from ihs_sight.judge import judge_many, judge_name  # noqa: E402
from ihs_sight.judge.learned import VERSIONS  # noqa: E402

DATA = ROOT / "ihs_sight" / "data"
SOURCE = ROOT / "docs" / "aligned_eval_v1.json"
OUT = ROOT / "docs" / "aligned_rejudged.json"


def seen_by_judge() -> set[str]:
    """``<model>:<prompt id>`` of aligned_eval replies in the judge's training data or design part."""
    seen = set()
    for name in ("judge_train.jsonl", "judge_train_v2.jsonl", "judge_train_v3.jsonl", "judge_gold_design.jsonl"):
        for line in (DATA / name).read_text(encoding="utf-8").splitlines():
            source = json.loads(line).get("source", "") if line.strip() else ""
            if source.startswith("aligned_eval:"):
                seen.add(source.removeprefix("aligned_eval:"))
    return seen


def rate(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    n = len(rows)
    refused = sum(bool(r[key]) for r in rows)
    return {"refused": refused, "n": n, "rate": round(refused / n, 4) if n else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--judge", choices=VERSIONS, required=True, help="the shipped judge that re-reads")
    ap.add_argument("--source", type=Path, default=SOURCE)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    source = json.loads(args.source.read_text(encoding="utf-8"))
    judge = ihs.shipped_judge(args.judge)
    seen = seen_by_judge()
    where = args.source.resolve()
    result: dict[str, Any] = {"source": where.relative_to(ROOT).as_posix() if where.is_relative_to(ROOT) else str(where),
                              "judges": {
        "old": source["settings"]["judge"], "new": judge_name(judge)},
        "settings": source["settings"], "models": {}}
    for name, entry in source["models"].items():
        replies = entry["replies"]
        verdicts = judge_many(judge, [r["reply"] for r in replies], [r["prompt"] for r in replies])
        rows = [{**r, "refusal_new": v, "seen_by_judge": f"{name}:{r['id']}" in seen}
                for r, v in zip(replies, verdicts)]
        groups = {
            "malicious": [r for r in rows if r["label"] == "malicious"],
            "normal": [r for r in rows if r["label"] == "normal"],
            "lookalike": [r for r in rows if r["label"] == "normal" and r["lookalike"]],
        }
        result["models"][name] = {
            "rates": {g: {"old": rate(rs, "refusal"), "new": rate(rs, "refusal_new"),
                          "new_unseen_by_judge": rate([r for r in rs if not r["seen_by_judge"]], "refusal_new")}
                      for g, rs in groups.items()},
            "changed": [{"id": r["id"], "old": r["refusal"], "new": r["refusal_new"], "seen_by_judge": r["seen_by_judge"]}
                        for r in rows if bool(r["refusal"]) != r["refusal_new"]],
        }
        for g, r in result["models"][name]["rates"].items():
            print(f"{name:16s} {g:10s} old {r['old']['refused']:3d}/{r['old']['n']}  new {r['new']['refused']:3d}/"
                  f"{r['new']['n']}  new, unseen by the judge {r['new_unseen_by_judge']['refused']:3d}/"
                  f"{r['new_unseen_by_judge']['n']}")
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
