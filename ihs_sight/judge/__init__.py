"""Refusal judges: does a reply refuse the request it answers?

A judge is any callable ``judge(text) -> bool`` (:class:`RefusalJudge`); judges that read the
prompt too take ``judge(text, prompt=...)``. Two ship with ihs-sight:

- :func:`default_judge` (a :class:`ReplyJudge`): surface cues and the bundled model's reading of
  the reply next to its prompt, weighed by a logistic regression; validated on a hand-labelled
  gold set (``ihs_sight/data/judge_gold_*.jsonl``, scores in ``docs/judge_eval.json``). Every
  analysis that judges replies uses it when ``judge=None``.
- :class:`PhraseJudge`: refusal phrases near the start of the reply, the v1 heuristic, kept for
  reproducing earlier numbers.

Every shipped :class:`ReplyJudge` version stays loadable with :func:`shipped_judge` (``"v1"``,
``"v2"``, ``"v3"``), so a result that records ``ReplyJudge(v1, ...)`` can be re-read by the same judge.
"""

from __future__ import annotations

from .base import RefusalJudge, Verdict, judge_many, judge_name
from .grammar import FEATURES, cue_vector
from .learned import CLASSES, ReplyJudge, default_judge, reply_states, shipped_judge
from .phrases import PhraseJudge, load_refusal_patterns, normalize

__all__ = [
    "CLASSES",
    "FEATURES",
    "PhraseJudge",
    "RefusalJudge",
    "ReplyJudge",
    "Verdict",
    "cue_vector",
    "default_judge",
    "judge_many",
    "judge_name",
    "load_refusal_patterns",
    "normalize",
    "reply_states",
    "shipped_judge",
]
