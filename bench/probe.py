"""Benchmark: a full probe sweep (all layers, linear + MLP) vs the seed's sequential sklearn loop.

Both run in this process on the same features: the last-token states of every bundled normal
and malicious prompt (all splits; normal first, then malicious, as the seed stacked them),
extracted with the default model through the on-disk cache (the first run extracts, minutes).

- Baseline: the seed code's loop, layer by layer: ``train_test_split(test_size=0.3,
  random_state=42)``, ``SVC(kernel="linear")`` on raw features, then ``StandardScaler`` +
  ``MLPClassifier((100,), max_iter=300, alpha=0.01, adam, lr 0.01, random_state=42)``, each
  followed by ``classification_report`` as the seed did.
- Ours: ``probe(train, test=test, classifiers=("svm", "mlp"))`` with the library defaults
  (torch engine: all layers trained as one batched model), on the same split, metrics included.
  A default ``probe(states)`` sweep (its own stratified split) is timed too, for reference.

Pass: ours <= 1/5 of the baseline's time, mean accuracy over layers within 2 points.

Usage:
    python bench/probe.py [--threads 1] [--cache DIR] [--out result.json]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

# Run from a checkout without relying on the editable install's import hook.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import classification_report
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from threadpoolctl import threadpool_info, threadpool_limits

import ihs_sight as ihs
from ihs_sight.probe import probe


def seed_loop(features: np.ndarray, labels: np.ndarray) -> dict[str, object]:
    """The seed's Weak2StrongClassifier loop over layers, timed per classifier."""
    out: dict[str, object] = {}
    for name in ("svm", "mlp"):
        accs = []
        start = time.perf_counter()
        for layer in range(features.shape[1]):
            x = np.array([row[layer].flatten() for row in features])
            x_train, x_test, y_train, y_test = train_test_split(x, labels, test_size=0.3, random_state=42)
            if name == "svm":
                model = SVC(kernel="linear").fit(x_train, y_train)
                y_pred = model.predict(x_test)
            else:
                scaler = StandardScaler()
                mlp = MLPClassifier(hidden_layer_sizes=(100,), max_iter=300, alpha=0.01, solver="adam", verbose=0,
                                    random_state=42, learning_rate_init=0.01)
                mlp.fit(scaler.fit_transform(x_train), y_train)
                y_pred = mlp.predict(scaler.transform(x_test))
            classification_report(y_test, y_pred, zero_division=0.0)
            accs.append(float((y_pred == y_test).mean()))
        out[name] = {"seconds": time.perf_counter() - start, "accuracy": accs}
    return out


def machine(threads: int) -> dict[str, object]:
    versions = {}
    for pkg in ("ihs-sight", "torch", "scikit-learn", "numpy", "nnsight", "transformers"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = "unknown"
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "loadavg_1_5_15": list(os.getloadavg()),
        "torch_threads": torch.get_num_threads(),
        "blas_threads": [p.get("num_threads") for p in threadpool_info()],
        "threads_requested": threads,
        "device": "cpu",
        "dtype": "float32",
        "versions": versions,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and BLAS threads for both sides (1 is fastest on a shared CPU)")
    parser.add_argument("--cache", default=None, help="states cache directory (default: the user cache)")
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", ConvergenceWarning)

    model = ihs.load_model()
    data = ihs.load_prompts()
    prompts = data.normal + data.malicious
    start = time.perf_counter()
    states = ihs.extract(model, prompts, cache=args.cache if args.cache else True)
    extract_s = time.perf_counter() - start
    assert states.labels is not None
    labels = np.array(states.labels)
    seed_y = (labels == "malicious").astype(int)

    with threadpool_limits(limits=args.threads):
        info = machine(args.threads)
        baseline = seed_loop(states.states.numpy(), seed_y)
        idx_train, idx_test = train_test_split(np.arange(len(labels)), test_size=0.3, random_state=42)
        train_x, test_x = states.states[idx_train], states.states[idx_test]
        start = time.perf_counter()
        ours = probe(train_x, labels[idx_train], test=test_x, test_labels=labels[idx_test],
                     classifiers=("svm", "mlp"), progress=False)
        ours_s = time.perf_counter() - start
        start = time.perf_counter()
        default = probe(states, classifiers=("svm", "mlp"), progress=False)
        default_s = time.perf_counter() - start

    base_s = sum(baseline[n]["seconds"] for n in ("svm", "mlp"))  # type: ignore[index]
    base_mean = {n: float(np.mean(baseline[n]["accuracy"])) for n in ("svm", "mlp")}  # type: ignore[index]
    ours_mean = {n: float(np.mean(ours.scores[n].accuracy)) for n in ("svm", "mlp")}
    overall_base, overall_ours = float(np.mean(list(base_mean.values()))), float(np.mean(list(ours_mean.values())))
    ratio = ours_s / base_s
    result = {
        "prompts": len(labels),
        "layers": states.states.shape[1],
        "extract_or_cache_seconds": extract_s,
        "baseline": {"seconds": base_s, "svm_seconds": baseline["svm"]["seconds"],  # type: ignore[index]
                     "mlp_seconds": baseline["mlp"]["seconds"], "mean_accuracy": base_mean,  # type: ignore[index]
                     "accuracy": {n: baseline[n]["accuracy"] for n in ("svm", "mlp")}},  # type: ignore[index]
        "ours": {"seconds": ours_s, "fit_seconds": {n: ours.scores[n].fit_seconds for n in ("svm", "mlp")},
                 "mean_accuracy": ours_mean, "accuracy": {n: ours.scores[n].accuracy for n in ("svm", "mlp")}},
        "ours_default_split": {"seconds": default_s,
                               "mean_accuracy": {n: float(np.mean(default.scores[n].accuracy)) for n in ("svm", "mlp")}},
        "ratio": ratio,
        "mean_accuracy_gap_points": 100 * (overall_ours - overall_base),
        "pass_speed": ratio <= 0.2,
        "pass_accuracy": abs(overall_ours - overall_base) <= 0.02,
        "machine": info,
    }
    print(f"prompts: {len(labels)} ({dict(zip(*np.unique(labels, return_counts=True)))}), "
          f"layers: {states.states.shape[1]}, split: seed train_test_split(0.3, random_state=42)")
    print(f"baseline (seed sequential sklearn loop): {base_s:7.1f} s  (svm {baseline['svm']['seconds']:.1f} s, "  # type: ignore[index]
          f"mlp {baseline['mlp']['seconds']:.1f} s)  mean acc svm {base_mean['svm']:.4f} mlp {base_mean['mlp']:.4f}")  # type: ignore[index]
    print(f"ours (probe, torch engine, metrics incl.): {ours_s:7.1f} s  (fit svm {ours.scores['svm'].fit_seconds:.1f} s, "
          f"mlp {ours.scores['mlp'].fit_seconds:.1f} s)  mean acc svm {ours_mean['svm']:.4f} mlp {ours_mean['mlp']:.4f}")
    print(f"ratio ours / baseline: {ratio:.3f} (target <= 0.2): {'PASS' if result['pass_speed'] else 'FAIL'}")
    print(f"mean accuracy over layers and classifiers: ours {overall_ours:.4f} vs baseline {overall_base:.4f} "
          f"({result['mean_accuracy_gap_points']:+.2f} points; target within 2): "
          f"{'PASS' if result['pass_accuracy'] else 'FAIL'}")
    print(f"for reference, probe(states) with its own stratified split: {default_s:.1f} s, mean acc "
          + ", ".join(f"{n} {v:.4f}" for n, v in result["ours_default_split"]["mean_accuracy"].items()))  # type: ignore[index]
    print(f"machine: {json.dumps(info)}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
