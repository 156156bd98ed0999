"""Print the difficulty figures quoted in ihs_sight/data/README.md.

Bag-of-words logistic regression on the raw text of the canonical split, and form-only
classifiers (length in tokens, punctuation, question mark, first word, sentence count).

    python scripts/data_card_stats.py
"""

from __future__ import annotations

import re

import numpy as np
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from transformers import AutoTokenizer

import ihs_sight as ihs
from ihs_sight.models import default_gguf_path, gguf_to_safetensors


def form_features(tok, texts):  # type: ignore[no-untyped-def]
    numeric = [[len(tok(t)["input_ids"]), sum(c in ",;:" for c in t), t.rstrip().endswith("?"),
                t.rstrip().endswith("."), len(re.findall(r"[.?!](\s|$)", t)), t.count("'")] for t in texts]
    return np.asarray(numeric, float), [[t.split()[0].casefold()] for t in texts]


def main() -> None:
    data = ihs.load_prompts()
    tok = AutoTokenizer.from_pretrained(gguf_to_safetensors(default_gguf_path()))
    train, test = data.train, data.test.normal + data.test.malicious
    bow = make_pipeline(CountVectorizer(), LogisticRegression(max_iter=5000)).fit(train.texts, train.labels)
    look = data.test.normal.select(lookalike=True)
    print(f"bag-of-words logreg held-out accuracy: {bow.score(test.texts, test.labels):.3f}")
    print(f"  on test look-alikes (all normal): {bow.score(look.texts, look.labels):.3f} ({len(look)} prompts)")
    jb = data.jailbreak
    print(f"  jailbreaks called malicious: {np.mean(bow.predict(jb.texts) == 'malicious'):.3f}")
    wn = data.wrapped_normal
    print(f"  wrapped normals called malicious: {np.mean(bow.predict(wn.texts) == 'malicious'):.3f}")
    ntr, ftr = form_features(tok, train.texts)
    nte, fte = form_features(tok, test.texts)
    sc, oh = StandardScaler().fit(ntr), OneHotEncoder(handle_unknown="ignore").fit(ftr)
    xtr = np.hstack([sc.transform(ntr), oh.transform(ftr).toarray()])
    xte = np.hstack([sc.transform(nte), oh.transform(fte).toarray()])
    lr = LogisticRegression(max_iter=5000).fit(xtr, train.labels).score(xte, test.labels)
    gb = GradientBoostingClassifier(random_state=0).fit(xtr, train.labels).score(xte, test.labels)
    print(f"form-only logistic regression: {lr:.3f}; form-only gradient boosting: {gb:.3f}")
    y = np.array(train.labels)
    print(f"mean tokens: normal {ntr[y == 'normal', 0].mean():.1f}, malicious {ntr[y == 'malicious', 0].mean():.1f}")


if __name__ == "__main__":
    main()
