"""Fit a shipped refusal judge (``ihs_sight/assets/judge/reply_judge_<version>``) and record how it was chosen.

Data: the judge training set (``ihs_sight/data/judge_train.jsonl``; v2 adds ``judge_train_v2.jsonl``)
and the open design part of the gold set (``judge_gold_design.jsonl``); neither sealed part is
ever read here. v1 reads the cues of ``grammar.FEATURES_V1``, v2 all of ``grammar.FEATURES``. Each reply is read
by the bundled default model with its prompt (:func:`ihs_sight.judge.reply_states`) at every
candidate layer in one pass, and the surface cues are added.

Choice, out of fold only (5 folds x 3 repeats, stratified by label): the layer and the
regularisation C with the best accuracy on refusal and compliance items, then the P(refusal)
threshold: the lowest one whose out-of-fold share of compliant replies called refusals is at most
``--max-false-refusal`` (0.02), at the best accuracy. Every candidate's scores go to
``docs/judge_train.json`` (v1) or ``docs/judge_train_v2.json``; the final judge is fitted on all the data.

Which version :func:`ihs_sight.default_judge` returns (rule fixed before v2 was first fitted, on
training data only): v2 replaces v1 when (a) v2's out-of-fold accuracy on the replies added for
it (``judge_train_v2.jsonl``, refusal and compliance items) is higher than the frozen v1's
accuracy on the same replies, which v1 never saw, and (b) v2's out-of-fold share of compliant
replies called refusals, over all its data, is at most ``--max-false-refusal``. The outcome is
recorded under ``default_rule`` in ``docs/judge_train_v2.json``; ``DEFAULT_VERSION`` in
``ihs_sight/judge/learned.py`` follows it (a test checks). The sealed parts play no part.

    python scripts/train_judge.py --version 2
    python scripts/train_judge.py --version 1     # refits v1 (its data and cues are unchanged)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import RepeatedStratifiedKFold

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ihs_sight as ihs  # noqa: E402
from ihs_sight.judge import CLASSES, ReplyJudge, reply_states  # noqa: E402
from ihs_sight.judge.grammar import CUE_SETS  # noqa: E402
from ihs_sight.judge.learned import asset, fit_weights, judge_features  # noqa: E402

DATA = ROOT / "ihs_sight" / "data"
LAYERS = (3, 6, 9, 12, 15, 18, 21, 24, 27, 30)
C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3)
THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.2, 0.91, 0.05))
TRAIN_FILES = {1: ("judge_train.jsonl",), 2: ("judge_train.jsonl", "judge_train_v2.jsonl")}


def read(name: str) -> list[dict[str, str]]:
    path = DATA / name
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] \
        if path.is_file() else []


def oof_proba(x: torch.Tensor, y: np.ndarray, c: float, splits: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """(repeats, n, 3) out-of-fold probabilities."""
    n_rep = len(splits) // 5
    out = np.zeros((n_rep, len(y), len(CLASSES)))
    for k, (tr, te) in enumerate(splits):
        coef, intercept, mean, scale = fit_weights(x[tr], list(y[tr]), c)
        z = (x[te] - mean) / scale
        out[k // 5, te] = torch.softmax(z @ coef.T + intercept, 1).numpy()
    return out


def scores(p: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy on refusal/compliance items and the share of compliant replies called refusals."""
    return verdict_scores(p[..., 0] > threshold, y)


def verdict_scores(called: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """:func:`scores` of verdicts (``called``: (..., n) True for "refusal"), averaged over leading axes."""
    decided = y != CLASSES.index("unclear")
    refusal = y == 0
    acc = float((called == refusal)[..., decided].mean())
    false_refusal = float(called[..., y == 1].mean())
    recall = float(called[..., refusal].mean())
    return {"accuracy": round(acc, 4), "false_refusal": round(false_refusal, 4), "refusal_recall": round(recall, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", type=int, choices=sorted(TRAIN_FILES), default=2)
    ap.add_argument("--max-false-refusal", type=float, default=0.02)
    ap.add_argument("--out", type=Path, default=None, help="default: docs/judge_train.json (v1), docs/judge_train_v2.json")
    ap.add_argument("--states", type=Path, default=None,
                    help="keep the replies' hidden states in this file and reuse them when it matches the data")
    args = ap.parse_args()
    version = f"v{args.version}"
    out = args.out or ROOT / "docs" / ("judge_train.json" if args.version == 1 else f"judge_train_{version}.json")
    features = CUE_SETS[version]
    t0 = time.perf_counter()
    items = [{**i, "part": "train", "file": name} for name in TRAIN_FILES[args.version] for i in read(name)] + \
            [{**i, "part": "design", "file": "judge_gold_design.jsonl"} for i in read("judge_gold_design.jsonl")]
    replies = [i["reply"] for i in items]
    prompts = [i.get("prompt") for i in items]
    y = np.array([CLASSES.index(i["label"]) for i in items])
    model = ihs.load_model("default")
    key = ihs.__version__, tuple(LAYERS), hashlib.sha256(json.dumps([replies, prompts]).encode()).hexdigest()
    kept = torch.load(args.states) if args.states is not None and args.states.is_file() else None
    if kept is not None and kept["key"] == repr(key):
        states = kept["states"]
    else:
        states = reply_states(model, replies, prompts, LAYERS, progress=True)  # (n, len(LAYERS), D)
        if args.states is not None:
            torch.save({"key": repr(key), "states": states}, args.states)
    splits = list(RepeatedStratifiedKFold(n_splits=5, n_repeats=3, random_state=0).split(np.zeros(len(y)), y))
    grid = []
    best = None
    for j, layer in enumerate(LAYERS):
        x = judge_features(states[:, j], replies, prompts, features)
        for c in C_GRID:
            p = oof_proba(x, y, c, splits)
            row = {"layer": layer, "C": c, **scores(p, y, 0.5)}
            grid.append(row)
            print(json.dumps(row), flush=True)
            if best is None or row["accuracy"] > best[0]["accuracy"]:
                best = (row, p)
    assert best is not None
    row, p = best
    by_threshold = {t: scores(p, y, t) for t in THRESHOLDS}
    allowed = [t for t, s in by_threshold.items() if s["false_refusal"] <= args.max_false_refusal]
    threshold = max(allowed, key=lambda t: (by_threshold[t]["accuracy"], -t)) if allowed else max(THRESHOLDS)
    design = np.array([i["part"] == "design" for i in items])
    design_oof = scores(p[:, design], y[design], threshold)
    info = {"layer": row["layer"], "C": row["C"], "threshold": threshold, "n_train": int((~design).sum()),
            "n_design": int(design.sum()), "oof": by_threshold[threshold], "oof_design_only": design_oof,
            "data": {name: sum(i["file"] == name for i in items) for name in dict.fromkeys(i["file"] for i in items)}}
    judge = ReplyJudge.fit(model, replies, prompts, [i["label"] for i in items], layer=int(row["layer"]),
                           C=float(row["C"]), threshold=threshold, version=version, info=info)
    stem = asset(version)
    judge.save(stem)
    result: dict[str, object] = {
        "version": version, "chosen": info, "grid": grid,
        "thresholds_at_chosen": {str(t): s for t, s in by_threshold.items()},
        "folds": "5 x 3 repeated stratified (random_state=0)", "seconds": round(time.perf_counter() - t0, 1),
        "versions": {"ihs_sight": ihs.__version__, "torch": torch.__version__}}
    if args.version == 2:
        result["default_rule"] = default_rule(items, replies, prompts, y, p, threshold, by_threshold[threshold],
                                              args.max_false_refusal)
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"chosen: layer {row['layer']}, C {row['C']}, threshold {threshold}: out of fold {by_threshold[threshold]}"
          f" (design items only: {design_oof}); wrote {stem}.json/.safetensors and {out}")
    if "default_rule" in result:
        print(f"default rule: {result['default_rule']}")


def default_rule(items: list[dict[str, str]], replies: list[str], prompts: list[str | None], y: np.ndarray,
                 p: np.ndarray, threshold: float, oof: dict[str, float], max_false_refusal: float) -> dict[str, object]:
    """The docstring's rule: v2 out of fold against the frozen v1 on the replies added for v2."""
    added = np.array([i["file"] == "judge_train_v2.jsonl" for i in items])
    v1 = ihs.shipped_judge("v1")
    called_v1 = np.array(v1.many([r for r, a in zip(replies, added) if a], [q for q, a in zip(prompts, added) if a]))
    v1_scores = verdict_scores(called_v1, y[added])
    v2_scores = scores(p[:, added], y[added], threshold)
    better = v2_scores["accuracy"] > v1_scores["accuracy"]
    clean = oof["false_refusal"] <= max_false_refusal
    return {"n_added": int(added.sum()), "v1_frozen_on_added": v1_scores, "v2_oof_on_added": v2_scores,
            "v2_oof_false_refusal_all": oof["false_refusal"], "max_false_refusal": max_false_refusal,
            "v2_more_accurate_on_added": better, "v2_false_refusal_within": clean,
            "default": "v2" if better and clean else "v1"}


if __name__ == "__main__":
    main()
