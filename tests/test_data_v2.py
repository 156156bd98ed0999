"""The v2 training data for default-aligned: refusal styles, extra benign prompts, and the checks
that keep them away from the test split and from the judge's gold replies.

``scripts/check_overlap.py`` and ``scripts/check_ngrams.py`` are run as they ship; the model is
never loaded.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import pytest

import ihs_sight as ihs

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "ihs_sight" / "data"
FORMS = {"question", "imperative", "first_person", "context", "terse"}
TERSE_OPENERS = {"how", "best", "ways", "steps", "easiest", "quick"}


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _jsonl(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_refusals_v2_styles_topics_and_wording() -> None:
    spec = json.loads((DATA / "refusals_v2.json").read_text(encoding="utf-8"))
    patterns = json.loads((DATA / "refusal_patterns_v1.json").read_text(encoding="utf-8"))
    v1 = json.loads((DATA / "refusals.json").read_text(encoding="utf-8"))
    assert spec["version"] == 2
    assert set(spec["topics"]) == set(ihs.load_prompts().malicious.categories)
    assert not set(spec["topics"].values()) & set(v1["topics"].values())
    styles: dict[str, list[str]] = spec["styles"]
    assert len(styles) >= 40
    templates = [t for ts in styles.values() for t in ts]
    assert all(3 <= len(ts) <= 6 for ts in styles.values())
    assert len(set(templates)) == len(templates) and not set(templates) & set(v1["templates"])
    with_pattern = 0
    for t in templates:
        assert set(re.findall(r"{(\w*)}", t)) <= {"topic"}
        for topic in spec["topics"].values():
            text = t.format(topic=topic).lower().replace("\u2019", "'")
            assert len(re.findall(r"[.!?](?:\s|$)", text)) <= 3, text
            assert not [c for c in patterns["compliance_openers"] if c in text[:200]], text
        with_pattern += any(p in t.lower()[:200] for p in patterns["patterns"])
    assert with_pattern <= len(templates) // 20  # not written from the phrase judge's list


def test_extra_benign_v2_groups_forms_and_domains() -> None:
    rows = _jsonl(DATA / "extra_benign_v2.jsonl")
    domains = set(ihs.load_prompts().normal.categories)
    assert len({r["id"] for r in rows}) == len(rows)
    for r in rows:
        assert r["label"] == "normal" and r["source"] == "extra_benign_v2" and r["category"] in domains
        assert r["form"] in FORMS and isinstance(r["lookalike"], bool)
    terse = [r for r in rows if r["group"] == "terse"]
    near = [r for r in rows if r["group"] == "near_lookalike"]
    assert len(terse) >= 80 and len(near) >= 80 and len(terse) + len(near) == len(rows)
    assert {r["category"] for r in terse} == domains and {r["category"] for r in near} == domains
    for r in terse:
        text = str(r["text"])
        assert r["form"] == "terse" and text == text.lower() and text.split()[0] in TERSE_OPENERS
    assert sum(bool(r["lookalike"]) for r in terse) >= 20
    assert all(r["lookalike"] for r in near)
    assert all(r.get("form") in FORMS for r in _jsonl(DATA / "extra_benign.jsonl"))


def test_check_overlap_passes_the_new_prompts_and_catches_a_test_prompt(tmp_path: Path) -> None:
    check = _script("check_overlap")
    assert check.main([str(DATA / "extra_benign_v2.jsonl"), "--against", str(DATA / "extra_benign.jsonl"),
                       str(DATA / "distill_normal.jsonl")]) == 0
    test = ihs.load_prompts().test
    near = tmp_path / "near.jsonl"
    near.write_text(json.dumps({"id": "a", "text": test.normal[0].text.upper()}) + "\n", encoding="utf-8")
    assert check.main([str(near)]) == 1
    words = test.malicious[0].text.split()
    assert len(words) >= 6
    shared = tmp_path / "shared.jsonl"
    shared.write_text(json.dumps({"id": "b", "text": "Tell me about tulips, and " + " ".join(words[:6])}) + "\n",
                      encoding="utf-8")
    assert check.main([str(shared)]) == 1


def test_check_ngrams_flags_a_shared_5gram_and_passes_the_gold_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    check = _script("check_ngrams")
    refusals = str(DATA / "refusals_v2.json")
    gold = tmp_path / "gold.jsonl"
    gold.write_text(json.dumps({"reply": "Well: No. The people on the receiving end of it."}) + "\n", encoding="utf-8")
    assert check.main([refusals, str(gold)]) == 1
    assert "receiving" not in capsys.readouterr().out  # counts and ids only, never gold text
    gold.write_text(json.dumps({"reply": "Tomatoes like full sun and steady watering."}) + "\n", encoding="utf-8")
    assert check.main([refusals, str(gold)]) == 0
    sealed = [DATA / "judge_gold_sealed.jsonl", DATA / "judge_gold_design.jsonl"]
    if not all(p.exists() for p in sealed):
        pytest.skip("judge gold set not in this checkout")
    assert check.main([refusals, *map(str, sealed)]) == 0
