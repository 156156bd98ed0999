"""The refusal-tuned variant ``default-aligned`` (v1, also ``default-aligned@v1``) and the retrained
candidate ``default-aligned@v2``: each loads offline, differs from the default model exactly by its
shipped LoRA adapter, and refuses harmful requests but not benign ones.

The merged weights are checked against the adapter file read directly with safetensors
(``W + alpha/r * B @ A``, plain torch), not against peft's own merge.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import ihs_sight as ihs
from ihs_sight.judge import PhraseJudge
from ihs_sight.models import ALIGNED_VERSIONS, aligned_adapter_dir
from ihs_sight.prompts import encode

MAX_ADAPTER_BYTES = 10 * 1024 * 1024
ROOT = Path(__file__).resolve().parents[1]

# The adapter is produced by scripts/train_aligned.py and shipped in ihs_sight/assets; an
# installation without it skips these tests.
pytestmark = pytest.mark.skipif(
    not (aligned_adapter_dir() / "adapter_model.safetensors").is_file(),
    reason="default-aligned adapter not shipped yet (run scripts/train_aligned.py)",
)

# Held-out test-split prompts (ids in ihs_sight/data): in docs/aligned_eval.json the aligned model
# refuses the malicious two ("I'm sorry, but I can't help with ...") where the base model complies,
# and answers the normal two as the base model does.
TEST_MALICIOUS = ("m0018", "m0022")
TEST_NORMAL = ("n0003", "n0026")


@pytest.fixture(scope="module")
def aligned() -> ihs.Model:
    return ihs.load_model("default-aligned")


@pytest.fixture(scope="module")
def aligned_v2() -> ihs.Model:
    return ihs.load_model("default-aligned@v2")


def _greedy(model: ihs.Model, texts: list[str], max_new_tokens: int = 16) -> list[str]:
    """Plain transformers greedy decoding, one prompt at a time (no padding involved)."""
    tok = model.tokenizer
    out = []
    with torch.no_grad():
        for ids in encode(tok, texts):
            x = torch.tensor([ids])
            gen = model.hf.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                                    do_sample=False, pad_token_id=tok.pad_token_id)
            out.append(tok.decode(gen[0, len(ids):], skip_special_tokens=True))
    return out


def test_aligned_loads_offline_with_base_module_paths(aligned: ihs.Model, model: ihs.Model) -> None:
    assert aligned.name == "default-aligned"
    assert type(aligned.hf).__name__ == "LlamaForCausalLM"  # merged: no peft wrapper left
    assert aligned.arch == model.arch
    assert (aligned.n_layers, aligned.d_model) == (model.n_layers, model.d_model)
    assert not any("lora" in name for name, _ in aligned.hf.named_parameters())


@pytest.mark.parametrize("name", ["default-aligned", "default-aligned@v2"])
def test_aligned_adapter_file_is_small(name: str) -> None:
    path = aligned_adapter_dir(name) / "adapter_model.safetensors"
    assert path.is_file()
    assert path.stat().st_size <= MAX_ADAPTER_BYTES


def test_aligned_names_map_to_versions() -> None:
    assert aligned_adapter_dir("default-aligned") == aligned_adapter_dir("default-aligned@v1")
    assert aligned_adapter_dir("default-aligned@v2") != aligned_adapter_dir("default-aligned")
    v1 = json.loads((aligned_adapter_dir("default-aligned@v1") / "train_meta.json").read_text(encoding="utf-8"))
    v2 = json.loads((aligned_adapter_dir("default-aligned@v2") / "train_meta.json").read_text(encoding="utf-8"))
    assert "refusals.json_sha256_16" in v1["data"]
    assert v2["version"] == 2 and "refusals_v2.json_sha256_16" in v2["data"]
    with pytest.raises(ihs.InputError, match="default-aligned@v2"):
        aligned_adapter_dir("default-aligned@v9")


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_aligned_weights_equal_base_plus_lora_delta(version: str, request: pytest.FixtureRequest,
                                                    model: ihs.Model) -> None:
    name = "default-aligned" if version == "v1" else "default-aligned@v2"
    aligned = request.getfixturevalue("aligned" if version == "v1" else "aligned_v2")
    assert aligned.name == name
    assert_base_plus_lora(model.hf, aligned.hf, aligned_adapter_dir(name))


def assert_base_plus_lora(base_hf: torch.nn.Module, tuned_hf: torch.nn.Module, adapter: Path) -> None:
    """Every weight of ``tuned_hf`` is the base weight plus the adapter file's ``alpha/r * B @ A``, or unchanged."""
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    scale = config["lora_alpha"] / config["r"]
    lora = load_file(str(adapter / "adapter_model.safetensors"))
    base = base_hf.state_dict()
    tuned = tuned_hf.state_dict()
    assert base.keys() == tuned.keys()
    changed = set()
    for key in [k for k in lora if "lora_A" in k]:
        # "base_model.model.model.layers.12.self_attn.q_proj.lora_A.weight" -> "model.layers.12.self_attn.q_proj.weight"
        target = key.removeprefix("base_model.model.").replace(".lora_A", "")
        a, b = lora[key].float(), lora[key.replace("lora_A", "lora_B")].float()
        expected = base[target] + scale * (b @ a)
        torch.testing.assert_close(tuned[target], expected, rtol=1e-5, atol=1e-6)
        changed.add(target)
    assert changed, "the adapter holds no LoRA matrices"
    for key in base.keys() - changed:
        assert torch.equal(base[key], tuned[key]), f"{key} changed but the adapter does not touch it"
    assert any(not torch.equal(base[k], tuned[k]) for k in changed)


def test_aligned_weights_hash_differs(aligned: ihs.Model, aligned_v2: ihs.Model, model: ihs.Model) -> None:
    assert len({aligned.weights_hash, aligned_v2.weights_hash, model.weights_hash}) == 3


def test_aligned_refuses_held_out_malicious_but_not_normal(aligned: ihs.Model, data: ihs.PromptSet) -> None:
    by_id = {p.id: p for p in data.test}
    malicious = [by_id[i] for i in TEST_MALICIOUS]
    normal = [by_id[i] for i in TEST_NORMAL]
    assert all(p.label == "malicious" and p.split == "test" for p in malicious)
    assert all(p.label == "normal" and p.split == "test" for p in normal)
    replies = _greedy(aligned, [p.text for p in malicious + normal])
    judge = PhraseJudge()
    verdicts = [judge(r) for r in replies]
    assert verdicts == [True, True, False, False], list(zip([p.text for p in malicious + normal], replies))


def test_base_model_complies_where_aligned_refuses(model: ihs.Model, data: ihs.PromptSet) -> None:
    by_id = {p.id: p for p in data.test}
    replies = _greedy(model, [by_id[i].text for i in TEST_MALICIOUS])
    assert [PhraseJudge()(r) for r in replies] == [False, False], replies


@pytest.mark.parametrize("name", ["default", "default-aligned", "default-aligned@v2"])
def test_committed_evaluation_replies_reproduce_and_the_judge_reads_them_as_recorded(
    name: str, request: pytest.FixtureRequest, model: ihs.Model
) -> None:
    """docs/aligned_eval.json: the first replies (lowest id, one malicious and one normal prompt) start
    with what plain transformers greedy decoding gives now, and the recorded judge's verdict on each
    committed reply is the recorded one."""
    evaluation = json.loads((ROOT / "docs" / "aligned_eval.json").read_text(encoding="utf-8"))
    entry = evaluation["models"][name]
    m = {"default": model}.get(name) or request.getfixturevalue("aligned" if name == "default-aligned" else "aligned_v2")
    assert entry["weights_hash"] == m.weights_hash
    sample = [min((r for r in entry["replies"] if r["label"] == label), key=lambda r: r["id"])
              for label in ("malicious", "normal")]
    fresh = _greedy(m, [r["prompt"] for r in sample], max_new_tokens=8)
    for rec, start in zip(sample, fresh):
        assert rec["reply"].startswith(start.strip()), (rec["id"], rec["reply"], start)
    # The judge the evaluation records (v1; the default moved on to v2), reloaded by its version.
    judge = ihs.shipped_judge(entry["judge"].removeprefix("ReplyJudge(").split(",")[0])
    assert entry["judge"] == judge.name
    verdicts = judge.many([r["reply"] for r in sample], [r["prompt"] for r in sample])
    assert [bool(v) for v in verdicts] == [r["refusal"] for r in sample]


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_judge_rereading_matches_the_shipped_judge(version: str) -> None:
    """docs/aligned_rejudged_<version>.json: for a sample of replies from the base model and both aligned
    versions (the first two whose verdict the judge changed, and the first it kept), the shipped judge of
    that version, run now on the committed reply and prompt, gives the recorded verdict."""
    evaluation = json.loads((ROOT / "docs" / "aligned_eval.json").read_text(encoding="utf-8"))
    result = json.loads((ROOT / "docs" / f"aligned_rejudged_{version}.json").read_text(encoding="utf-8"))
    judge = ihs.shipped_judge(version)
    assert result["judges"]["new"] == judge.name
    replies, prompts, want = [], [], []
    for name in ("default", "default-aligned", "default-aligned@v2"):
        changed = {c["id"]: c for c in result["models"][name]["changed"]}
        by_id = {r["id"]: r for r in evaluation["models"][name]["replies"]}
        kept = min(i for i in by_id if i not in changed)
        for i in [*sorted(changed)[:2], kept]:
            replies.append(by_id[i]["reply"])
            prompts.append(by_id[i]["prompt"])
            want.append(changed[i]["new"] if i in changed else bool(by_id[i]["refusal"]))
    assert len(want) >= 7
    assert judge.many(replies, prompts) == want


def test_v3_candidates_recorded_verdicts_are_judge_v2s() -> None:
    """docs/aligned_validation_v3.json: judge v2, run now on a sample of the candidate's committed replies
    (the first two to malicious and to normal prompts), gives the recorded verdicts; nothing of v3 ships."""
    doc = json.loads((ROOT / "docs" / "aligned_validation_v3.json").read_text(encoding="utf-8"))
    judge = ihs.shipped_judge("v2")
    assert doc["judge"] == judge.name
    replies = doc["candidates"]["v3"]["replies"]
    sample = [r for label in ("malicious", "normal")
              for r in sorted((r for r in replies if r["label"] == label), key=lambda r: r["id"])[:2]]
    assert judge.many([r["reply"] for r in sample], [r["prompt"] for r in sample]) == [r["refusal"] for r in sample]
    assert "default-aligned@v3" not in ALIGNED_VERSIONS
