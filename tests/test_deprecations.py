"""Moved and renamed public names keep working, warn once per use, and name their replacement."""

from __future__ import annotations

import importlib

import pytest

import ihs_sight as ihs
from ihs_sight.guard import GuardEvaluation, RateRow
from ihs_sight.runtime import packing


def test_moved_module_names_warn_and_resolve() -> None:
    extract_module = importlib.import_module("ihs_sight.extract")
    with pytest.warns(ihs.IhsSightDeprecationWarning, match=r"use ihs_sight\.runtime\.packing\.pad_batch"):
        assert extract_module.pad_batch is packing.pad_batch
    with pytest.warns(ihs.IhsSightDeprecationWarning, match=r"ihs_sight\.runtime\.packing instead"):
        assert ihs.packing is packing
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        extract_module.nope  # noqa: B018


def test_guard_evaluation_answers_keys_with_a_warning() -> None:
    ev = GuardEvaluation(layer=3, threshold=0.4, tpr=0.9, fpr=0.05, n_malicious=10, n_normal=20,
                         lookalike_fpr=None, n_lookalike=0,
                         by_family=[RateRow(group="jailbreak/roleplay", n=4, flagged=3, rate=0.75)], seconds=0.1)
    with pytest.warns(ihs.IhsSightDeprecationWarning, match=r"use the attribute \.tpr"):
        assert ev["tpr"] == ev.tpr == 0.9
    with pytest.warns(ihs.IhsSightDeprecationWarning):
        assert ev["by_family"] == [{"group": "jailbreak/roleplay", "n": 4, "flagged": 3, "rate": 0.75}]
    assert GuardEvaluation.model_validate_json(ev.model_dump_json()) == ev
