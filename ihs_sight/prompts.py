"""Prompt sets, loaders and chat templating (the jailbreak wrappers live in :mod:`ihs_sight.wrappers`).

A :class:`PromptSet` is an ordered list of :class:`Prompt` records (text, label, category,
family, source, split). The bundled data (``ihs_sight/data``, see its README) has normal and
malicious requests with one canonical train/test split, jailbreak variants built only from
test-split malicious prompts, and the same wrappers applied to test-split normal prompts as a
control (labelled ``normal``). On request (:func:`load_prompts`), two more sets: the same
wrappers around train-split normal *and* malicious prompts (so a wrapper carries no label), and
test-only wrapper families of other kinds around test-split prompts.

Templating: a prompt is rendered through the tokenizer's own chat template with the generation
prompt appended (or used as is in raw mode, ``chat=False``, for base models), tokenised once
here, and handed to nnsight as token ids. The position every analysis reads is the **last
token of the templated prompt** — the token after which the model's answer starts.

Every analysis takes its prompts through :func:`as_prompts` (one coercion and one set of
checks for a ``PromptSet`` or a list of strings) and :func:`encode_prompts`, which renders,
tokenises and length-checks them once into an :class:`EncodedPrompts` value.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import random
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from . import checks
from .deprecations import moved
from .errors import InputError

log = logging.getLogger(__name__)

PLACEHOLDER = "{prompt}"
TEXT_COLUMNS = ("text", "prompt", "goal", "instruction", "question", "query")
"""Column names tried, in order, when ``text_column`` is not given."""


class Prompt(BaseModel):
    """One prompt and what is known about it."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    text: str
    """The request as the user would type it (before any chat template)."""
    label: str | None = None
    """``normal``, ``malicious`` or ``jailbreak`` for the bundled data; any string for user data."""
    category: str | None = None
    """Everyday domain (normal) or harm category (malicious, jailbreak)."""
    family: str | None = None
    """Jailbreak wrapper family, for wrapped prompts."""
    source: str = "user"
    """Where the prompt came from (``bundled:normal``, a file path, a dataset id)."""
    split: str | None = None
    """``train`` or ``test`` in the canonical split of the bundled data."""
    id: str | None = None
    """Stable identifier within its source."""
    lookalike: bool = False
    """Benign prompt that deliberately shares vocabulary with harmful ones."""
    form: str | None = None
    """The prompt's written form: ``question``, ``imperative``, ``first_person``, ``context`` or ``terse``
    (the slot scheme's forms; bundled normal and malicious prompts)."""


class PromptSet(BaseModel):
    """An ordered, typed collection of prompts with selection, splitting and concatenation."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    items: list[Prompt]
    duplicates_dropped: int = 0
    """How many duplicate texts the loader dropped."""

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Prompt]:  # type: ignore[override]
        return iter(self.items)

    def __getitem__(self, index: int) -> Prompt:
        return self.items[index]

    def __add__(self, other: PromptSet) -> PromptSet:
        return PromptSet.concat([self, other])

    @classmethod
    def concat(cls, sets: Iterable[PromptSet]) -> PromptSet:
        """All items of several sets, in order (duplicates kept: they may differ in label)."""
        return cls(items=[p for s in sets for p in s.items])

    @classmethod
    def from_texts(cls, texts: Sequence[str], *, label: str | None = None, source: str = "user") -> PromptSet:
        """A set from plain strings, all with one label."""
        return cls(items=[Prompt(text=t, label=label, source=source) for t in texts])

    @property
    def texts(self) -> list[str]:
        return [p.text for p in self.items]

    @property
    def labels(self) -> list[str | None]:
        return [p.label for p in self.items]

    @property
    def categories(self) -> list[str | None]:
        return [p.category for p in self.items]

    @property
    def families(self) -> list[str | None]:
        return [p.family for p in self.items]

    def select(
        self,
        *,
        label: str | Sequence[str] | None = None,
        category: str | Sequence[str] | None = None,
        family: str | Sequence[str] | None = None,
        split: str | None = None,
        lookalike: bool | None = None,
    ) -> PromptSet:
        """The items matching every given criterion (a string or a list of accepted values)."""

        def ok(value: Any, want: Any) -> bool:
            if want is None:
                return True
            return bool(value == want) if isinstance(want, (str, bool)) else value in want

        items = [
            p for p in self.items
            if ok(p.label, label) and ok(p.category, category) and ok(p.family, family)
            and ok(p.split, split) and ok(p.lookalike, lookalike)
        ]
        return PromptSet(items=items)

    @property
    def normal(self) -> PromptSet:
        """Plain normal requests (wrapped normals excluded)."""
        return self.filter(lambda p: p.label == "normal" and p.family is None)

    @property
    def malicious(self) -> PromptSet:
        return self.select(label="malicious")

    @property
    def jailbreak(self) -> PromptSet:
        return self.select(label="jailbreak")

    @property
    def wrapped_normal(self) -> PromptSet:
        """Normal requests inside jailbreak wrappers: the control set."""
        return self.filter(lambda p: p.label == "normal" and p.family is not None)

    @property
    def train(self) -> PromptSet:
        return self.select(split="train")

    @property
    def test(self) -> PromptSet:
        return self.select(split="test")

    def filter(self, keep: Any) -> PromptSet:
        """The items for which ``keep(prompt)`` is true."""
        return PromptSet(items=[p for p in self.items if keep(p)])

    def head(self, n: int) -> PromptSet:
        """The first ``n`` items."""
        return PromptSet(items=self.items[:n])

    def sample(self, n: int, *, random_state: int = 0, stratify: bool = True) -> PromptSet:
        """A seeded random subset of ``n`` items (balanced over labels when ``stratify``)."""
        if n >= len(self):
            return self
        rng = random.Random(random_state)
        if not stratify:
            return PromptSet(items=[self.items[i] for i in sorted(rng.sample(range(len(self)), n))])
        by_label: dict[str | None, list[int]] = {}
        for i, p in enumerate(self.items):
            by_label.setdefault(p.label, []).append(i)
        chosen: list[int] = []
        quotas = _quotas({k: len(v) for k, v in by_label.items()}, n)
        for key, idx in by_label.items():
            chosen += rng.sample(idx, quotas[key])
        return PromptSet(items=[self.items[i] for i in sorted(chosen)])

    def split(
        self, test_size: float = 0.3, *, random_state: int = 0, stratify: Sequence[str] = ("label",)
    ) -> tuple[PromptSet, PromptSet]:
        """Stratified, seeded train/test split; each part keeps the original order.

        Every group of items sharing the ``stratify`` fields (default: the label) contributes
        ``round(len(group) * test_size)`` items to the test part.
        """
        if not 0 < test_size < 1:
            raise InputError(f"test_size must be between 0 and 1, got {test_size}.")
        rng = random.Random(random_state)
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, p in enumerate(self.items):
            groups.setdefault(tuple(getattr(p, f) for f in stratify), []).append(i)
        test: set[int] = set()
        for _, idx in sorted(groups.items(), key=lambda kv: str(kv[0])):
            k = round(len(idx) * test_size)
            test.update(rng.sample(idx, k))
        train_items = [p for i, p in enumerate(self.items) if i not in test]
        test_items = [p for i, p in enumerate(self.items) if i in test]
        if not train_items or not test_items:
            raise InputError(f"A {len(self)}-prompt set is too small for test_size={test_size}.")
        return PromptSet(items=train_items), PromptSet(items=test_items)

    def leave_one_family_out(self) -> list[tuple[str, PromptSet, PromptSet]]:
        """``(family, fit, score)`` per wrapper family of the train part, all within the train split:
        ``fit`` is every train prompt but that family's wrapped ones (the direct prompts and the other
        families), ``score`` that family's wrapped train prompts. For choosing features, layers and
        thresholds out of fold; the test split is never touched. Needs ``load_prompts(wrapped_train=True)``.
        """
        train = self.train
        families = list(dict.fromkeys(p.family for p in train.items if p.family is not None))
        if not families:
            raise InputError("No wrapped train prompts to leave out; load them with load_prompts(wrapped_train=True).")
        return [(family, train.filter(lambda p, f=family: p.family != f),
                 train.filter(lambda p, f=family: p.family == f)) for family in families]

    def counts(self, by: str = "label") -> dict[str, int]:
        """How many items per label / category / family / split."""
        return dict(Counter(str(getattr(p, by)) for p in self.items))

    def to_jsonl(self, path: str | Path) -> None:
        """Write one JSON object per prompt (the format :func:`load_prompts` reads back)."""
        lines = [p.model_dump_json(exclude_defaults=True) for p in self.items]
        Path(path).write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _quotas(sizes: dict[Any, int], n: int) -> dict[Any, int]:
    total = sum(sizes.values())
    quotas = {k: int(n * v / total) for k, v in sizes.items()}
    for k in sorted(sizes, key=lambda k: -(n * sizes[k] / total - quotas[k]))[: n - sum(quotas.values())]:
        quotas[k] += 1
    return quotas


# ---------------------------------------------------------------------------- loading


def _data_path(name: str) -> Path:
    return Path(__file__).resolve().parent / "data" / name


BUNDLED_FILES = ("normal.jsonl", "malicious.jsonl", "jailbreak.jsonl", "wrapped_normal.jsonl")
WRAPPED_TRAIN_FILE = "wrapped_train.jsonl"
"""Train-split normal and malicious prompts in the 7 bundled wrapper families (split ``train``)."""
HELDOUT_WRAPPED_FILE = "wrapped_heldout.jsonl"
"""Test-split prompts in the test-only wrapper families of ``wrappers_heldout.json`` (split ``test``)."""


def bundled_prompts(*, wrapped_train: bool = False, heldout_wrapped: bool = False) -> PromptSet:
    """All bundled prompts: normal and malicious (train and test), jailbreak and wrapped-normal (test),
    and the optional wrapped sets (see :func:`load_prompts`)."""
    items: list[Prompt] = []
    names = BUNDLED_FILES + ((WRAPPED_TRAIN_FILE,) if wrapped_train else ()) + (
        (HELDOUT_WRAPPED_FILE,) if heldout_wrapped else ())
    for name in names:
        for line in _data_path(name).read_text(encoding="utf-8").splitlines():
            if line.strip():
                items.append(Prompt.model_validate_json(line))
    return PromptSet(items=items)


def _dedupe(items: list[Prompt], source: str) -> PromptSet:
    seen: set[tuple[str, str | None, str | None]] = set()
    kept = []
    for p in items:
        key = (p.text, p.label, p.family)
        if key in seen:
            continue
        seen.add(key)
        kept.append(p)
    dropped = len(items) - len(kept)
    if dropped:
        log.warning("%s: dropped %d duplicate prompt(s)", source, dropped)
    return PromptSet(items=kept, duplicates_dropped=dropped)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path} is not UTF-8 text (byte {e.start}); re-save it as UTF-8.") from None


def _pick(columns: Sequence[str], wanted: str | None, what: str, path: Path) -> str | None:
    if wanted is not None:
        if wanted not in columns:
            raise InputError(f"{path}: no {what} column {wanted!r}; columns are {list(columns)}.")
        return wanted
    if what == "text":
        for c in TEXT_COLUMNS:
            if c in columns:
                return c
        raise InputError(f"{path}: no text column found (tried {list(TEXT_COLUMNS)}); pass text_column= one of {list(columns)}.")
    return None


def _records_to_prompts(
    records: list[dict[str, Any]],
    *,
    path: Path,
    text_column: str | None,
    label_column: str | None,
    category_column: str | None,
    label: str | None,
    label_map: dict[str, str] | None,
    row_offset: int = 1,
) -> list[Prompt]:
    if not records:
        raise InputError(f"{path} holds no prompts.")
    columns = list(dict.fromkeys(k for r in records for k in r))
    tcol = _pick(columns, text_column, "text", path)
    lcol = _pick(columns, label_column, "label", path)
    if lcol is None and label_column is None and "label" in columns:
        lcol = "label"
    ccol = _pick(columns, category_column, "category", path)
    if ccol is None and category_column is None and "category" in columns:
        ccol = "category"
    fam = "family" if "family" in columns else None
    out = []
    for n, r in enumerate(records):
        text = r.get(tcol) if tcol else None
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"{path}: row {n + row_offset} has an empty or missing {tcol!r}; remove the row or fill it.")
        lab = label
        if lcol is not None and r.get(lcol) is not None:
            lab = str(r[lcol])
        if label_map is not None and lab is not None:
            if lab not in label_map:
                raise InputError(f"{path}: row {n + row_offset} label {lab!r} is not in label_map {sorted(label_map)}.")
            lab = label_map[lab]
        out.append(
            Prompt(
                text=text.strip(),
                label=lab,
                category=str(r[ccol]) if ccol and r.get(ccol) is not None else None,
                family=str(r[fam]) if fam and r.get(fam) is not None else None,
                source=str(path),
                id=str(r["id"]) if r.get("id") is not None else f"{path.name}:{n + row_offset}",
            )
        )
    return out


def load_prompts(
    source: str | Path | None = None,
    *,
    label: str | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    category_column: str | None = None,
    label_map: dict[str, str] | None = None,
    hf_split: str = "train",
    wrapped_train: bool = False,
    heldout_wrapped: bool = False,
) -> PromptSet:
    """Load prompts: the bundled sets by default, or a file or Hugging Face dataset.

    Args:
        source: ``None`` (bundled), a ``.txt`` (one prompt per line), ``.csv``/``.tsv``,
            ``.jsonl`` or ``.json`` file, or a Hugging Face dataset id / local dataset
            directory (needs the optional ``datasets`` package).
        label: label for every prompt (when the file has no label column).
        text_column, label_column, category_column: column names; the text column
            defaults to the first of ``text``, ``prompt``, ``goal``, ``instruction``,
            ``question``, ``query`` present.
        label_map: rename labels, e.g. ``{"0": "normal", "1": "malicious"}``; a label
            missing from the map is an error.
        hf_split: the dataset split to read from a Hugging Face dataset.
        wrapped_train: bundled only: add the train-split normal and malicious prompts in the 7
            bundled wrapper families (``label`` ``normal`` / ``jailbreak``, ``split`` ``train``), so
            ``data.train.jailbreak`` and ``data.train.wrapped_normal`` exist for fitting on wrappers.
        heldout_wrapped: bundled only: add test-split prompts in the test-only wrapper families
            (``split`` ``test``); for a final test, never for fitting or choosing.

    Empty rows are errors (the message names the row); duplicates (same text, label and
    family) are dropped with a warning and counted in ``PromptSet.duplicates_dropped``.
    """
    if source is None:
        return bundled_prompts(wrapped_train=checks.flag("wrapped_train", wrapped_train),
                               heldout_wrapped=checks.flag("heldout_wrapped", heldout_wrapped))
    if wrapped_train or heldout_wrapped:
        raise InputError("wrapped_train and heldout_wrapped add bundled sets; they do not apply to another source.")
    path = Path(source).expanduser()
    kw: dict[str, Any] = dict(text_column=text_column, label_column=label_column, category_column=category_column,
                              label=label, label_map=label_map)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".txt":
            lines = _read_text(path).splitlines()
            while lines and not lines[-1].strip():
                lines.pop()
            records = [{"text": line} for line in lines]
            return _dedupe(_records_to_prompts(records, path=path, **kw), str(path))
        if suffix in (".csv", ".tsv"):
            text = _read_text(path)
            reader = csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ",")
            records = [dict(r) for r in reader]
            if reader.fieldnames is None:
                raise InputError(f"{path} is empty; it needs a header row.")
            return _dedupe(_records_to_prompts(records, path=path, row_offset=2, **kw), str(path))
        if suffix == ".jsonl":
            records = []
            for n, line in enumerate(_read_text(path).splitlines(), 1):
                if not line.strip():
                    raise InputError(f"{path}: line {n} is empty; remove it.")
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}: line {n} is not valid JSON ({e.msg}).") from None
                records.append(obj if isinstance(obj, dict) else {"text": obj})
            return _dedupe(_records_to_prompts(records, path=path, **kw), str(path))
        if suffix == ".json":
            try:
                obj = json.loads(_read_text(path))
            except json.JSONDecodeError as e:
                raise InputError(f"{path} is not valid JSON ({e.msg}, line {e.lineno}).") from None
            if isinstance(obj, dict) and "prompts" in obj:
                obj = obj["prompts"]
            if not isinstance(obj, list):
                raise InputError(f"{path}: expected a JSON list of strings or objects (or {{'prompts': [...]}}).")
            records = [o if isinstance(o, dict) else {"text": o} for o in obj]
            return _dedupe(_records_to_prompts(records, path=path, **kw), str(path))
        raise InputError(f"{path}: unsupported file type {suffix!r}; use .txt, .csv, .tsv, .jsonl or .json.")
    if path.is_dir():
        return _load_hf_dataset(str(path), hf_split=hf_split, **kw)
    if path.suffix.lower() in (".txt", ".csv", ".tsv", ".jsonl", ".json") or str(source).startswith((".", "/", "~")):
        raise InputError(f"No such file: {path}")
    return _load_hf_dataset(str(source), hf_split=hf_split, **kw)


def _load_hf_dataset(name: str, *, hf_split: str, **kw: Any) -> PromptSet:
    try:
        import datasets
    except ImportError:
        raise InputError(
            f"Loading the dataset {name!r} needs the optional 'datasets' package: pip install 'ihs-sight[datasets]'."
        ) from None
    try:
        if Path(name).is_dir():
            ds = datasets.load_from_disk(name)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[hf_split]
        else:
            ds = datasets.load_dataset(name, split=hf_split)
    except Exception as e:  # datasets raises many types (hub, file, split errors)
        raise InputError(f"Could not load dataset {name!r} (split {hf_split!r}): {e}") from e
    records = [dict(r) for r in ds]
    return _dedupe(_records_to_prompts(records, path=Path(name), **kw), name)


# ---------------------------------------------------------------------------- templating


def _messages(prompt: str, system_prompt: str | None) -> list[dict[str, str]]:
    msgs = []
    if system_prompt is not None:
        msgs.append({"role": "system", "content": system_prompt})
    msgs.append({"role": "user", "content": prompt})
    return msgs


def render(tokenizer: Any, prompt: str, *, chat: bool = True, system_prompt: str | None = None) -> str:
    """The text the model sees for one prompt (the chat template applied, or the raw prompt).

    ``system_prompt=None`` keeps the template's own default system prompt, if it has one.
    """
    if not chat:
        if system_prompt is not None:
            raise InputError("system_prompt needs chat=True (raw mode has no system turn).")
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise InputError("This tokenizer has no chat template; pass chat=False for a base model.")
    return str(tokenizer.apply_chat_template(_messages(prompt, system_prompt), tokenize=False, add_generation_prompt=True))


def template_fingerprint(tokenizer: Any, *, chat: bool, system_prompt: str | None) -> str:
    """The template rendered around the placeholder ``{prompt}``: exactly what wraps every prompt."""
    return render(tokenizer, PLACEHOLDER, chat=chat, system_prompt=system_prompt)


def encode(tokenizer: Any, prompts: list[str], *, chat: bool = True, system_prompt: str | None = None) -> list[list[int]]:
    """Token ids of each templated prompt, unpadded.

    Chat mode tokenises the rendered template with ``add_special_tokens=False``, exactly as
    ``apply_chat_template(tokenize=True)`` does (the template writes any BOS itself); raw mode
    uses the tokenizer's own special tokens.
    """
    texts = [render(tokenizer, p, chat=chat, system_prompt=system_prompt) for p in prompts]
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=not chat)["input_ids"]]


def sha(text: str) -> str:
    """Short stable hash of a string (prompt identities in caches and metadata)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


# ---------------------------------------------------------------------------- coercion and encoding


def _validated_texts(prompts: Any, what: str) -> list[str]:
    items = checks.as_list(what, prompts, "a list of strings", hint="; wrap it: [prompt]")
    if not items:
        raise InputError(f"{what} is empty; pass at least one prompt.")
    for i, p in enumerate(items):
        if not isinstance(p, str):
            raise InputError(f"{what}[{i}] is {type(p).__name__}, not a string.")
        if not p.strip():
            raise InputError(f"{what}[{i}] is an empty string; remove it.")
    return items


def is_prompt_set(prompts: Any) -> bool:
    """Whether ``prompts`` carries labels, categories and families (a :class:`PromptSet` or alike)."""
    return isinstance(prompts, PromptSet) or (hasattr(prompts, "texts") and hasattr(prompts, "labels"))


def as_prompts(prompts: Any, *, what: str = "prompts") -> PromptSet:
    """A :class:`PromptSet` from a ``PromptSet`` or a sequence of strings, checked: non-empty texts.

    Args:
        prompts: what a public function was given.
        what: the parameter's name, for the messages (``targets``, ``set_a``, ...).

    Raises:
        InputError: a single string, an empty list, a non-string or a blank entry.
    """
    if isinstance(prompts, PromptSet):
        _validated_texts(prompts.texts, what)
        return prompts
    if is_prompt_set(prompts):
        texts = _validated_texts(list(prompts.texts), what)
        labels, categories, families = list(prompts.labels), list(prompts.categories), list(prompts.families)
        return PromptSet(items=[Prompt(text=t, label=lab, category=c, family=f)
                                for t, lab, c, f in zip(texts, labels, categories, families)])
    return PromptSet.from_texts(_validated_texts(prompts, what))


@dataclass(frozen=True)
class EncodedPrompts:
    """Prompts rendered through one template and tokenised once: what every forward pass is built from."""

    prompts: PromptSet
    """The prompts, in order."""
    labelled: bool
    """Whether the caller gave a ``PromptSet`` (labels, categories and families travel into results)."""
    ids: list[list[int]]
    """(n_prompts,) token ids of each templated prompt, unpadded."""
    template: str
    """The template rendered around :data:`PLACEHOLDER`: exactly what wraps each prompt."""
    hashes: list[str]
    """(n_prompts,) :func:`sha` of each prompt text (row keys of caches and metadata)."""
    chat: bool
    """Whether the chat template was applied."""
    system_prompt: str | None
    """The system prompt passed (``None``: the template's own default)."""

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def texts(self) -> list[str]:
        return self.prompts.texts

    @property
    def row_keys(self) -> list[str]:
        """(n_prompts,) hash of each prompt's token ids: what a cached row is stored under.

        The ids carry the template, the system prompt and the tokenizer's own splitting, so a
        row computed with another tokenizer (or an edited ``tokenizer.json``) is never reused.
        """
        return [hashlib.sha256(",".join(map(str, row)).encode()).hexdigest()[:32] for row in self.ids]

    @property
    def lengths(self) -> list[int]:
        return [len(r) for r in self.ids]

    def labels(self) -> list[str | None] | None:
        """The labels when the prompts came as a ``PromptSet``, else ``None``."""
        return list(self.prompts.labels) if self.labelled else None


def encode_prompts(tokenizer: Any, prompts: Any, *, chat: bool, system_prompt: str | None, max_length: int,
                   what: str = "prompts") -> EncodedPrompts:
    """Check, template and tokenise prompts once; refuse any longer than ``max_length`` tokens.

    Args:
        tokenizer: the model's tokenizer.
        prompts: a ``PromptSet`` or a sequence of strings (checked by :func:`as_prompts`).
        chat: apply the chat template (``False``: raw text).
        system_prompt: ``None`` keeps the template's default.
        max_length: the model's position limit.
        what: the parameter's name, for the messages.
    """
    labelled = is_prompt_set(prompts)
    prompt_set = as_prompts(prompts, what=what)
    texts = prompt_set.texts
    template = template_fingerprint(tokenizer, chat=chat, system_prompt=system_prompt)
    ids = encode(tokenizer, texts, chat=chat, system_prompt=system_prompt)
    for i, row in enumerate(ids):
        if len(row) > max_length:
            raise InputError(f"{what}[{i}] is {len(row)} tokens after templating; the model accepts at most "
                             f"{max_length}. Shorten it.")
        if not row:
            raise InputError(f"{what}[{i}] tokenises to nothing.")
    return EncodedPrompts(prompts=prompt_set, labelled=labelled, ids=ids, template=template,
                          hashes=[sha(t) for t in texts], chat=chat, system_prompt=system_prompt)


def template_prefix(tokenizer: Any, *, chat: bool, system_prompt: str | None) -> int:
    """Number of leading template tokens every prompt shares (system prompt, user-turn opening).

    Found by rendering two one-letter prompts and taking their common prefix, so it holds for
    any tokenizer and template; 0 without a chat template.
    """
    a, b = encode(tokenizer, ["a", "b"], chat=chat, system_prompt=system_prompt)
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def template_suffix(tokenizer: Any, *, chat: bool, system_prompt: str | None) -> int:
    """Number of trailing template tokens every prompt shares (the end of the user turn, the assistant header).

    Found like :func:`template_prefix`, from the common suffix of two renders whose messages end
    in different words; the last token of the user's own message sits this many positions before
    the prompt's last token. 0 without a chat template.
    """
    a, b = encode(tokenizer, ["x a", "x b"], chat=chat, system_prompt=system_prompt)
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


# wrap() and wrappers() moved to ihs_sight.wrappers (one concept, one module); the old names still work.
__getattr__ = moved(__name__, {name: ("ihs_sight.wrappers", name) for name in ("wrap", "wrappers")})
