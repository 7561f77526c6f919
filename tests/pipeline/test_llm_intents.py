"""The LLM's intent opinion is grammar-constrained, and counts only among the candidates.

The classifier's completion function is wrapped so each test sees the model's raw,
constrained answer for the very prompt :meth:`LlmIntentClassifier.classify` sent, and can
check what ``classify`` made of it.
"""

from __future__ import annotations

from typing import Any

import pytest

from appliance.agent.runtime import AgentRuntime
from appliance.agent.understanding import LlmIntentClassifier

pytestmark = pytest.mark.pipeline

TEXTS = (
    "I'd like to pay my carpet",
    "can I move my visit",
    "zzz qqq",
    "Tell me a joke",
    "cancel my appointment please",
)


class RecordingCompletion:
    """``LlamaEngine.complete_json``, keeping each raw answer."""

    def __init__(self, models: Any) -> None:  # noqa: ANN401 - the ModelSet fixture
        self._complete = models.llm.complete_json
        self.answers: list[dict[str, Any]] = []

    def __call__(self, messages: list[dict[str, str]], schema: dict) -> dict:
        out = self._complete(messages, schema)
        self.answers.append(out)
        return out

    def last(self) -> str:
        (answer,) = self.answers
        self.answers.clear()
        return answer["intent"]


def test_constrained_answer_is_from_the_enum_and_counts_only_among_candidates(
    models,  # noqa: ANN001
    agent: AgentRuntime,
) -> None:
    intents = agent.classifier.intents
    completion = RecordingCompletion(models)
    clf = LlmIntentClassifier(completion, intents)
    everything = tuple((name, 1.0) for name in intents)
    ruled_out = 0
    for text in TEXTS:
        # The grammar: one key, and its value from the enum, whatever the text.
        chosen = clf.classify(text, everything)
        raw_answer = completion.answers[0]
        pick = completion.last()
        assert set(raw_answer) == {"intent"} and pick in [*intents, "none"], raw_answer
        # With every intent a candidate, the model's pick is taken ("none" is not an intent).
        assert chosen == (None if pick == "none" else pick)

        # With the embedding matcher's real candidates, the pick counts only if among them.
        candidates = agent.classifier.classify(text).candidates
        chosen = clf.classify(text, candidates)
        pick = completion.last()
        names = {name for name, _ in candidates}
        assert chosen == (pick if pick in names else None), (text, pick, candidates)

        # With the model's own pick left out of the candidates, it is never taken.
        if pick != "none":
            others = tuple((name, score) for name, score in everything if name != pick)
            chosen = clf.classify(text, others)
            again = completion.last()
            assert chosen == (again if again != pick and again != "none" else None)
            ruled_out += again == pick
    # Greedy decoding repeats the pick for the same prompt, so the rule-out case really ran.
    assert ruled_out >= 1
