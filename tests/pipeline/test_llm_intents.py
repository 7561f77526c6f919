"""The LLM's intent opinion is grammar-constrained: only the enum can come out."""

from __future__ import annotations

import pytest

from appliance.agent.runtime import AgentRuntime
from appliance.agent.understanding import LlmIntentClassifier

pytestmark = pytest.mark.pipeline


def test_constrained_intent_is_always_from_the_enum(models, agent: AgentRuntime) -> None:  # noqa: ANN001
    intents = agent.classifier.intents
    clf = LlmIntentClassifier(models.llm.complete_json, intents)
    for text in ("I'd like to pay my carpet", "can I move my visit", "zzz qqq", "Tell me a joke"):
        raw = models.llm.complete_json(
            [{"role": "system", "content": "Pick an intent."}, {"role": "user", "content": text}],
            clf.schema,
        )
        assert set(raw) == {"intent"} and raw["intent"] in [*intents, "none"]
        candidates = agent.classifier.classify(text).candidates
        chosen = clf.classify(text, candidates)
        assert chosen is None or chosen in {name for name, _ in candidates}
