"""Emotion lexicons, tokenizer-aware token matching, per-layer emotion scores, lexicon induction.

Mental model:
1. A :class:`Lexicon` is three word lists, ``positive``, ``negative`` and ``neutral``, written
   for this project and versioned (``ihs_sight/data/emotions_v<N>.json``). The negative list
   holds refusal openers (sorry, cannot, unfortunately, apologize, ...) and the positive list
   affirmative openers (sure, certainly, absolutely, glad, here, ...), so grafting reuses them.
2. Words become token ids once per tokenizer (:meth:`Lexicon.token_ids`, cached). The logit
   lens then sums the probability of each category's ids over the full vocabulary inside the
   trace, and counts how many of each prompt's top-k tokens fall in each category.
3. :func:`induce_lexicon` goes the other way: it finds the tokens whose mean lens probability
   over a layer band differs most between two prompt sets, a data-driven candidate lexicon.

Matching rule (:func:`match_token`). A token's string is normalised: leading/trailing
whitespace, the leading-space markers ``Ġ`` and ``▁`` and the sub-word marker ``##`` are
stripped, the curly apostrophe becomes ``'``, and the result is case-folded. It matches a word
list when it **equals** a word, or when it is at least :data:`MIN_PIECE` (3) characters long and
a **prefix** of a word — so ``" Sor"``, the first piece of ``" Sorry"`` on SmolLM2's tokenizer,
counts as negative, while ``"ry"`` (too short, and not a prefix) does not.
:meth:`Lexicon.token_ids` applies the rule in two ways: every vocabulary entry equal to a word
counts, but a prefix counts only when it is the **first piece the tokenizer actually produces**
for the word (in any of the forms ``word``, `` word``, ``Word``, `` Word``). Without that
restriction ``" her"`` would count as "here" and ``" con"`` as both "concerned" and "confident".

Contractions (words with an apostrophe, e.g. ``can't``) match only as a whole token
(``can't`` / ``can’t``, any case, with or without a leading space). Byte-level and SentencePiece
tokenizers split them into ``can`` + ``'t``; ``can``, ``won`` and ``don`` are ordinary words of
their own (``" can"`` opens "I can help"), and ``'t`` is two characters, so neither piece
counts. Refusals are still caught through ``cannot``, ``unable``, ``sorry``, ``unfortunately``.

Categories are disjoint: a token equal to a word of one category is not also counted in another
through a prefix, and a token that is only a first piece of words in two categories is dropped.

Lexicon v1 (``emotions_v1.json``): 57 positive, 62 negative and 49 neutral words; on SmolLM2's
tokenizer they resolve to 146, 130 and 202 token ids. Pruned from the first draft because on
the default tokenizer they measured something other than an emotion: ``of`` (meant for "Of
course"; one of the most frequent tokens), ``right`` ("right now"), ``kind`` ("kind of"),
``warm``, ``cool``, ``sweet`` (cooking and weather prompts); and words whose first piece is a
common unrelated token that carried measurable lens mass on the bundled prompts: ``outstanding``
(``out``), ``definitely`` (``def``), ``delighted`` (``del``), ``perfect`` (``Per``),
``appreciate`` (``App``), ``marvelous`` (``Mar``), ``cheerful`` (``Che``), ``forbidden``
(``for``), ``prohibited`` (``pro``), ``offensive`` (``off``), ``restricted`` (``rest``),
``disallowed`` / ``disappointed`` (``Dis``), ``impossible`` (``Imp``), ``reluctant`` (``Rel``),
``angry`` (`` Ang``), ``unsafe`` (``uns``), ``malicious`` (``Mal``). Core refusal and
affirmative words stay even where a piece is ambiguous (``refuse`` -> ``Ref``, ``regret`` ->
``Reg``, ``absolutely`` -> ``Absol``). ``I`` is neutral, as in the paper's code: it opens
refusals and answers alike. Version 1 is frozen: a change to the lists is a new version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel, ConfigDict, field_validator, model_validator
from tqdm.auto import tqdm

from . import checks
from .errors import InputError
from .layers import band_layers, check_band, middle_band
from .prompts import encode_prompts
from .runtime import traces
from .runtime.batches import Batch, run_batches

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .lens import LensResult
    from .models import Model

log = logging.getLogger(__name__)

CATEGORIES: tuple[str, ...] = ("positive", "negative", "neutral")
"""The emotion categories, in the order every per-category tensor uses."""

MIN_PIECE = 3
"""Shortest token (after normalisation) that may count as the first piece of a longer word."""

_LEADING_MARKERS = ("Ġ", "▁", "##")
_DATA = Path(__file__).resolve().parent / "data"


def normalize_token(token_str: str) -> str:
    """A token's string as the matching rule sees it: markers and spaces stripped, case-folded.

    Strips surrounding whitespace, the leading-space markers ``Ġ`` (byte-level BPE) and ``▁``
    (SentencePiece) and the sub-word marker ``##`` (WordPiece), maps ``’`` to ``'`` and case-folds.

    Examples:
        >>> normalize_token("ĠSor"), normalize_token(" Sorry"), normalize_token("##ry")
        ('sor', 'sorry', 'ry')
    """
    s = token_str.strip()
    stripped = True
    while stripped and s:
        stripped = False
        for marker in _LEADING_MARKERS:
            if s.startswith(marker):
                s = s[len(marker) :].lstrip()
                stripped = True
    return s.replace("’", "'").casefold()


def _normalize_word(word: str) -> str:
    return word.strip().replace("’", "'").casefold()


def match_token(token_str: str, words: Iterable[str]) -> bool:
    """Whether a token string counts for a word list (the lexicon matching rule).

    The token is normalised with :func:`normalize_token` (leading-space markers ``Ġ``/``▁``/space
    and sub-word marker ``##`` stripped, case-folded). It matches when it equals one of
    ``words``, or when it is at least 3 characters long and a prefix of one of them: for a
    word the tokenizer splits into several tokens, the first piece counts (``"ĠSor"`` for
    "sorry"), the later pieces (``"ry"``) do not. Words containing an apostrophe
    (contractions such as ``can't``) match only whole: ``"can"`` does not count for ``can't``.

    Args:
        token_str: a token as ``convert_ids_to_tokens`` or ``decode`` writes it.
        words: the word list (normalised here, so case and curly apostrophes do not matter).

    Returns:
        ``True`` when the token counts for the list.

    Examples:
        >>> match_token(" Sorry", {"sorry"}), match_token("ĠSor", {"sorry"}), match_token("ry", {"sorry"})
        (True, True, False)
        >>> match_token(" can", {"can't"})
        False
    """
    token = normalize_token(token_str)
    if not token:
        return False
    normalised = {_normalize_word(w) for w in words}
    if token in normalised:
        return True
    if len(token) < MIN_PIECE:
        return False
    return any(w.startswith(token) for w in normalised if "'" not in w)


def _surface_forms(word: str) -> list[str]:
    """How a word appears in running text: bare, after a space, capitalised, both."""
    cap = word[:1].upper() + word[1:]
    return list(dict.fromkeys([word, " " + word, cap, " " + cap]))


# Per-tokenizer caches, dropped with the tokenizer. Keys: the tokenizer object; values: the
# normalised vocabulary, and the resolved ids per lexicon digest.
_VOCAB_CACHE: weakref.WeakKeyDictionary[Any, list[str]] = weakref.WeakKeyDictionary()
_IDS_CACHE: weakref.WeakKeyDictionary[Any, dict[str, dict[str, list[int]]]] = weakref.WeakKeyDictionary()


def decoded_vocab(tokenizer: Any) -> list[str]:
    """``tokenizer.decode([i])`` for every id ``i < len(tokenizer)``, computed once per tokenizer."""
    try:
        return _VOCAB_CACHE[tokenizer]
    except (KeyError, TypeError):
        pass
    strings = [str(s) for s in tokenizer.batch_decode([[i] for i in range(len(tokenizer))])]
    try:
        _VOCAB_CACHE[tokenizer] = strings
    except TypeError:  # an object that cannot be weakly referenced is simply not cached
        pass
    return strings


class Lexicon(BaseModel):
    """Three word lists (positive, negative, neutral); words are stored normalised.

    Build one by hand (``Lexicon(version="mine", positive=[...], negative=[...], neutral=[])``),
    load a bundled one with :func:`load_lexicon`, or turn an induced one into one with
    :meth:`InducedLexicon.to_lexicon`. The lists must not share a word.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    version: str
    """Name of the lexicon (``v1`` for the bundled one); goes into results and cache keys."""
    positive: list[str]
    """Positive / affirmative words (e.g. sure, glad, certainly); case-folded."""
    negative: list[str]
    """Negative / refusal words (e.g. sorry, cannot, unfortunately); case-folded."""
    neutral: list[str]
    """Hedging and function words (e.g. the, however, perhaps); case-folded."""

    @field_validator("positive", "negative", "neutral")
    @classmethod
    def _normalise(cls, words: list[str]) -> list[str]:
        out = []
        for w in words:
            n = _normalize_word(w)
            if not n:
                raise ValueError("a lexicon word is empty; remove it")
            out.append(n)
        return list(dict.fromkeys(out))

    @model_validator(mode="after")
    def _disjoint(self) -> Lexicon:
        seen: dict[str, str] = {}
        for cat in CATEGORIES:
            for w in getattr(self, cat):
                if w in seen:
                    raise ValueError(f"the word {w!r} is in both {seen[w]} and {cat}; keep it in one list")
                seen[w] = cat
        return self

    def words(self) -> dict[str, list[str]]:
        """``{category: words}`` in :data:`CATEGORIES` order."""
        return {cat: list(getattr(self, cat)) for cat in CATEGORIES}

    @property
    def digest(self) -> str:
        """sha256 prefix of the lexicon's content (cache keys, result metadata)."""
        return hashlib.sha256(self.model_dump_json().encode("utf-8")).hexdigest()[:16]

    def token_ids(self, tokenizer: Any) -> dict[str, list[int]]:
        """The token ids of each category for one tokenizer, by the module's matching rule.

        A vocabulary entry counts when its normalised string equals a word of the category, or
        when it is the first piece (at least 3 characters, a prefix of the word) that the
        tokenizer produces for one of the word's surface forms (``word``, `` word``, ``Word``,
        `` Word``). Special tokens never count; the categories are disjoint. The result is
        cached per tokenizer object.

        Args:
            tokenizer: a transformers tokenizer.

        Returns:
            ``{"positive": [...], "negative": [...], "neutral": [...]}``, sorted ids.

        Examples:
            >>> ids = load_lexicon().token_ids(model.tokenizer)
            >>> model.tokenizer.convert_ids_to_tokens(ids["negative"][:3])
        """
        try:
            cached = _IDS_CACHE.get(tokenizer, {}).get(self.digest)
        except TypeError:
            cached = None
        if cached is not None:
            return {k: list(v) for k, v in cached.items()}
        result = self._resolve(tokenizer)
        try:
            _IDS_CACHE.setdefault(tokenizer, {})[self.digest] = result
        except TypeError:
            pass
        return {k: list(v) for k, v in result.items()}

    def _resolve(self, tokenizer: Any) -> dict[str, list[int]]:
        vocab = decoded_vocab(tokenizer)
        normalised = [normalize_token(s) for s in vocab]
        special = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
        word_cat = {w: cat for cat in CATEGORIES for w in getattr(self, cat)}
        exact: dict[str, set[int]] = {cat: set() for cat in CATEGORIES}
        for i, s in enumerate(normalised):
            if i not in special and s in word_cat:
                exact[word_cat[s]].add(i)
        pieces: dict[str, set[int]] = {cat: set() for cat in CATEGORIES}
        for cat in CATEGORIES:
            for word in getattr(self, cat):
                for form in _surface_forms(word):
                    ids = tokenizer.encode(form, add_special_tokens=False)
                    if len(ids) < 2 or ids[0] in special or not 0 <= ids[0] < len(vocab):
                        continue
                    if match_token(vocab[ids[0]], {word}):
                        pieces[cat].add(int(ids[0]))
        all_exact = set().union(*exact.values())
        out: dict[str, list[int]] = {}
        for cat in CATEGORIES:
            others = set().union(*(pieces[c] for c in CATEGORIES if c != cat))
            out[cat] = sorted(exact[cat] | (pieces[cat] - all_exact - others))
        return out


def available_lexicons() -> list[str]:
    """Versions of the bundled lexicons, e.g. ``["v1"]``."""
    found = (re.fullmatch(r"emotions_(v\d+)\.json", p.name) for p in _DATA.glob("emotions_v*.json"))
    return sorted((m.group(1) for m in found if m), key=lambda v: int(v[1:]))


def load_lexicon(version: str = "v1") -> Lexicon:
    """A bundled emotion lexicon.

    Args:
        version: ``"v1"`` (see the module docstring for its content and what was pruned).

    Returns:
        The :class:`Lexicon`.

    Examples:
        >>> lex = load_lexicon()
        >>> "sorry" in lex.negative, "sure" in lex.positive
        (True, True)
    """
    if not isinstance(version, str) or version not in available_lexicons():
        raise InputError(f"Unknown lexicon version {version!r}; bundled versions: {available_lexicons()}.")
    raw = json.loads((_DATA / f"emotions_{version}.json").read_text(encoding="utf-8"))
    if f"v{raw.get('version')}" != version:
        raise InputError(
            f"emotions_{version}.json declares version {raw.get('version')!r}; the file is damaged."
        )
    return Lexicon(
        version=version, positive=raw["positive"], negative=raw["negative"], neutral=raw["neutral"]
    )


def resolve_lexicon(lexicon: str | Lexicon) -> Lexicon:
    """A :class:`Lexicon` from a version string or a lexicon object (public entry points' helper)."""
    if isinstance(lexicon, Lexicon):
        return lexicon
    if isinstance(lexicon, str):
        return load_lexicon(lexicon)
    raise InputError(
        f"lexicon must be a version string such as 'v1' or a Lexicon, got {type(lexicon).__name__}."
    )


def category_id_tensors(lexicon: Lexicon, tokenizer: Any, vocab_size: int) -> list[torch.Tensor]:
    """One int64 id tensor per category (in :data:`CATEGORIES` order), ids below ``vocab_size``.

    These are made before a trace and shipped into it, where ``probs[:, ids].sum(-1)`` gives
    each category's probability mass.
    """
    ids = lexicon.token_ids(tokenizer)
    return [torch.tensor([i for i in ids[cat] if i < vocab_size], dtype=torch.long) for cat in CATEGORIES]


def mass_token_ids(model: Model, lexicon: str | Lexicon) -> tuple[str, torch.Tensor, torch.Tensor]:
    """(lexicon name, negative ids, positive ids): the distinct ids a logit row can index, sorted.

    What graft and steer ship into their traces to read next-token negative / positive mass.
    """
    lex = resolve_lexicon(lexicon)
    ids = lex.token_ids(model.tokenizer)
    vocab = model.vocab_size

    def clean(values: Sequence[int]) -> torch.Tensor:
        return torch.tensor(sorted({int(i) for i in values if 0 <= int(i) < vocab}), dtype=torch.long)

    digest = getattr(lex, "digest", None)
    name = f"{lex.version} ({digest})" if isinstance(digest, str) else lex.version
    return name, clean(ids["negative"]), clean(ids["positive"])


# ---------------------------------------------------------------------------- scores


class EmotionProfile(BaseModel):
    """Per-layer emotion scores of a set of prompts (from :meth:`LensResult.emotions`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    layers: list[int]
    """(n_layers,) layer index of each entry (0 = embeddings, l = block l's output)."""
    mass: dict[str, list[float]]
    """category -> (n_layers,) mean over prompts of the full-vocabulary lens probability of the category."""
    topk_share: dict[str, list[float]]
    """category -> (n_layers,) share of all prompts' top-k lens tokens that are in the category."""
    top1_share: dict[str, list[float]]
    """category -> (n_layers,) share of prompts whose top-1 lens token is in the category."""
    n_prompts: int
    """Number of prompts averaged."""
    top_k: int
    """k of the top-k lists."""
    lexicon_version: str
    """The lexicon that defined the categories."""
    name: str | None = None
    """A label for plots and comparisons (e.g. ``malicious``)."""

    def band_mean(self, band: tuple[int, int]) -> dict[str, float]:
        """Mean full-vocabulary mass of each category over the layers ``band[0] .. band[1]`` (inclusive)."""
        lo, hi = band
        idx = [i for i, layer in enumerate(self.layers) if lo <= layer <= hi]
        if not idx:
            raise InputError(
                f"No layer of this profile lies in the band {band}; its layers are {self.layers}."
            )
        return {cat: sum(v[i] for i in idx) / len(idx) for cat, v in self.mass.items()}

    def plot(self, *others: EmotionProfile, title: str | None = None) -> Figure:
        """Emotion mass and top-k share against the layer, for this profile and any ``others``."""
        from .plots.lens import emotion_plot

        return emotion_plot([self, *others], title=title)


def emotion_profile(lens: LensResult, name: str | None = None) -> EmotionProfile:
    """Per-layer emotion scores of a lens result: mean mass, top-k share and top-1 share per category."""
    mass = lens.emotion_mass.double().mean(0)
    share = lens.emotion_counts.double().mean(0) / lens.top_k
    top1 = (
        torch.stack(
            [
                torch.tensor(
                    [[lens.token_category.get(int(i)) == cat for i in row] for row in lens.token_ids[:, :, 0]]
                )
                for cat in lens.categories
            ],
            -1,
        )
        .double()
        .mean(0)
    )
    return EmotionProfile(
        layers=list(lens.layers),
        mass={cat: mass[:, c].tolist() for c, cat in enumerate(lens.categories)},
        topk_share={cat: share[:, c].tolist() for c, cat in enumerate(lens.categories)},
        top1_share={cat: top1[:, c].tolist() for c, cat in enumerate(lens.categories)},
        n_prompts=len(lens),
        top_k=lens.top_k,
        lexicon_version=lens.lexicon_version,
        name=name,
    )


# ---------------------------------------------------------------------------- induction


class InducedToken(BaseModel):
    """One candidate lexicon token and its mean lens probabilities in the two sets."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    token_id: int
    """Vocabulary id."""
    token: str
    """The decoded token (leading space kept)."""
    score: float
    """``mean_a - mean_b``: positive when the token is more likely under set A."""
    mean_a: float
    """Mean lens probability over set A's prompts and the band's layers."""
    mean_b: float
    """Mean lens probability over set B's prompts and the band's layers."""


class InducedLexicon(BaseModel):
    """Tokens whose mean lens probability over a layer band differs most between two prompt sets."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    band: tuple[int, int]
    """(lo, hi) the inclusive layer band averaged over."""
    n_a: int
    """Number of prompts in set A."""
    n_b: int
    """Number of prompts in set B."""
    a: list[InducedToken]
    """(top,) tokens more likely under set A, largest difference first."""
    b: list[InducedToken]
    """(top,) tokens more likely under set B, largest difference first."""
    model_name: str
    """The model the lens ran on."""
    weights_hash: str
    """Hash of the model's weights."""

    def words(self, side: str = "a", *, min_chars: int = 1) -> list[str]:
        """The normalised, de-duplicated token strings of one side (``"a"`` or ``"b"``)."""
        if side not in ("a", "b"):
            raise InputError(f"side must be 'a' or 'b', got {side!r}.")
        out = (normalize_token(t.token) for t in getattr(self, side))
        return list(dict.fromkeys(w for w in out if len(w) >= min_chars))

    def to_lexicon(
        self, *, a: str = "negative", b: str = "positive", version: str = "induced", min_chars: int = 2
    ) -> Lexicon:
        """A :class:`Lexicon` whose ``a`` category holds set A's words and ``b`` category set B's.

        Words found on both sides (different ids that normalise alike) are dropped; words shorter
        than ``min_chars`` are skipped (single letters and punctuation are rarely emotions).
        """
        if {a, b} - set(CATEGORIES) or a == b:
            raise InputError(
                f"a and b must be two different categories of {list(CATEGORIES)}, got {a!r}, {b!r}."
            )
        wa, wb = self.words("a", min_chars=min_chars), self.words("b", min_chars=min_chars)
        both = set(wa) & set(wb)
        lists: dict[str, list[str]] = {cat: [] for cat in CATEGORIES}
        lists[a] = [w for w in wa if w not in both]
        lists[b] = [w for w in wb if w not in both]
        return Lexicon(version=version, **lists)

    def plot(self, n: int = 20, *, names: tuple[str, str] = ("A", "B")) -> Figure:
        """Bar chart of the ``n`` strongest tokens on each side."""
        from .plots.lens import induced_plot

        return induced_plot(self, n=n, names=names)


def induce_lexicon(
    model: Model,
    set_a: Any,
    set_b: Any,
    *,
    layers: tuple[int, int] | None = None,
    top: int = 50,
    batch_size: int = 16,
    chat: bool = True,
    system_prompt: str | None = None,
    progress: bool = True,
) -> InducedLexicon:
    """Find the tokens whose mean lens probability over a layer band differs most between two sets.

    For every prompt and every layer of the band, the lens distribution
    ``softmax(unembed(final_norm(h)))`` over the **full vocabulary** is summed inside the trace,
    so one ``[V]`` vector per batch leaves it. The mean over prompts and layers of set A minus
    that of set B scores every token; the ``top`` largest and smallest differences form the
    candidate lexicon. Special tokens are left out.

    Args:
        model: from :func:`ihs_sight.load_model`.
        set_a: prompts (list of strings or :class:`PromptSet`), e.g. malicious ones.
        set_b: prompts, e.g. normal ones.
        layers: ``(lo, hi)`` inclusive layer band (0 = embeddings, l = block l's output);
            ``None`` is the middle band :func:`ihs_sight.lens.middle_band`.
        top: tokens kept on each side.
        batch_size: prompts per forward pass.
        chat: apply the chat template.
        system_prompt: ``None`` keeps the template's default.
        progress: show a progress bar.

    Returns:
        :class:`InducedLexicon` with ``a`` (more likely under set A) and ``b`` (under set B).

    Examples:
        >>> data = ihs.load_prompts()
        >>> induced = induce_lexicon(model, data.malicious.head(40), data.normal.head(40), layers=(15, 22))
        >>> [t.token for t in induced.a[:5]]
    """
    band = middle_band(model.n_layers) if layers is None else check_band(layers, model.n_layers)
    top = int(checks.number("top", top, low=1, integer=True))
    batch_size = checks.batch_size(batch_size)
    encoded = [encode_prompts(model.tokenizer, prompts, chat=chat, system_prompt=system_prompt,
                              max_length=model.max_length, what=what)
               for prompts, what in ((set_a, "set_a"), (set_b, "set_b"))]
    sum_layers = band_layers(band)

    def step(batch: Batch) -> dict[str, torch.Tensor]:
        out = traces.last_token_states(model, batch.inputs, last=batch.last, states=False,
                                       prob_sum_layers=sum_layers)
        return {"prob_sum": out["prob_sum"].double()}

    means = []
    with tqdm(total=sum(len(e) for e in encoded), desc="induce", unit="prompt", disable=not progress) as bar:
        for enc in encoded:
            run = run_batches(model, enc, step, batch_size=batch_size, reduce=("prob_sum",), dedupe=False, bar=bar)
            means.append(run.sums["prob_sum"] / (len(enc) * len(sum_layers)))
    mean_a, mean_b = means
    diff = mean_a - mean_b
    ranking = diff.clone()
    special = [i for i in getattr(model.tokenizer, "all_special_ids", []) if 0 <= i < diff.numel()]
    vocab = decoded_vocab(model.tokenizer)
    if len(vocab) < diff.numel():  # unembedding rows beyond the tokenizer: padding, never words
        special += list(range(len(vocab), diff.numel()))
    n = min(top, diff.numel() - len(special))

    def side(sign: float) -> list[InducedToken]:
        r = ranking * sign
        r[special] = -float("inf")
        picked = r.topk(n).indices.tolist()
        return [
            InducedToken(
                token_id=i,
                token=vocab[i],
                score=float(diff[i]),
                mean_a=float(mean_a[i]),
                mean_b=float(mean_b[i]),
            )
            for i in picked
        ]

    return InducedLexicon(
        band=band,
        n_a=len(encoded[0]),
        n_b=len(encoded[1]),
        a=side(1.0),
        b=side(-1.0),
        model_name=model.name,
        weights_hash=model.weights_hash,
    )


def category_of_ids(ids: Sequence[int], token_ids: dict[str, list[int]]) -> dict[int, str]:
    """``{id: category}`` for the ids that fall in a category (the heatmap's colours)."""
    lookup = {i: cat for cat, values in token_ids.items() for i in values}
    return {int(i): lookup[int(i)] for i in ids if int(i) in lookup}
