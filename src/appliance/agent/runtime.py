"""The agent plane of one process: workflows, tools, intent matcher, knowledge base, calendar.

Loaded once at start (and again on SIGHUP: a broken workflow file is refused and the last good
set keeps serving); each call gets its own :class:`~appliance.agent.dialog.DialogManager`.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from appliance.agent.calendar import SchedulingAdapter, SqliteCalendar, seed_demo
from appliance.agent.dialog import DialogManager, DialogSettings, fixed_texts
from appliance.agent.kb import Embed, KnowledgeBase, default_file, facts
from appliance.agent.scheduling_tools import default_tools
from appliance.agent.tools import ToolRegistry
from appliance.agent.understanding import CompleteJson, IntentClassifier, LlmIntentClassifier
from appliance.agent.workflow import WorkflowSet, default_dir, load_workflows
from appliance.config.settings import ApplianceSettings
from appliance.events import Event


@dataclass
class AgentRuntime:
    """Everything a call's dialogue needs that is shared across calls.

    ``tools`` must be the registry ``workflows`` were loaded with (:func:`load_agent` does so).
    """

    workflows: WorkflowSet
    classifier: IntentClassifier
    kb: KnowledgeBase
    calendar: SchedulingAdapter | None
    settings: DialogSettings
    llm_intents: LlmIntentClassifier | None = None
    tools: ToolRegistry = field(default_factory=default_tools)

    def new_dialog(self, call_id: str, emit: Callable[[Event], None]) -> DialogManager:
        """A fresh dialogue manager for one call."""
        return DialogManager(
            call_id,
            self.workflows,
            self.classifier,
            self.kb,
            self.calendar,
            emit,
            self.settings,
            llm_intents=self.llm_intents,
            tools=self.tools,
        )

    def fixed_phrases(self) -> list[str]:
        """Texts said verbatim (no per-call fields), to pre-render once per voice."""
        phrases = list(fixed_texts(self.settings)) + self.kb.answers
        for wf in self.workflows.workflows.values():
            for node in wf.nodes.values():
                text = node.text
                if not text:
                    continue
                fields = {f for _, f, _, _ in string.Formatter().parse(text) if f}
                if fields <= set(self.settings.facts):
                    phrases.append(text.format(**self.settings.facts))
        return list(dict.fromkeys(phrases))


def dialog_settings(settings: ApplianceSettings) -> DialogSettings:
    """Dialogue policy from the appliance settings."""
    return DialogSettings(
        enabled_tiers=tuple(settings.agent.enabled_tiers),
        clinic_name=settings.clinic.name,
        anything_else=settings.agent.anything_else,
        llm_off_script=settings.agent.llm_off_script,
        facts=facts(settings.clinic),
    )


def load_agent(
    settings: ApplianceSettings,
    embed: Embed,
    *,
    calendar: SchedulingAdapter | None = None,
    complete_json: CompleteJson | None = None,
) -> AgentRuntime:
    """Load and validate the workflows and the knowledge base; open the calendar.

    The workflows are checked against the built-in tools
    (:func:`~appliance.agent.scheduling_tools.default_tools`), which the dialogues then use.

    Raises:
        WorkflowError: A workflow file is invalid, or a tool node names an unknown tool or
            arguments the tool does not take (names the file, node and field).
        ConfigError: The knowledge base is invalid.
    """
    tools = default_tools()
    workflows = load_workflows(settings.agent.workflows_dir or default_dir(), tools)
    kb = KnowledgeBase(settings.agent.knowledge_file or default_file(), settings.clinic, embed)
    classifier = IntentClassifier(embed, workflows)
    if calendar is None:
        db = Path(settings.scheduling.db)
        db.parent.mkdir(parents=True, exist_ok=True)
        if settings.scheduling.demo_seed:
            calendar = seed_demo(db, date.today())
        else:
            calendar = SqliteCalendar(db)
    llm_intents = None
    if settings.agent.llm_intents and complete_json is not None:
        llm_intents = LlmIntentClassifier(complete_json, classifier.intents)
    return AgentRuntime(
        workflows, classifier, kb, calendar, dialog_settings(settings), llm_intents, tools
    )
