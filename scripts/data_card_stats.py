"""Print the difficulty figures quoted in ihs_sight/data/README.md and write them to docs/data_card_stats.json.

Bag-of-words logistic regression on the raw text of the canonical split (the classifier is
frozen: ``make_pipeline(CountVectorizer(), LogisticRegression(max_iter=5000))``), its 5-fold
cross-validated accuracy on the train split (the stopping rule of the cue-free additions), the
words it leans on most, and form-only classifiers (length in tokens, punctuation, question
mark, first word, sentence count).

Every figure is computed twice: for the first batch of prompts alone (ids below 460, the data
as it was before the cue-free additions, same split) and for all bundled prompts.

    python scripts/data_card_stats.py            # everything; writes docs/data_card_stats.json
    python scripts/data_card_stats.py --cv-only  # only the train-split cross-validation (no test figure)
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

import ihs_sight as ihs

OUT = Path(__file__).resolve().parents[1] / "docs" / "data_card_stats.json"
N_FIRST_BATCH = 460
CV_FOLDS = 5
CV_SEED = 0
N_CV_SEEDS = 10
"""The CV figure is also reported over fold seeds 0-9 (mean, min, max) to show its spread."""
N_CUES = 15
TRACKED = ("fake", "sell", "hide", "secretly", "without", "cash", "get", "people", "him", "her")
"""Words whose train-split class counts the data card follows before and after."""


def bow() -> Any:
    """The frozen bag-of-words classifier."""
    return make_pipeline(CountVectorizer(), LogisticRegression(max_iter=5000))


def first_batch(p: ihs.Prompt) -> bool:
    base = (p.id or "").split("-")[0]
    return base[:1] in ("n", "m") and base[1:].isdigit() and int(base[1:]) < N_FIRST_BATCH


def cv_accuracy(train: ihs.PromptSet, seed: int = CV_SEED) -> float:
    """5-fold stratified (shuffled, seeded) cross-validated accuracy of the frozen classifier on ``train``."""
    folds = StratifiedKFold(CV_FOLDS, shuffle=True, random_state=seed)
    return float(cross_val_score(bow(), train.texts, train.labels, cv=folds).mean())


def cue_words(train: ihs.PromptSet) -> dict[str, Any]:
    """The words the classifier fit on ``train`` weighs most, each with its train-split document counts."""
    model = bow().fit(train.texts, train.labels)
    vec, lr = model[0], model[1]
    words = vec.get_feature_names_out()
    coef = lr.coef_[0] if lr.classes_[1] == "malicious" else -lr.coef_[0]  # > 0: toward malicious
    present = CountVectorizer(binary=True, vocabulary=vec.vocabulary_).transform(train.texts)
    y = np.array(train.labels)
    n_mal = np.asarray(present[y == "malicious"].sum(0)).ravel()
    n_norm = np.asarray(present[y == "normal"].sum(0)).ravel()

    def row(j: int) -> dict[str, Any]:
        return {"word": str(words[j]), "coef": round(float(coef[j]), 3), "malicious": int(n_mal[j]),
                "normal": int(n_norm[j])}

    order = np.argsort(coef)
    index = {w: j for j, w in enumerate(words)}
    return {"malicious_side": [row(j) for j in order[::-1][:N_CUES]], "normal_side": [row(j) for j in order[:N_CUES]],
            "tracked": {w: ({"malicious": int(n_mal[index[w]]), "normal": int(n_norm[index[w]])} if w in index
                            else {"malicious": 0, "normal": 0}) for w in TRACKED}}


def form_features(tok, texts):  # type: ignore[no-untyped-def]
    numeric = [[len(tok(t)["input_ids"]), sum(c in ",;:" for c in t), t.rstrip().endswith("?"),
                t.rstrip().endswith("."), len(re.findall(r"[.?!](\s|$)", t)), t.count("'")] for t in texts]
    return np.asarray(numeric, float), [[t.split()[0].casefold()] for t in texts]


def held_out(data: ihs.PromptSet, tok: Any) -> dict[str, Any]:
    """Figures on the test split (bag of words, form only), classifiers fit on the train split."""
    train, test = data.train, data.test.normal + data.test.malicious
    model = bow().fit(train.texts, train.labels)
    look = data.test.normal.select(lookalike=True)
    jb, wn = data.jailbreak, data.wrapped_normal
    by_batch = {}
    for batch, keep in (("first_batch", True), ("added", False)):
        part = test.filter(lambda p, k=keep: first_batch(p) == k)
        if len(part):
            by_batch[batch] = {"n": len(part), "accuracy": round(float(model.score(part.texts, part.labels)), 3)}
    by_form = {}
    for form in sorted({str(p.form) for p in test}):
        part = test.filter(lambda p, f=form: str(p.form) == f)
        by_form[form] = {"n": len(part), "accuracy": round(float(model.score(part.texts, part.labels)), 3)}
    ntr, ftr = form_features(tok, train.texts)
    nte, fte = form_features(tok, test.texts)
    sc, oh = StandardScaler().fit(ntr), OneHotEncoder(handle_unknown="ignore").fit(ftr)
    xtr = np.hstack([sc.transform(ntr), oh.transform(ftr).toarray()])
    xte = np.hstack([sc.transform(nte), oh.transform(fte).toarray()])
    lr = LogisticRegression(max_iter=5000).fit(xtr, train.labels).score(xte, test.labels)
    gb = GradientBoostingClassifier(random_state=0).fit(xtr, train.labels).score(xte, test.labels)
    y = np.array(train.labels)
    return {
        "n_test": len(test),
        "bow_test_accuracy": round(float(model.score(test.texts, test.labels)), 3),
        "bow_test_lookalikes": {"n": len(look), "accuracy": round(float(model.score(look.texts, look.labels)), 3)},
        "bow_test_by_batch": by_batch,
        "bow_test_by_form": by_form,
        "bow_jailbreaks_called_malicious": round(float(np.mean(model.predict(jb.texts) == "malicious")), 3),
        "bow_wrapped_normals_called_malicious": round(float(np.mean(model.predict(wn.texts) == "malicious")), 3),
        "form_only_logreg_test_accuracy": round(float(lr), 3),
        "form_only_gradient_boosting_test_accuracy": round(float(gb), 3),
        "mean_tokens_train": {"normal": round(float(ntr[y == "normal", 0].mean()), 1),
                              "malicious": round(float(ntr[y == "malicious", 0].mean()), 1)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cv-only", action="store_true",
                        help="print only the train-split cross-validation (never looks at the test split)")
    args = parser.parse_args()
    everything = ihs.load_prompts()
    subsets = {"first_batch": everything.filter(first_batch), "all": everything}
    if args.cv_only:
        for name, data in subsets.items():
            print(f"{name}: {len(data.train)} train prompts, {CV_FOLDS}-fold CV accuracy {cv_accuracy(data.train):.3f}")
        return
    from transformers import AutoTokenizer

    from ihs_sight.models import default_gguf_path, gguf_to_safetensors

    tok = AutoTokenizer.from_pretrained(gguf_to_safetensors(default_gguf_path()))
    result: dict[str, Any] = {"classifier": "make_pipeline(CountVectorizer(), LogisticRegression(max_iter=5000))",
                              "cv": f"StratifiedKFold({CV_FOLDS}, shuffle=True, random_state={CV_SEED}) on the train split"}
    for name, data in subsets.items():
        base = data.normal + data.malicious
        fig: dict[str, Any] = {
            "counts": {label: {split: len(base.select(label=label, split=split)) for split in ("train", "test")}
                       for label in ("normal", "malicious")},
            "lookalikes": {split: len(data.normal.select(lookalike=True, split=split)) for split in ("train", "test")},
            "forms": {label: base.select(label=label).counts("form") for label in ("normal", "malicious")},
            "bow_cv_accuracy_train": round(cv_accuracy(data.train), 3),
        }
        spread = [cv_accuracy(data.train, seed) for seed in range(N_CV_SEEDS)]
        fig["bow_cv_accuracy_train_fold_seeds"] = {"seeds": f"0-{N_CV_SEEDS - 1}", "mean": round(float(np.mean(spread)), 3),
                                                   "min": round(min(spread), 3), "max": round(max(spread), 3)}
        fig.update(held_out(data, tok))
        fig["cue_words"] = cue_words(data.train)
        result[name] = fig
        print(f"[{name}] {fig['counts']}")
        print(f"  bag-of-words {CV_FOLDS}-fold CV accuracy on the train split: {fig['bow_cv_accuracy_train']:.3f}")
        cvs = fig["bow_cv_accuracy_train_fold_seeds"]
        print(f"    over fold seeds {cvs['seeds']}: mean {cvs['mean']:.3f}, min {cvs['min']:.3f}, max {cvs['max']:.3f}")
        print(f"  bag-of-words logreg held-out accuracy: {fig['bow_test_accuracy']:.3f} "
              + ", ".join(f"{k} {v['accuracy']:.3f} (n={v['n']})" for k, v in fig["bow_test_by_batch"].items()))
        print(f"    on test look-alikes (all normal): {fig['bow_test_lookalikes']['accuracy']:.3f} "
              f"({fig['bow_test_lookalikes']['n']} prompts)")
        print(f"    jailbreaks called malicious: {fig['bow_jailbreaks_called_malicious']:.3f}")
        print(f"    wrapped normals called malicious: {fig['bow_wrapped_normals_called_malicious']:.3f}")
        print(f"  form-only logistic regression: {fig['form_only_logreg_test_accuracy']:.3f}; "
              f"form-only gradient boosting: {fig['form_only_gradient_boosting_test_accuracy']:.3f}")
        print(f"  mean tokens (train): normal {fig['mean_tokens_train']['normal']}, "
              f"malicious {fig['mean_tokens_train']['malicious']}")
    OUT.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
