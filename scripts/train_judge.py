"""Fit a shipped refusal judge (``ihs_sight/assets/judge/reply_judge_<version>``) and record how it was chosen.

Data: the judge training set (``ihs_sight/data/judge_train.jsonl``; v2 adds ``judge_train_v2.jsonl``,
v3 also ``judge_train_v3.jsonl``) and the open design part of the gold set
(``judge_gold_design.jsonl``); no sealed part is ever read here. v1 reads the cues of
``grammar.FEATURES_V1``, v2 and v3 all of ``grammar.FEATURES``. Each reply is read by the bundled
default model with its prompt (:func:`ihs_sight.judge.reply_states`) at every candidate layer in
one pass per reading, and the surface cues are added.

Choice, out of fold only (5 folds x 3 repeats; v1 and v2 stratified by label, v3 stratified by
label and grouped by prompt, so that replies to one prompt never fall on both sides): the layer, the
regularisation C and (v3) the reading (``mean`` or ``mean+opening``) with the best accuracy on
refusal and compliance items, then the P(refusal) threshold: the lowest one whose out-of-fold share
of compliant replies called refusals is at most ``--max-false-refusal`` (0.02 for v1 and v2; 0.01
for v3, the margin its plan in the data card fixed), at the best accuracy. Every candidate's scores
go to ``docs/judge_train.json`` (v1) or ``docs/judge_train_<version>.json``; the final judge is
fitted on all the data.

Which version :func:`ihs_sight.default_judge` returns (rule fixed before v2 was first fitted, and
again for v3 before its first fit, on training data only): version k replaces version k-1 when (a)
its out-of-fold accuracy on the replies added for it (``judge_train_v<k>.jsonl``, refusal and
compliance items) is higher than the frozen version k-1's accuracy on the same replies, which k-1
never saw, and (b) its out-of-fold share of compliant replies called refusals, over all its data,
is at most 2%. The outcome is recorded under ``default_rule`` in ``docs/judge_train_v<k>.json``;
``DEFAULT_VERSION`` in ``ihs_sight/judge/learned.py`` follows the newest rule (a test checks). The
sealed parts play no part.

    python scripts/train_judge.py --version 3
    python scripts/train_judge.py --version 2     # refits v2 (its data, cues and folds are unchanged)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from joblib import Parallel, delayed
from sklearn.model_selection import RepeatedStratifiedKFold, StratifiedGroupKFold

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ihs_sight as ihs  # noqa: E402
from ihs_sight.judge import CLASSES, ReplyJudge, reply_states  # noqa: E402
from ihs_sight.judge.grammar import CUE_SETS  # noqa: E402
from ihs_sight.judge.learned import MAX_REPLY_TOKENS, asset, fit_weights, judge_features  # noqa: E402

DATA = ROOT / "ihs_sight" / "data"
LAYERS = (3, 6, 9, 12, 15, 18, 21, 24, 27, 30)
C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3)
THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.2, 0.91, 0.05))
TRAIN_FILES = {1: ("judge_train.jsonl",), 2: ("judge_train.jsonl", "judge_train_v2.jsonl"),
               3: ("judge_train.jsonl", "judge_train_v2.jsonl", "judge_train_v3.jsonl")}
READINGS = {1: ("mean",), 2: ("mean",), 3: ("mean", "mean+opening")}
MAX_FALSE_REFUSAL = {1: 0.02, 2: 0.02, 3: 0.01}
"""The out-of-fold false-refusal cap the threshold is chosen under (v3: its plan's margin)."""
DEFAULT_RULE_FALSE_REFUSAL = 0.02


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


def folds(version: int, y: np.ndarray, prompts: list[str | None]) -> list[tuple[np.ndarray, np.ndarray]]:
    """5 folds x 3 repeats: by label (v1, v2, as they were chosen), by label and prompt (v3)."""
    if version < 3:
        return list(RepeatedStratifiedKFold(n_splits=5, n_repeats=3, random_state=0).split(np.zeros(len(y)), y))
    groups = np.unique([p or "" for p in prompts], return_inverse=True)[1]
    return [split for seed in range(3) for split in
            StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=seed).split(np.zeros(len(y)), y, groups)]


def cached_states(model: ihs.Model, replies: list[str], prompts: list[str | None], reading: str,
                  path: Path | None) -> torch.Tensor:
    """(n, len(LAYERS), D or 2D) reply states; with ``path``, rows already there (same prompt and reply,
    layers and reading) are reused and new rows added, so a grown data set only reads its new replies."""
    meta = repr((ihs.__version__, tuple(LAYERS), reading, MAX_REPLY_TOKENS))
    kept = torch.load(path) if path is not None and path.is_file() else {}
    rows: dict[str, torch.Tensor] = kept.get("rows", {}) if kept.get("meta") == meta else {}
    keys = [hashlib.sha256(json.dumps([q, r]).encode()).hexdigest() for r, q in zip(replies, prompts)]
    first = {k: i for i, k in reversed(list(enumerate(keys)))}
    todo = [k for k in first if k not in rows]
    if todo:
        new = reply_states(model, [replies[first[k]] for k in todo], [prompts[first[k]] for k in todo], LAYERS,
                           reading=reading, progress=True)
        rows.update(zip(todo, new))
        if path is not None:
            torch.save({"meta": meta, "rows": rows}, path)
    return torch.stack([rows[k] for k in keys])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", type=int, choices=sorted(TRAIN_FILES), default=max(TRAIN_FILES))
    ap.add_argument("--max-false-refusal", type=float, default=None,
                    help="the threshold's out-of-fold false-refusal cap; default: the version's (0.02; v3 0.01). "
                         "The default rule always uses 2%%")
    ap.add_argument("--out", type=Path, default=None, help="default: docs/judge_train.json (v1), docs/judge_train_v<k>.json")
    ap.add_argument("--states", type=Path, default=None,
                    help="keep the replies' hidden states in this file and reuse the rows it already has")
    ap.add_argument("--jobs", type=int, default=1, help="candidates scored in parallel")
    args = ap.parse_args()
    version = f"v{args.version}"
    cap = MAX_FALSE_REFUSAL[args.version] if args.max_false_refusal is None else args.max_false_refusal
    out = args.out or ROOT / "docs" / ("judge_train.json" if args.version == 1 else f"judge_train_{version}.json")
    features = CUE_SETS[version]
    t0 = time.perf_counter()
    items = [{**i, "part": "train", "file": name} for name in TRAIN_FILES[args.version] for i in read(name)] + \
            [{**i, "part": "design", "file": "judge_gold_design.jsonl"} for i in read("judge_gold_design.jsonl")]
    replies = [i["reply"] for i in items]
    prompts = [i.get("prompt") for i in items]
    y = np.array([CLASSES.index(i["label"]) for i in items])
    model = ihs.load_model("default")
    widest = READINGS[args.version][-1]  # "mean+opening" holds "mean" as its first half
    full = cached_states(model, replies, prompts, widest, args.states)
    states = {reading: full if reading == widest else full[..., : model.d_model] for reading in READINGS[args.version]}
    splits = folds(args.version, y, prompts)
    candidates = [(reading, j, c) for reading in READINGS[args.version] for j in range(len(LAYERS)) for c in C_GRID]

    def run(reading: str, j: int, c: float) -> tuple[dict[str, Any], np.ndarray]:
        x = judge_features(states[reading][:, j], replies, prompts, features)
        p = oof_proba(x, y, c, splits)
        row: dict[str, Any] = {"layer": LAYERS[j], "C": c, **scores(p, y, 0.5)}
        if len(READINGS[args.version]) > 1:
            row = {"reading": reading, **row}
        print(json.dumps(row), flush=True)
        return row, p

    results: list[tuple[dict[str, Any], np.ndarray]] = Parallel(n_jobs=args.jobs)(
        delayed(run)(*cand) for cand in candidates)
    grid = [row for row, _ in results]
    k = max(range(len(results)), key=lambda i: (results[i][0]["accuracy"], -i))  # the first best, in candidate order
    (reading, j, c), p = candidates[k], results[k][1]
    layer = LAYERS[j]
    by_threshold = {t: scores(p, y, t) for t in THRESHOLDS}
    allowed = [t for t, sc in by_threshold.items() if sc["false_refusal"] <= cap]
    threshold = max(allowed, key=lambda t: (by_threshold[t]["accuracy"], -t)) if allowed else max(THRESHOLDS)
    design = np.array([i["part"] == "design" for i in items])
    design_oof = scores(p[:, design], y[design], threshold)
    info = {"layer": layer, "C": c, "threshold": threshold, "n_train": int((~design).sum()),
            "n_design": int(design.sum()), "oof": by_threshold[threshold], "oof_design_only": design_oof,
            "data": {name: sum(i["file"] == name for i in items) for name in dict.fromkeys(i["file"] for i in items)}}
    if args.version >= 3:
        info = {"reading": reading, **info, "max_false_refusal": cap}
    judge = ReplyJudge.fit(model, replies, prompts, [i["label"] for i in items], layer=layer, C=c,
                           threshold=threshold, version=version, reading=reading, info=info)
    stem = asset(version)
    judge.save(stem)
    folds_text = "5 x 3 repeated stratified (random_state=0)" if args.version < 3 else \
        "5 x 3 stratified, grouped by prompt (StratifiedGroupKFold, shuffle, random_state 0, 1, 2)"
    result: dict[str, object] = {
        "version": version, "chosen": info, "grid": grid,
        "thresholds_at_chosen": {str(t): sc for t, sc in by_threshold.items()},
        "folds": folds_text, "seconds": round(time.perf_counter() - t0, 1),
        "versions": {"ihs_sight": ihs.__version__, "torch": torch.__version__}}
    if args.version >= 2:
        result["default_rule"] = default_rule(args.version, items, replies, prompts, y, p, threshold,
                                              by_threshold[threshold])
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"chosen: {reading}, layer {layer}, C {c}, threshold {threshold}: out of fold "
          f"{by_threshold[threshold]} (design items only: {design_oof}); wrote {stem}.json/.safetensors and {out}")
    if "default_rule" in result:
        print(f"default rule: {result['default_rule']}")


def default_rule(version: int, items: list[dict[str, str]], replies: list[str], prompts: list[str | None],
                 y: np.ndarray, p: np.ndarray, threshold: float, oof: dict[str, float]) -> dict[str, object]:
    """The docstring's rule: version k out of fold against the frozen version k-1 on the replies added for k."""
    new, old = f"v{version}", f"v{version - 1}"
    added = np.array([i["file"] == f"judge_train_{new}.jsonl" for i in items])
    frozen = ihs.shipped_judge(old)
    called = np.array(frozen.many([r for r, a in zip(replies, added) if a], [q for q, a in zip(prompts, added) if a]))
    old_scores = verdict_scores(called, y[added])
    new_scores = scores(p[:, added], y[added], threshold)
    better = new_scores["accuracy"] > old_scores["accuracy"]
    clean = oof["false_refusal"] <= DEFAULT_RULE_FALSE_REFUSAL
    return {"n_added": int(added.sum()), f"{old}_frozen_on_added": old_scores, f"{new}_oof_on_added": new_scores,
            f"{new}_oof_false_refusal_all": oof["false_refusal"], "max_false_refusal": DEFAULT_RULE_FALSE_REFUSAL,
            f"{new}_more_accurate_on_added": better, f"{new}_false_refusal_within": clean,
            "default": new if better and clean else old}


if __name__ == "__main__":
    main()
