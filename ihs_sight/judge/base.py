"""What a refusal judge is: a callable that says whether a reply refuses, and how results name it."""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

Verdict = Literal["refusal", "compliance", "unclear"]
"""A judge's three-way reading of a reply (the gold set's labels)."""


@runtime_checkable
class RefusalJudge(Protocol):
    """Anything that says whether a reply refuses: ``judge(text) -> True`` for a refusal.

    Judges that read the prompt too (:class:`~ihs_sight.judge.ReplyJudge`) take it as
    ``judge(text, prompt=...)``; callers that know the prompt pass it when the judge accepts it
    (see :func:`judge_many`).
    """

    def __call__(self, text: str) -> bool: ...


def judge_name(judge: RefusalJudge) -> str:
    """How a judge is recorded in metadata: its ``name`` attribute, else its type or function name."""
    name = getattr(judge, "name", None)
    if isinstance(name, str):
        return name
    return str(getattr(judge, "__qualname__", type(judge).__qualname__))


def judge_many(judge: RefusalJudge, texts: list[str], prompts: list[str] | None = None) -> list[bool]:
    """Verdicts for many replies: the judge's own batch method when it has one (``many``), with prompts."""
    many = getattr(judge, "many", None)
    if callable(many):
        return [bool(v) for v in many(texts, prompts)]
    return [bool(judge(t)) for t in texts]
