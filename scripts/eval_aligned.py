"""Refusal rates of the base and refusal-tuned default models on the held-out test split.

Each model answers every **test-split** normal prompt (look-alikes included) and every
test-split malicious prompt greedily (``--max-new-tokens``, default 24) through the chat
template with its default system prompt; the validated default judge
(:func:`ihs_sight.default_judge`, its sealed-set accuracy in ``docs/judge_eval.json``) decides
whether each reply refuses, reading the reply with its prompt. None of these prompts was used in
training (``scripts/train_aligned.py`` reads train-split prompts only).

Writes one JSON file (default ``docs/aligned_eval.json``): per model, its weights hash, the judge,
and the refusal rate, count and Wilson 95% interval for ``malicious``, ``normal`` (all plain
normal prompts), ``lookalike`` (the benign look-alikes among them), ``normal_plain`` (the rest)
and the normal prompts of each written form (``form:terse``, ``form:question``, ...), plus every
reply. The test split is scored once per model version: a model whose weights hash already has
an entry in the file is skipped, so a recorded number is never overwritten by a re-run (pass
another ``--out`` to reproduce one). The first release's evaluation, judged by the phrase judge
on the then smaller test split, stays in ``docs/aligned_eval_v1.json``.

    python scripts/eval_aligned.py          # default, default-aligned (v1) and default-aligned@v2
    python scripts/eval_aligned.py --judge v1 --models default-aligned@v2 --out /tmp/again.json   # reproduce one

``--judge`` picks the shipped judge version (default: the default judge's). The committed
``docs/aligned_eval.json`` was judged by v1, so adding a model to it takes ``--judge v1``; a file is
never extended with another judge's verdicts (the settings must match).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from make_distill_data import generate

import ihs_sight as ihs
from ihs_sight.judge import judge_many, judge_name
from ihs_sight.judge.learned import DEFAULT_VERSION, VERSIONS

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "aligned_eval.json"
MODELS = ["default", "default-aligned", "default-aligned@v2"]


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion k/n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4))


def test_sets() -> dict[str, list[ihs.Prompt]]:
    """The reported groups of test-split prompts, by name."""
    test = ihs.load_prompts().test
    normal = list(test.normal)
    groups: dict[str, list[ihs.Prompt]] = {
        "malicious": list(test.malicious),
        "normal": normal,
        "lookalike": [p for p in normal if p.lookalike],
        "normal_plain": [p for p in normal if not p.lookalike],
    }
    for form in sorted({p.form for p in normal if p.form}):
        groups[f"form:{form}"] = [p for p in normal if p.form == form]
    return groups


def evaluate(name: str, model: ihs.Model, judge: ihs.RefusalJudge, *, max_new_tokens: int,
             batch_size: int) -> dict[str, Any]:
    sets = test_sets()
    prompts = sets["malicious"] + sets["normal"]
    t0 = time.perf_counter()
    answers = generate(model, [p.text for p in prompts], max_new_tokens=max_new_tokens, batch_size=batch_size)
    verdicts = judge_many(judge, [a[0] for a in answers], [p.text for p in prompts])
    by_id = {p.id: (a[0], bool(v)) for p, a, v in zip(prompts, answers, verdicts)}
    rates = {}
    for key, ps in sets.items():
        n_ref = sum(by_id[p.id][1] for p in ps)
        rates[key] = {"refused": n_ref, "n": len(ps), "rate": round(n_ref / len(ps), 4), "ci95": wilson(n_ref, len(ps))}
    return {
        "model": name,
        "weights_hash": model.weights_hash,
        "judge": judge_name(judge),
        "rates": rates,
        "seconds": round(time.perf_counter() - t0, 1),
        "replies": [{"id": p.id, "label": p.label, "lookalike": p.lookalike, "form": p.form, "prompt": p.text,
                     "reply": by_id[p.id][0], "refusal": by_id[p.id][1]} for p in prompts],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    ap.add_argument("--judge", choices=VERSIONS, default=DEFAULT_VERSION, help="the shipped judge version that reads")
    args = ap.parse_args()
    judge = ihs.shipped_judge(args.judge)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(0)
    settings = {"split": "test", "decoding": "greedy", "max_new_tokens": args.max_new_tokens,
                "system_prompt": "template default", "judge": judge_name(judge)}
    result: dict[str, Any] = {"settings": settings, "models": {}}
    if args.out.is_file():  # keep every recorded entry; a new setting starts a new file
        old = json.loads(args.out.read_text(encoding="utf-8"))
        if old.get("settings") != settings:
            raise SystemExit(f"{args.out} was written with other settings ({old.get('settings')}); pass another --out.")
        result = old
    models = result["models"]
    for name in args.models:
        model = ihs.load_model(name, device="cpu", dtype="float32")
        if model.weights_hash in {m["weights_hash"] for m in models.values()}:
            logging.info("%s (weights %s) is already scored in %s; the test split is scored once per version",
                         name, model.weights_hash, args.out)
            continue
        if name in models:  # an earlier version under the same name keeps its record
            models[f"{name} (weights {models[name]['weights_hash'][:12]})"] = models.pop(name)
        entry = evaluate(name, model, judge, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
        entry["versions"] = {k: importlib.metadata.version(k) for k in ("torch", "transformers", "peft", "nnsight")}
        models[name] = entry
        for key, r in entry["rates"].items():
            logging.info("%s %-16s refused %3d/%3d = %.1f%%", name, key, r["refused"], r["n"], 100 * r["rate"])
        args.out.parent.mkdir(parents=True, exist_ok=True)  # written after each model: nothing scored is lost
        args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    logging.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
