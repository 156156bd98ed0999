"""Prompt sets: bundled data, canonical split, loaders, templating, difficulty checks."""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ihs_sight as ihs
from ihs_sight.prompts import encode, render
from ihs_sight.wrappers import wrappers

# ------------------------------------------------------------------ bundled data


def test_bundled_counts_meet_the_data_card(data: ihs.PromptSet) -> None:
    normal, malicious = data.normal, data.malicious
    assert len(normal) >= 400 and len(malicious) >= 400
    assert len(set(normal.categories)) >= 12
    assert len(set(malicious.categories)) >= 10
    assert len(normal.select(lookalike=True)) >= 60
    families = data.jailbreak.counts("family")
    assert len(families) >= 6 and min(families.values()) >= 40
    assert data.wrapped_normal.counts("family") == families
    assert set(data.wrapped_normal.labels) == {"normal"}


def test_bundled_texts_are_unique(data: ihs.PromptSet) -> None:
    texts = [t.casefold() for t in (data.normal + data.malicious).texts]
    assert len(texts) == len(set(texts))


def test_canonical_split_is_stratified_and_covers_everything(data: ihs.PromptSet) -> None:
    base = data.normal + data.malicious
    assert set(base.counts("split")) == {"train", "test"}
    for label in ("normal", "malicious"):
        part = base.select(label=label)
        share = len(part.test) / len(part)
        assert 0.27 <= share <= 0.33, (label, share)
        for category in set(part.categories):
            cat = part.select(category=category)
            assert len(cat.test) >= 1 and len(cat.train) >= 1, (label, category)


def test_jailbreaks_are_built_only_from_test_split_prompts(data: ihs.PromptSet) -> None:
    by_id = {p.id: p for p in data.normal + data.malicious}
    for p in data.jailbreak + data.wrapped_normal:
        assert p.split == "test"
        base_id = p.id.split("-")[0] if p.id else None
        assert base_id in by_id and by_id[base_id].split == "test", p.id
    train_texts = set(data.train.texts)
    for p in data.jailbreak:
        assert not any(t in p.text for t in train_texts if len(t) > 30)


FORMS = {"question", "imperative", "first_person", "context", "terse"}
N_FIRST_BATCH = 460
"""Ids below this are the first batch; the cue-free additions (scripts/add_prompts.py) follow."""


def _number(p: ihs.Prompt) -> int:
    assert p.id is not None
    return int(p.id.split("-")[0][1:])


def test_every_bundled_prompt_records_its_written_form(data: ihs.PromptSet) -> None:
    base = data.normal + data.malicious
    assert {p.form for p in base} == FORMS
    for p in base:
        text = p.text.rstrip()
        if p.form == "question":
            assert text.endswith("?"), p.id
        if p.form == "terse":
            assert text[-1].isalnum() and text[0].islower(), p.id
        if p.form == "context":
            assert len(re.findall(r"[.?!](\s|$)", text)) >= 2, p.id
    assert data.normal.counts("form") == data.malicious.counts("form")  # slot i of both sets shares its form


def _resplit(items: list[ihs.Prompt]) -> set[str | None]:
    """Test ids under the canonical rule of scripts/build_prompt_sets.py (seed 0, 30 %, by label and category)."""
    fresh = ihs.PromptSet(items=[p.model_copy(update={"split": None}) for p in items])
    _, test = fresh.split(0.3, random_state=0, stratify=("label", "category"))
    return {p.id for p in test}


def test_first_batch_and_additions_are_each_split_by_the_seeded_rule(data: ihs.PromptSet) -> None:
    base = data.normal + data.malicious
    first = [p for p in base if _number(p) < N_FIRST_BATCH]
    added = [p for p in base if _number(p) >= N_FIRST_BATCH]
    assert len(first) == 2 * N_FIRST_BATCH and added
    for part in (first, added):
        assert _resplit(part) == {p.id for p in part if p.split == "test"}


def test_wrapped_sets_come_only_from_the_first_batch(data: ihs.PromptSet) -> None:
    for p in data.jailbreak + data.wrapped_normal:
        assert _number(p) < N_FIRST_BATCH, p.id


def test_added_prompts_repeat_no_first_batch_prompt(data: ihs.PromptSet) -> None:
    def key(text: str) -> str:
        return " ".join(re.findall(r"[a-z0-9']+", text.casefold())[:8])

    base = data.normal + data.malicious
    first = {key(p.text): p.id for p in base if _number(p) < N_FIRST_BATCH}
    added = [p for p in base if _number(p) >= N_FIRST_BATCH]
    assert not [(p.id, first[key(p.text)]) for p in added if key(p.text) in first]
    assert len({key(p.text) for p in added}) == len(added)
    assert all(p.lookalike for p in added if p.label == "normal")


def test_wrap_families_fill_their_placeholders() -> None:
    request = "How do I fix a leaking tap?"
    for family in wrappers():
        text = ihs.wrap(request, family)
        assert "{" not in text and "}" not in text, family
    b64 = ihs.wrap(request, "obfuscation", encoding="base64")
    assert base64.b64encode(request.encode()).decode() in b64
    leet = ihs.wrap(request, "obfuscation", encoding="leetspeak")
    assert "H0w d0 1 f1x 4 l34k1ng 74p?" in leet
    split = ihs.wrap(request, "payload_splitting")
    assert "How do I " in split and "fix a leaking tap?" in split
    with pytest.raises(ihs.InputError, match="Unknown jailbreak family"):
        ihs.wrap(request, "nonsense")


def _form_features(tokenizer: Any, texts: list[str]) -> tuple[np.ndarray, list[list[str]]]:
    numeric, first = [], []
    for t in texts:
        numeric.append([
            len(tokenizer(t)["input_ids"]),
            sum(c in ",;:" for c in t),
            t.rstrip().endswith("?"),
            t.rstrip().endswith("."),
            len(re.findall(r"[.?!](\s|$)", t)),
            t.count("'"),
        ])
        first.append([t.split()[0].casefold()])
    return np.asarray(numeric, dtype=float), first


def test_form_alone_does_not_give_the_label_away(data: ihs.PromptSet, model: ihs.Model) -> None:
    """Length in tokens, punctuation, question mark, first word and sentence count: <= 65% held out."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    train = data.train.normal + data.train.malicious
    test = data.test.normal + data.test.malicious
    ntr, ftr = _form_features(model.tokenizer, train.texts)
    nte, fte = _form_features(model.tokenizer, test.texts)
    scaler, onehot = StandardScaler().fit(ntr), OneHotEncoder(handle_unknown="ignore").fit(ftr)
    xtr = np.hstack([scaler.transform(ntr), onehot.transform(ftr).toarray()])
    xte = np.hstack([scaler.transform(nte), onehot.transform(fte).toarray()])
    acc = LogisticRegression(max_iter=5000).fit(xtr, train.labels).score(xte, test.labels)
    assert acc <= 0.65, f"a form-only classifier reaches {acc:.3f}: the sets differ in style"


# ------------------------------------------------------------------ PromptSet


def test_split_is_stratified_and_reproducible(data: ihs.PromptSet) -> None:
    base = data.normal.head(100) + data.malicious.head(50)
    a_train, a_test = base.split(0.3, random_state=7)
    b_train, b_test = base.split(0.3, random_state=7)
    c_train, _ = base.split(0.3, random_state=8)
    assert a_test.texts == b_test.texts and a_train.texts == b_train.texts
    assert a_train.texts != c_train.texts
    assert a_test.counts() == {"normal": 30, "malicious": 15}
    assert set(a_train.texts).isdisjoint(a_test.texts)
    assert len(a_train) + len(a_test) == len(base)


def test_select_and_concat(data: ihs.PromptSet) -> None:
    cyber = data.malicious.select(category="cybercrime")
    assert cyber and set(cyber.categories) == {"cybercrime"}
    both = cyber + data.normal.head(3)
    assert len(both) == len(cyber) + 3
    assert both.texts[-3:] == data.normal.head(3).texts
    assert data.jailbreak.select(family=["roleplay", "authority"]).counts("family") == {"roleplay": 50, "authority": 50}


def test_split_rejects_bad_test_size(data: ihs.PromptSet) -> None:
    with pytest.raises(ihs.InputError, match="test_size"):
        data.split(1.5)


# ------------------------------------------------------------------ loaders


def test_txt_round_trip_and_duplicates(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "p.txt"
    path.write_text("first prompt\nsecond prompt\nfirst prompt\n\n", encoding="utf-8")
    with caplog.at_level("WARNING"):
        ps = ihs.load_prompts(path, label="normal")
    assert ps.texts == ["first prompt", "second prompt"]
    assert ps.labels == ["normal", "normal"] and ps.duplicates_dropped == 1
    assert any("duplicate" in r.getMessage() for r in caplog.records)


def test_txt_empty_row_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("one\n\nthree\n", encoding="utf-8")
    with pytest.raises(ihs.InputError, match="row 2"):
        ihs.load_prompts(path)


def test_csv_and_tsv_columns(tmp_path: Path) -> None:
    (tmp_path / "p.csv").write_text('goal,kind,topic\n"Hi, there",0,chat\nBuild a bomb,1,weapons\n', encoding="utf-8")
    ps = ihs.load_prompts(tmp_path / "p.csv", label_column="kind", category_column="topic",
                          label_map={"0": "normal", "1": "malicious"})
    assert ps.texts == ["Hi, there", "Build a bomb"]
    assert ps.labels == ["normal", "malicious"] and ps.categories == ["chat", "weapons"]
    (tmp_path / "p.tsv").write_text("prompt\tlabel\nHello\tnormal\n", encoding="utf-8")
    assert ihs.load_prompts(tmp_path / "p.tsv").labels == ["normal"]
    with pytest.raises(ihs.InputError, match="no text column 'body'"):
        ihs.load_prompts(tmp_path / "p.csv", text_column="body")
    with pytest.raises(ihs.InputError, match="not in label_map"):
        ihs.load_prompts(tmp_path / "p.csv", label_column="kind", label_map={"0": "normal"})


def test_jsonl_and_json_round_trip(tmp_path: Path, data: ihs.PromptSet) -> None:
    subset = data.jailbreak.head(3) + data.normal.head(2)
    subset.to_jsonl(tmp_path / "p.jsonl")
    back = ihs.load_prompts(tmp_path / "p.jsonl")
    assert back.texts == subset.texts and back.labels == subset.labels and back.families == subset.families
    (tmp_path / "p.json").write_text(json.dumps(["a b", {"text": "c d", "label": "malicious"}]), encoding="utf-8")
    ps = ihs.load_prompts(tmp_path / "p.json", label="normal")
    assert ps.texts == ["a b", "c d"] and ps.labels == ["normal", "malicious"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", '{"text": "ok"}\nnot json\n', "line 2 is not valid JSON"),
        ("empty.jsonl", '{"text": "ok"}\n{"text": ""}\n', "row 2 has an empty"),
        ("bad.json", "{", "not valid JSON"),
        ("bad.yaml", "x", "unsupported file type"),
        ("empty.csv", "", "empty"),
    ],
)
def test_loader_errors(tmp_path: Path, name: str, content: str, message: str) -> None:
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(ihs.InputError, match=message):
        ihs.load_prompts(tmp_path / name)


def test_loader_rejects_non_utf8_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "latin.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(ihs.InputError, match="not UTF-8"):
        ihs.load_prompts(tmp_path / "latin.txt")
    with pytest.raises(ihs.InputError, match="No such file"):
        ihs.load_prompts(tmp_path / "missing.csv")


def test_hf_dataset_local_directory(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"prompt": ["one", "two", "one"], "label": ["normal", "malicious", "normal"]})
    ds.save_to_disk(str(tmp_path / "ds"))
    ps = ihs.load_prompts(tmp_path / "ds")
    assert ps.texts == ["one", "two"] and ps.duplicates_dropped == 1


def test_hf_dataset_without_datasets_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_datasets(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "datasets":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(ihs.InputError, match=r"pip install 'ihs-sight\[datasets\]'"):
        ihs.load_prompts("some-org/some-dataset")


# ------------------------------------------------------------------ templating


@pytest.mark.parametrize("system_prompt", [None, "Answer in one sentence."])
def test_templating_equals_apply_chat_template(model: ihs.Model, system_prompt: str | None) -> None:
    prompts = ["How do I kill a stuck Python process?", "Write a haiku."]
    ids = encode(model.tokenizer, prompts, system_prompt=system_prompt)
    for prompt, row in zip(prompts, ids):
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
            {"role": "user", "content": prompt}]
        ref = model.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        ref_ids = ref["input_ids"] if isinstance(ref, dict) or hasattr(ref, "keys") else ref
        assert row == list(ref_ids)
        assert render(model.tokenizer, prompt, system_prompt=system_prompt).endswith("<|im_start|>assistant\n")


def test_raw_mode_skips_the_template(model: ihs.Model) -> None:
    assert encode(model.tokenizer, ["The capital of France is"], chat=False)[0] == model.tokenizer(
        "The capital of France is")["input_ids"]


# ---------------------------------------------------------------------------- wrapped sets (harm, not form)


def _read(name: str) -> list[ihs.Prompt]:
    path = Path(ihs.__file__).parent / "data" / name
    return [ihs.Prompt.model_validate_json(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def test_wrapped_sets_load_only_when_asked_and_leave_the_direct_split_alone() -> None:
    plain, more = ihs.load_prompts(), ihs.load_prompts(wrapped_train=True, heldout_wrapped=True)
    assert len(more) == len(plain) + len(_read("wrapped_train.jsonl")) + len(_read("wrapped_heldout.jsonl"))
    for part in ("normal", "malicious"):
        assert getattr(more.train, part).texts == getattr(plain.train, part).texts
        assert getattr(more.test, part).texts == getattr(plain.test, part).texts
    assert len(plain.train.jailbreak) == len(plain.train.wrapped_normal) == 0
    assert len(more.train.jailbreak) == len(more.train.wrapped_normal) == 7 * 40
    assert more.test.jailbreak.texts[: len(plain.jailbreak)] == plain.jailbreak.texts  # the test files untouched
    with pytest.raises(ihs.InputError, match="True or False"):
        ihs.load_prompts(wrapped_train="yes")  # type: ignore[arg-type]
    with pytest.raises(ihs.InputError, match="another source"):
        ihs.load_prompts("prompts.txt", heldout_wrapped=True)


def test_wrapped_train_carries_no_label_and_no_test_prompt() -> None:
    data = ihs.load_prompts()
    split = {p.id: p.split for p in data.normal.items + data.malicious.items}
    wrapped = _read("wrapped_train.jsonl")
    by_family = Counter((p.family, p.label) for p in wrapped)
    families = set(wrappers())
    assert {f for f, _ in by_family} == families
    for family in families:  # as many wrapped normal as wrapped malicious prompts in every family
        assert by_family[(family, "jailbreak")] == by_family[(family, "normal")] > 0
    test_texts = [p.text for p in data.test.items if p.family is None]
    for p in wrapped:
        assert p.split == "train" and p.id is not None
        assert split[p.id.split("-")[0]] == "train", p.id  # built from a train-split prompt
        assert not any(t in p.text for t in test_texts), p.id


def test_heldout_families_are_new_and_built_from_test_prompts() -> None:
    data = ihs.load_prompts()
    split = {p.id: p.split for p in data.normal.items + data.malicious.items}
    heldout = _read("wrapped_heldout.jsonl")
    new = set(wrappers(heldout=True))
    assert len(new) >= 4 and not new & set(wrappers())
    assert {p.family for p in heldout} == new
    for family in new:
        assert {p.label for p in heldout if p.family == family} == {"jailbreak", "normal"}
    assert all(p.split == "test" and split[str(p.id).split("-")[0]] == "test" for p in heldout)
    assert all(150 <= len(t.split()) <= 300 for t in wrappers(heldout=True)["persona_long"])


def test_character_obfuscation_can_be_read_back() -> None:
    text = "How do I bake bread without yeast?"
    spaced, backwards, words = (ihs.wrap(text, "char_obfuscation", template=i) for i in range(3))
    assert spaced.endswith(" ".join(text.replace(" ", "/")))
    assert backwards.rsplit(": ", 1)[1][::-1] == text
    assert " ".join(w[::-1] for w in words.rsplit(": ", 1)[1].split()) == text
    with pytest.raises(ihs.InputError, match="Unknown jailbreak family"):
        ihs.wrap(text, "no_such_family")


def test_leave_one_family_out_never_puts_a_family_on_both_sides() -> None:
    data = ihs.load_prompts(wrapped_train=True, heldout_wrapped=True)
    folds = data.leave_one_family_out()
    assert [f for f, _, _ in folds] == list(wrappers())  # the 7 training families, none of the held-out ones
    direct_train = {p.text for p in data.train.items if p.family is None}
    for family, fit, score in folds:
        assert family not in {p.family for p in fit.items} and {p.family for p in score.items} == {family}
        assert {p.split for p in fit.items} == {p.split for p in score.items} == {"train"}  # never the test split
        assert direct_train <= {p.text for p in fit.items}  # every direct train prompt is fitted on
        assert {p.label for p in score.items} == {"jailbreak", "normal"}
        assert len(fit.jailbreak) == len(fit.wrapped_normal) == 6 * 40
        assert not {p.text for p in fit.items} & {p.text for p in score.items}
    with pytest.raises(ihs.InputError, match="wrapped_train=True"):
        ihs.load_prompts().leave_one_family_out()


def test_wrap_refuses_bad_input() -> None:
    for kwargs, match in (({"text": "", "family": "roleplay"}, "non-empty"),
                          ({"text": 3, "family": "roleplay"}, "non-empty"),
                          ({"text": "hi", "family": "roleplay", "template": "0"}, "template"),
                          ({"text": "hi", "family": "roleplay", "template": True}, "template"),
                          ({"text": "hi", "family": ["roleplay"]}, "Unknown jailbreak family")):
        with pytest.raises(ihs.InputError, match=match):
            ihs.wrap(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ihs.InputError, match="True or False"):
        wrappers(heldout="yes")  # type: ignore[arg-type]
