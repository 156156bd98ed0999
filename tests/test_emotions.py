"""Emotion lexicons: matching on real SmolLM2 tokens; masses and induction against plain transformers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

import ihs_sight as ihs
from ihs_sight.emotions import (
    CATEGORIES,
    Lexicon,
    induce_lexicon,
    load_lexicon,
    match_token,
    normalize_token,
)
from ihs_sight.lens import logit_lens
from ihs_sight.prompts import encode

MASS_TOL = 1e-5
"""Max abs difference of a category's probability mass against a plain-transformers lens."""


@pytest.fixture(scope="module")
def lexicon() -> Lexicon:
    return load_lexicon("v1")


@pytest.fixture(scope="module")
def ids(model: ihs.Model, lexicon: Lexicon) -> dict[str, set[int]]:
    return {cat: set(v) for cat, v in lexicon.token_ids(model.tokenizer).items()}


def _pieces(model: ihs.Model, text: str) -> list[int]:
    return list(model.tokenizer.encode(text, add_special_tokens=False))


def _plain_lens_probs(model: ihs.Model, texts: list[str], layers: list[int]) -> torch.Tensor:
    """(n_prompts, n_layers, V) softmax(lm_head(norm(h))) of the last token; plain transformers, unpadded."""
    hf, n_layers = model.hf, model.n_layers
    out = []
    with torch.no_grad():
        for row in encode(model.tokenizer, texts, chat=True):
            hs = hf(torch.tensor([row]), output_hidden_states=True).hidden_states
            per_layer = []
            for layer in layers:
                h = hs[layer][0, -1]
                per_layer.append(hf.lm_head(h if layer == n_layers else hf.model.norm(h)).float().softmax(-1))
            out.append(torch.stack(per_layer))
    return torch.stack(out)


def test_match_token_counts_sorry_and_its_first_piece_on_default_tokenizer(
    model: ihs.Model, lexicon: Lexicon
) -> None:
    tok = model.tokenizer
    negative = set(lexicon.negative)
    space_sorry = tok.convert_ids_to_tokens(_pieces(model, " Sorry"))
    bare_sorry = tok.convert_ids_to_tokens(_pieces(model, "sorry"))
    assert space_sorry == ["ĠSor", "ry"] and bare_sorry == ["sor", "ry"], "the default tokenizer changed"
    assert match_token("ĠSor", negative) and match_token("sor", negative)
    assert not match_token("ry", negative)
    whole = tok.convert_ids_to_tokens(_pieces(model, " sorry"))
    assert whole == ["Ġsorry"] and match_token(whole[0], negative)
    assert (
        match_token("Sorry", negative)
        and match_token("▁Sorry", negative)
        and match_token("##sorry", negative)
    )
    # First piece of a word split in three: " apologise" -> " apolog" + "ise".
    assert tok.convert_ids_to_tokens(_pieces(model, " apologise"))[0] == "Ġapolog"
    assert match_token("Ġapolog", negative) and not match_token("ise", negative)
    assert normalize_token("ĠSor") == "sor" and normalize_token(" Can’t") == "can't"


def test_match_token_rejects_short_pieces_and_contraction_stems(lexicon: Lexicon) -> None:
    negative = set(lexicon.negative)
    assert not match_token("Ġso", negative)  # a prefix of "sorry" but under 3 characters
    # Pieces of a contraction do not count for it; the whole contraction does.
    assert (
        not match_token("Ġcan", {"can't"})
        and not match_token("'t", {"can't"})
        and not match_token("Ġwon", {"won't"})
    )
    assert match_token("Ġcan't", negative) and match_token("Can’t", negative)
    # As a string, "can" is a 3-letter prefix of "cannot"; token_ids() still leaves it out because
    # the tokenizer never starts "cannot" with "can" (test_token_ids_skip_contraction_pieces...).
    assert match_token("Ġcan", negative)
    assert match_token("Ġcannot", negative)
    assert not match_token("", negative) and not match_token("Ġ", negative)


def test_token_ids_hold_every_form_of_sorry(model: ihs.Model, ids: dict[str, set[int]]) -> None:
    for form in (" Sorry", "Sorry", " sorry", "sorry"):
        first = _pieces(model, form)[0]
        assert first in ids["negative"], (
            f"first piece {model.tokenizer.decode([first])!r} of {form!r} is not negative"
        )
    assert _pieces(model, " Sorry")[1] not in ids["negative"]  # "ry"
    for form in (" Sure", "Sure", " sure", " Certainly", "Absolutely", " glad"):
        assert _pieces(model, form)[0] in ids["positive"], f"{form!r} is not positive"
    for form in (" cannot", " Unfortunately", " unable", " apologize"):
        assert _pieces(model, form)[0] in ids["negative"], f"{form!r} is not negative"


def test_token_ids_skip_contraction_pieces_and_unproduced_prefixes(
    model: ihs.Model, ids: dict[str, set[int]]
) -> None:
    can, apostrophe_t = _pieces(model, " can't")
    assert can not in ids["negative"] and apostrophe_t not in ids["negative"]
    # " her" is a 3-letter prefix of "here", but the tokenizer writes " here" as one token, so
    # " her" is never the first piece of "here" and must not count as positive.
    assert len(_pieces(model, " here")) == 1 and _pieces(model, " here")[0] in ids["positive"]
    assert _pieces(model, " her")[0] not in ids["positive"]
    assert _pieces(model, " for")[0] not in ids["negative"]


def test_token_ids_are_disjoint_without_special_tokens(model: ihs.Model, ids: dict[str, set[int]]) -> None:
    special = set(model.tokenizer.all_special_ids)
    for cat in CATEGORIES:
        assert ids[cat] and not ids[cat] & special
    assert not ids["positive"] & ids["negative"]
    assert not (ids["positive"] | ids["negative"]) & ids["neutral"]


def test_lexicon_validates_its_words() -> None:
    with pytest.raises(ValidationError, match="both"):
        Lexicon(version="x", positive=["Sure"], negative=["sure"], neutral=[])
    with pytest.raises(ValidationError, match="empty"):
        Lexicon(version="x", positive=[" "], negative=[], neutral=[])
    lex = Lexicon(version="x", positive=["  Glad", "glad"], negative=["Can’t"], neutral=[])
    assert lex.positive == ["glad"] and lex.negative == ["can't"]
    with pytest.raises(ihs.InputError, match="v1"):
        load_lexicon("v99")
    v1 = load_lexicon()
    assert {"sorry", "cannot", "unfortunately"} <= set(v1.negative) and {"sure", "certainly", "glad"} <= set(
        v1.positive
    )
    assert "of" not in v1.positive  # pruned: one of the most frequent tokens
    assert Lexicon.model_validate_json(v1.model_dump_json()) == v1


def test_emotion_mass_and_counts_match_plain_transformers(
    model: ihs.Model, data: ihs.PromptSet, ids: dict[str, set[int]]
) -> None:
    prompts = data.malicious.head(1) + data.normal.head(1)
    layers = [0, 15, 22, model.n_layers]
    lens = logit_lens(model, prompts, top_k=10, layers=layers, progress=False)
    probs = _plain_lens_probs(model, prompts.texts, layers)
    for c, cat in enumerate(lens.categories):
        index = torch.tensor(sorted(ids[cat]))
        mass = probs[:, :, index].sum(-1)
        drift = (mass - lens.emotion_mass[:, :, c]).abs().max().item()
        assert drift <= MASS_TOL, f"{cat} mass drifts {drift:.2e} from plain transformers"
        counts = torch.tensor(
            [[sum(int(i) in ids[cat] for i in row) for row in p] for p in lens.token_ids.tolist()]
        )
        assert torch.equal(counts, lens.emotion_counts[:, :, c]), f"{cat} top-k counts differ"
    profile = lens.emotions("mixed")
    assert profile.layers == layers
    assert profile.mass["negative"] == pytest.approx(lens.emotion_mass[:, :, 1].double().mean(0).tolist())
    assert profile.topk_share["neutral"] == pytest.approx(
        (lens.emotion_counts[:, :, 2].double().mean(0) / 10).tolist()
    )
    top1_positive = [
        sum(row[j][0] in ids["positive"] for row in lens.token_ids.tolist()) / 2 for j in range(4)
    ]
    assert profile.top1_share["positive"] == pytest.approx(top1_positive)
    assert profile.band_mean((15, 22))["neutral"] == pytest.approx(sum(profile.mass["neutral"][1:3]) / 2)


def test_induce_lexicon_matches_manual_mean_difference(
    model: ihs.Model, data: ihs.PromptSet, output_dir: Path
) -> None:
    set_a, set_b = data.malicious.head(2), data.normal.head(2)
    band = (20, 22)
    induced = induce_lexicon(model, set_a, set_b, layers=band, top=8, progress=False)
    layers = list(range(band[0], band[1] + 1))
    mean_a = _plain_lens_probs(model, set_a.texts, layers).double().mean((0, 1))
    mean_b = _plain_lens_probs(model, set_b.texts, layers).double().mean((0, 1))
    diff = mean_a - mean_b
    diff[model.tokenizer.all_special_ids] = 0.0
    assert [t.token_id for t in induced.a] == diff.topk(8).indices.tolist()
    assert [t.token_id for t in induced.b] == (-diff).topk(8).indices.tolist()
    for t in induced.a + induced.b:
        assert t.score == pytest.approx(float(diff[t.token_id]), abs=MASS_TOL)
        assert t.mean_a == pytest.approx(float(mean_a[t.token_id]), abs=MASS_TOL)
        assert t.token == model.tokenizer.decode([t.token_id])
    assert induced.a[0].score > 0 > induced.b[0].score
    lex = induced.to_lexicon(a="negative", b="positive")
    assert set(lex.negative) <= set(induced.words("a")) and lex.neutral == []
    fig = induced.plot(n=8, names=("malicious", "normal"))
    fig.savefig(output_dir / "lens_induced.png", dpi=80)
    with pytest.raises(ihs.InputError, match="(?i)band"):
        induce_lexicon(model, set_a, set_b, layers=(5, 99), progress=False)
    with pytest.raises(ihs.InputError, match="set_b"):
        induce_lexicon(model, set_a, [], progress=False)


def test_induced_plot_draws_dollar_tokens_as_text(tmp_path: Path) -> None:
    # Token labels such as Gemma's "$$\\" must not be parsed as mathtext (it raised on drawing).
    from ihs_sight.emotions import InducedLexicon, InducedToken

    def tok(i: int, text: str, score: float) -> InducedToken:
        return InducedToken(token_id=i, token=text, score=score, mean_a=max(score, 0.0), mean_b=max(-score, 0.0))

    lexicon = InducedLexicon(band=(1, 2), n_a=3, n_b=3, a=[tok(1, "$$\\", 0.2), tok(2, " $x", 0.1)],
                             b=[tok(3, "a$b$", -0.3)], model_name="hand-made", weights_hash="0")
    path = tmp_path / "induced.png"
    lexicon.plot(n=2).savefig(path, dpi=50)
    assert path.stat().st_size > 2_000
