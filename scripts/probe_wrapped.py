"""Claim 1 with wrappers (#19): at which layer does the model tell harm from harmlessness, whatever the wrapper?

Per model, last-token states at every layer (:func:`ihs_sight.extract`, cached) of the train
split (direct prompts and the wrapped train set: the 7 bundled families around train requests,
both labels in every wrapper) and of the test split. One logistic-regression probe per
layer (:class:`ihs_sight.LayerProbe`, ``C=1``, ``random_state=0``), fitted two ways:

* ``direct``: the direct train prompts only (the paper's setting);
* ``wrapped``: the direct and the wrapped train prompts (a ``jailbreak`` is a malicious request).

Each is scored per layer on the direct test prompts, on the 5 held-out wrapper families
(``wrapped_heldout.jsonl``, test split: wrappers no fit has seen) and on the 7 current families'
test prompts. Beside them, the leave-one-family-out accuracy on the train split
(``ihs.probe(..., cv="family")``: each family's wrapped train prompts scored by probes that never
saw that wrapper) and the bag-of-words and form-only baselines fitted on the same train prompts.
Nothing here is chosen: it is a report. Writes ``docs/probe_wrapped.json``.

    python scripts/probe_wrapped.py                       # default-aligned and default
    python scripts/probe_wrapped.py --tables              # the README's tables from the JSON
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import ihs_sight as ihs
from ihs_sight.probe import LayerProbe
from ihs_sight.probe.baselines import surface_baselines
from ihs_sight.wrappers import wrappers

ROOT = Path(__file__).resolve().parents[1]
CURRENT = tuple(wrappers())
"""The 7 bundled wrapper families (train and test); the held-out ones are test-only."""


def classes(prompts: ihs.PromptSet) -> np.ndarray[Any, Any]:
    return np.array(["normal" if p.label == "normal" else "malicious" for p in prompts])


def run_model(name: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    model = ihs.load_model(name)
    data = ihs.load_prompts(wrapped_train=True, heldout_wrapped=True)
    train, test = data.train, data.test
    hs_tr, hs_te = ihs.extract(model, train), ihs.extract(model, test)
    x_tr, x_te = hs_tr.states.float(), hs_te.states.float()
    y_tr, y_te = classes(train), classes(test)
    direct_tr = np.array([p.family is None for p in train])
    subsets = {
        "direct": np.array([p.family is None for p in test]),
        "heldout_families": np.array([p.family is not None and p.family not in CURRENT for p in test]),
        "current_families": np.array([p.family in CURRENT for p in test]),
    }
    out: dict[str, Any] = {"model": name, "layers": list(range(model.n_layers + 1)),
                           "n_train": {"direct": int(direct_tr.sum()), "wrapped": int((~direct_tr).sum())},
                           "n_test": {k: int(v.sum()) for k, v in subsets.items()}, "fits": {}}
    for fit_name, mask in (("direct", direct_tr), ("wrapped", np.ones(len(train), bool))):
        probe = LayerProbe("logreg", random_state=0).fit(x_tr[torch.from_numpy(mask)], list(y_tr[mask]))
        pred = probe.predict(x_te)  # (n, L + 1)
        entry: dict[str, Any] = {sub: [round(float(v), 4) for v in (pred[m] == y_te[m][:, None]).mean(0)]
                                 for sub, m in subsets.items()}
        codes_tr = (y_tr[mask] == "malicious").astype(np.int64)
        texts_tr = [t for t, k in zip(train.texts, mask) if k]
        entry["baselines"] = {}
        for sub, m in subsets.items():
            te_texts = [t for t, k in zip(test.texts, m) if k]
            b = surface_baselines(texts_tr, codes_tr, [(np.arange(len(texts_tr)), np.arange(len(te_texts)))],
                                  scored_texts=te_texts, scored_codes=(y_te[m] == "malicious").astype(np.int64))
            entry["baselines"][sub] = {k: round(v, 4) for k, v in b.accuracy.items()}
        out["fits"][fit_name] = entry
    # Leave one wrapper family out on the train split: each family scored by probes that never saw it.
    lofo = ihs.probe(hs_tr, classifiers=["logreg"], cv="family", progress=False)
    out["lofo_train"] = {
        "pooled": [round(float(v), 4) for v in lofo.scores["logreg"].accuracy],
        "per_family": {g.name: [round(float(v), 4) for v in g.accuracy["logreg"]]
                       for g in lofo.groups.values() if g.by == "family"},
        "baselines": lofo.baselines.model_dump() if lofo.baselines is not None else None,
    }
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


TABLE_LAYERS = range(0, 31, 3)


def tables(path: Path) -> None:
    """The README's tables (every third layer), from the JSON file."""
    for name, e in json.loads(path.read_text())["models"].items():
        f = e["fits"]
        print(f"\n| layer (`{name}`) | direct test: fit direct | direct test: fit + wrapped | held-out families: "
              "fit direct | held-out families: fit + wrapped | train families left out (LOFO) |")
        print("|---|---|---|---|---|---|")
        for layer in TABLE_LAYERS:
            print(f"| {layer} | {f['direct']['direct'][layer]:.3f} | {f['wrapped']['direct'][layer]:.3f} | "
                  f"{f['direct']['heldout_families'][layer]:.3f} | {f['wrapped']['heldout_families'][layer]:.3f} | "
                  f"{e['lofo_train']['pooled'][layer]:.3f} |")
        b = {k: f[k]["baselines"] for k in ("direct", "wrapped")}
        print(f"| bag-of-words, same prompts | {b['direct']['direct']['bag_of_words']:.3f} | "
              f"{b['wrapped']['direct']['bag_of_words']:.3f} | {b['direct']['heldout_families']['bag_of_words']:.3f} | "
              f"{b['wrapped']['heldout_families']['bag_of_words']:.3f} | - |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["default-aligned", "default"])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "probe_wrapped.json")
    ap.add_argument("--tables", action="store_true", help="print the README's tables from --out")
    args = ap.parse_args()
    if args.tables:
        tables(args.out)
        return
    logging.basicConfig(level=logging.WARNING)
    result = {"models": {name: run_model(name) for name in args.models}}
    import importlib.metadata as md

    result["versions"] = {p: md.version(p) for p in ("torch", "transformers", "nnsight", "scikit-learn")}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
