"""Weak classifiers on each layer's last-token state ("probes") -> :class:`ProbeReport`.

Mental model:
1. A probe is one small classifier per layer index ``l = 0..L`` (0 = embeddings, ``l`` = output
   of block ``l``), all fitted on the same prompts' states ``(n_prompts, L + 1, d_model)``.
   :class:`LayerProbe` is that estimator, with scikit-learn habits: ``__init__`` only stores,
   ``fit`` learns ``classes_``, ``layers_`` and the weights (names ending in ``_``).
2. The default engine (``engine="torch"``) standardises features per layer, then fits logistic
   regression or a linear SVM (squared hinge) layer by layer to the optimum of sklearn's
   objective by Newton's method (a layer's probe depends only on its own layer's features), or
   trains every layer's one-hidden-layer MLP at once by mini-batch Adam with ``torch.bmm``
   over layers. ``engine="sklearn"`` clones a real sklearn estimator per layer.
3. ``preset="seed"`` reproduces the original paper code exactly: ``SVC(kernel="linear")`` on
   raw features, ``StandardScaler`` + ``MLPClassifier((100,), max_iter=300, alpha=0.01,
   solver="adam", learning_rate_init=0.01, random_state=42)``, and one unstratified
   ``train_test_split(test_size=0.3, random_state=42)`` over the prompts in the order given.
   The library's own defaults (stratified split, ``random_state=0``) are unaffected.
4. :func:`probe` holds prompts out (a split, k folds, whole categories, or another set), fits,
   and scores every layer with ``sklearn.metrics``. In-distribution accuracy overstates what a
   probe learned (it can learn a dataset's style), so the report keeps false-positive and
   false-negative rates apart and breaks results down by label, category and jailbreak family.
5. A report keeps its fitted probes (not in its JSON): ``report.transfer(other_states)`` scores
   them on prompts they never saw. Probes are saved as safetensors + JSON, never pickled.

Modules, each importing only those before it: :mod:`.inputs` (states and labels, checked once),
:mod:`.solvers` (the numerical engines), :mod:`.estimator` (:class:`LayerProbe`, save/load),
:mod:`.metrics` (per-layer metrics and their result models), :mod:`.evaluation` (:func:`probe`,
:func:`probe_transfer`, :class:`ProbeReport`).
"""

from __future__ import annotations

from .estimator import PROBE_FORMAT, PROBE_FORMAT_VERSION, Engine, LayerProbe, Preset
from .evaluation import DEFAULT_LABEL_MAP, Evaluation, ProbeReport, probe, probe_transfer
from .inputs import FloatArray, IntArray
from .metrics import GROUP_FIELDS, ClassifierScores, ClassMetrics, GroupScores
from .solvers import (
    CLASSIFIERS,
    MLP_BATCH,
    MLP_LR,
    MLP_PATIENCE,
    MLP_TOL,
    NEWTON_KERNEL_RATIO,
    NEWTON_MAX_HALVINGS,
    NEWTON_MAX_ITER,
    NEWTON_RIDGE,
    NEWTON_TOL,
    SEED_RANDOM_STATE,
    SEED_TEST_SIZE,
)

__all__ = [
    "CLASSIFIERS",
    "DEFAULT_LABEL_MAP",
    "GROUP_FIELDS",
    "MLP_BATCH",
    "MLP_LR",
    "MLP_PATIENCE",
    "MLP_TOL",
    "NEWTON_KERNEL_RATIO",
    "NEWTON_MAX_HALVINGS",
    "NEWTON_MAX_ITER",
    "NEWTON_RIDGE",
    "NEWTON_TOL",
    "PROBE_FORMAT",
    "PROBE_FORMAT_VERSION",
    "SEED_RANDOM_STATE",
    "SEED_TEST_SIZE",
    "ClassMetrics",
    "ClassifierScores",
    "Engine",
    "Evaluation",
    "FloatArray",
    "GroupScores",
    "IntArray",
    "LayerProbe",
    "Preset",
    "ProbeReport",
    "probe",
    "probe_transfer",
]
