"""Workflows as data: versioned YAML files, one per use case, validated by a schema.

A workflow declares its risk tier (``low`` / ``medium`` / ``high``), the intents that start it
(with example phrases for the embedding matcher), and a graph of nodes. Node types:

=============  ==============================================================================
``say``        speak ``text``, go to ``next``
``ask``        speak ``text``, fill ``slot`` from the caller's answer (speech or DTMF), ``next``
``confirm``    speak a yes/no question, go to ``on_yes`` or ``on_no``
``tool``       run a registered tool with ``args`` (slot references), ``on_ok`` / ``on_fail``
``branch``     go to ``on_intent[INTENT]`` for the intent that started the workflow, or ``default``
``kb_answer``  answer the caller's question from the knowledge base, ``on_found`` / ``on_missing``
``transfer``   escalate with ``reason``: hold prompt, SIP REFER, CTI webhook; else ``on_fail``
``message``    take a message (the caller's next turn), then ``next``
``pci``        PCI DTMF pause: card digits go to the payment handler only; ``on_ok``/``on_fail``
``end``        terminal: ``outcome`` (``resolved``, ``transferred``, ``message_taken``), then
               back to the top (``hangup: false``) or hang up
=============  ==============================================================================

An ``outbound`` workflow (``direction: outbound``, e.g. appointment reminders) has no intents:
the dialler starts it at ``start`` on a call the box placed, and ``opt_out`` names the node run
when the callee says "stop calling me" or presses ``opt_out_digit``
(:meth:`~appliance.agent.dialog.DialogManager.start_outbound`).

Texts are :meth:`str.format` templates over slot names, the outputs of the workflow's tools
and clinic facts (:data:`FACTS`). A tool node's ``args`` map the tool's parameters to slots
(``{name: "{patient_name}"}``, see :mod:`appliance.agent.tools`). Loading checks every
transition, slot type and template field, and every tool and its arguments against the tool
registry, and reports errors as ``FILE: node 'NODE': field 'FIELD': message``.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from appliance.agent.tools import ArgsError, ToolRegistry
from appliance.errors import ConfigError
from appliance.events import ESCALATION_REASONS

SCHEMA_VERSION = 1

#: Risk tiers in rising order.
TIERS = ("low", "medium", "high")

#: Terminal outcomes a workflow can reach.
OUTCOMES = ("resolved", "transferred", "message_taken")

#: Slot types the extractors in :mod:`appliance.agent.understanding` know.
SLOT_TYPES = (
    "person_name",
    "date_of_birth",
    "date_time",
    "digits",
    "yes_no",
    "free_text",
    "spelled_name",
)

#: Clinic facts available to every template.
FACTS = ("clinic_name", "clinic_hours", "clinic_address", "clinic_parking", "kb_answer")


class WorkflowError(ConfigError):
    """A workflow file is unreadable or invalid.

    Attributes:
        file: The file's path.
        node: The node id the error is in, or ``""`` for file-level fields.
        field: The dotted field name, or ``""``.
    """

    def __init__(self, file: Path, node: str, field: str, message: str) -> None:
        where = str(file)
        if node:
            where += f": node {node!r}"
        if field:
            where += f": field {field!r}"
        super().__init__("workflow_invalid", f"{where}: {message}")
        self.file = file
        self.node = node
        self.field = field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SlotSpec(_Strict):
    """What an ``ask`` node collects."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    #: ``spelled_name``: a (family) name spelled letter by letter, e.g. "L O P E Z".
    type: Literal[
        "person_name",
        "date_of_birth",
        "date_time",
        "digits",
        "yes_no",
        "free_text",
        "spelled_name",
    ]
    #: Below this extraction confidence (0..1) the agent reads the value back for confirmation.
    confirm_below: float = Field(0.75, ge=0.0, le=1.0)
    #: Offer keypad entry when speech fails or is unsure (digit-like slots).
    dtmf: bool = False
    #: For ``digits`` slots: how many digits (min, max).
    digits_min: int = Field(1, ge=1, le=32)
    digits_max: int = Field(16, ge=1, le=32)
    #: Words for the DTMF offer, e.g. "your date of birth as eight digits, month day year".
    dtmf_prompt: str = ""


class _Node(_Strict):
    text: str = ""


class SayNode(_Node):
    """Speak ``text`` and move on."""

    type: Literal["say"]
    next: str


class AskNode(_Node):
    """Ask for one slot."""

    type: Literal["ask"]
    slot: SlotSpec
    next: str
    #: Failed attempts before escalating with ``low_confidence``.
    max_attempts: int = Field(2, ge=1, le=5)


class ConfirmNode(_Node):
    """A yes/no question."""

    type: Literal["confirm"]
    on_yes: str
    on_no: str


class ToolNode(_Node):
    """Run a tool; ``text`` (optional) is said first; ``args``: parameter to ``"{slot}"``."""

    type: Literal["tool"]
    tool: str
    args: dict[str, str] = Field(default_factory=dict)
    on_ok: str
    on_fail: str
    #: Failures allowed before ``on_fail`` is final (for identity checks: re-ask).
    max_attempts: int = Field(1, ge=1, le=5)
    retry: str = ""


class BranchNode(_Node):
    """Go to ``on_intent[intent]`` for the intent that started the workflow, else ``default``."""

    type: Literal["branch"]
    on_intent: dict[str, str]
    default: str


class KbAnswerNode(_Node):
    """Answer from the knowledge base."""

    type: Literal["kb_answer"]
    on_found: str
    on_missing: str


class TransferNode(_Node):
    """Escalate to a person; ``text`` is the hold prompt."""

    type: Literal["transfer"]
    reason: str
    on_fail: str

    @field_validator("reason")
    @classmethod
    def _known_reason(cls, value: str) -> str:
        if value not in ESCALATION_REASONS:
            raise ValueError(f"must be one of {', '.join(ESCALATION_REASONS)}")
        return value


class MessageNode(_Node):
    """Take a message: ``text`` prompts, the caller's next turn is the message."""

    type: Literal["message"]
    next: str


class PciNode(_Node):
    """PCI DTMF pause: ``text`` prompts for card digits on the keypad."""

    type: Literal["pci"]
    digits_min: int = Field(13, ge=4, le=19)
    digits_max: int = Field(19, ge=4, le=19)
    timeout_s: float = Field(30.0, gt=0, le=120)
    on_ok: str
    on_fail: str


class EndNode(_Node):
    """Terminal node."""

    type: Literal["end"]
    outcome: Literal["resolved", "transferred", "message_taken"]
    hangup: bool = False


Node = Annotated[
    SayNode
    | AskNode
    | ConfirmNode
    | ToolNode
    | BranchNode
    | KbAnswerNode
    | TransferNode
    | MessageNode
    | PciNode
    | EndNode,
    Field(discriminator="type"),
]


class IntentSpec(_Strict):
    """An intent: example phrases for the embedding matcher and the node it starts at."""

    examples: list[str] = Field(min_length=1)
    start: str
    #: How the agent names it when unsure, e.g. "paying a copay by card".
    description: str = ""


class Workflow(_Strict):
    """One use case."""

    schema_version: int = Field(alias="schema")
    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    version: int = Field(ge=1)
    title: str
    risk_tier: Literal["low", "medium", "high"]
    #: ``inbound``: started by a caller's intent. ``outbound``: started by the dialler on a call
    #: the box placed (no intents; never matched for a caller), at ``start``.
    direction: Literal["inbound", "outbound"] = "inbound"
    intents: dict[str, IntentSpec] = Field(default_factory=dict)
    nodes: dict[str, Node] = Field(min_length=1)
    #: Outbound: the node the call opens with (after the AI disclosure).
    start: str = ""
    #: Outbound: the node run when the callee opts out ("stop calling me", the keypad digit),
    #: anywhere in the call, after the opt-out was recorded.
    opt_out: str = ""
    #: Outbound: the keypad digit that opts out (not a digit any slot of the workflow takes).
    opt_out_digit: str = Field("", pattern=r"^[0-9*#]?$")

    @field_validator("schema_version")
    @classmethod
    def _schema(cls, value: int) -> int:
        if value != SCHEMA_VERSION:
            raise ValueError(f"unsupported schema {value}; this build reads {SCHEMA_VERSION}")
        return value


_TRANSITIONS = (
    "next",
    "on_yes",
    "on_no",
    "on_ok",
    "on_fail",
    "on_found",
    "on_missing",
    "retry",
    "default",
)


def _check_graph(wf: Workflow, file: Path, tools: ToolRegistry) -> None:
    """Transitions, tools and their args, template fields: what a schema cannot express."""
    slot_types: dict[str, set[str]] = {}
    for n in wf.nodes.values():
        if isinstance(n, AskNode):
            slot_types.setdefault(n.slot.name, set()).add(n.slot.type)
    outputs = {
        v
        for n in wf.nodes.values()
        if isinstance(n, ToolNode) and n.tool in tools
        for v in tools.spec(n.tool).outputs
    }
    known = set(slot_types) | outputs | set(FACTS)
    _check_direction(wf, file)
    for intent, spec in wf.intents.items():
        if spec.start not in wf.nodes:
            raise WorkflowError(file, "", f"intents.{intent}.start", f"no node {spec.start!r}")
    for node_id, node in wf.nodes.items():
        for attr in _TRANSITIONS:
            target = getattr(node, attr, None)
            if target and target not in wf.nodes:
                raise WorkflowError(file, node_id, attr, f"no node {target!r}")
        if isinstance(node, BranchNode):
            for intent, target in node.on_intent.items():
                if intent not in wf.intents:
                    raise WorkflowError(
                        file, node_id, f"on_intent.{intent}", "not an intent of this workflow"
                    )
                if target not in wf.nodes:
                    raise WorkflowError(file, node_id, f"on_intent.{intent}", f"no node {target!r}")
        if isinstance(node, ToolNode):
            try:
                tools.check_args(node.tool, node.args, slot_types)
            except ArgsError as exc:
                raise WorkflowError(file, node_id, exc.field, exc.message) from exc
            if node.max_attempts > 1 and not node.retry:
                raise WorkflowError(file, node_id, "retry", "max_attempts > 1 needs a retry node")
        if isinstance(node, PciNode) and node.digits_min > node.digits_max:
            raise WorkflowError(file, node_id, "digits_min", "is greater than digits_max")
        try:
            names = {f for _, f, _, _ in string.Formatter().parse(node.text) if f}
        except ValueError as exc:
            raise WorkflowError(file, node_id, "text", f"bad template: {exc}") from exc
        unknown = sorted(names - known)
        if unknown:
            raise WorkflowError(
                file, node_id, "text", f"unknown template field(s) {', '.join(unknown)}"
            )


def _check_direction(wf: Workflow, file: Path) -> None:
    """Inbound: at least one intent, no outbound fields. Outbound: start and opt-out nodes."""
    if wf.direction == "inbound":
        if not wf.intents:
            raise WorkflowError(file, "", "intents", "an inbound workflow needs an intent")
        for name in ("start", "opt_out", "opt_out_digit"):
            if getattr(wf, name):
                raise WorkflowError(file, "", name, "only an outbound workflow has it")
        return
    if wf.intents:
        raise WorkflowError(file, "", "intents", "an outbound workflow is started by the dialler")
    for name in ("start", "opt_out"):
        target = getattr(wf, name)
        if not target:
            raise WorkflowError(file, "", name, "an outbound workflow needs it")
        if target not in wf.nodes:
            raise WorkflowError(file, "", name, f"no node {target!r}")
    keyed = [
        n
        for n in wf.nodes.values()
        if isinstance(n, AskNode) and (n.slot.dtmf or n.slot.type == "digits")
    ]
    if wf.opt_out_digit and keyed:
        raise WorkflowError(
            file, "", "opt_out_digit", "a slot takes keypad digits: the opt-out key would clash"
        )


def load_workflow(path: Path, tools: ToolRegistry) -> Workflow:
    """Read and validate one workflow file.

    Args:
        path: The YAML file.
        tools: The tools the agent has; tool nodes and their ``args`` are checked against it.

    Raises:
        WorkflowError: Naming the file, the node and the field at fault.
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise WorkflowError(path, "", "", f"cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise WorkflowError(path, "", "", f"not valid YAML{where}") from exc
    if not isinstance(data, dict):
        raise WorkflowError(path, "", "", "must be a YAML mapping")
    try:
        wf = Workflow.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err["loc"]]
        node = ""
        if len(loc) >= 2 and loc[0] == "nodes":
            node = loc[1]
            # Skip the discriminated-union tag pydantic inserts (e.g. "ask").
            rest = loc[3:] if len(loc) > 2 and loc[2] in _NODE_TAGS else loc[2:]
        else:
            rest = loc
        raise WorkflowError(path, node, ".".join(rest), err["msg"]) from exc
    _check_graph(wf, path, tools)
    return wf


_NODE_TAGS = {
    "say",
    "ask",
    "confirm",
    "tool",
    "branch",
    "kb_answer",
    "transfer",
    "message",
    "pci",
    "end",
}


@dataclass(frozen=True)
class WorkflowSet:
    """All loaded workflows, by id, with where each came from."""

    workflows: dict[str, Workflow]
    files: dict[str, Path]

    def intents(self) -> dict[str, tuple[Workflow, IntentSpec]]:
        """Every intent name mapped to its workflow and spec (outbound workflows have none)."""
        return {
            name: (wf, spec) for wf in self.workflows.values() for name, spec in wf.intents.items()
        }

    def outbound(self, workflow_id: str) -> Workflow:
        """The outbound workflow ``workflow_id``.

        Raises:
            KeyError: No such workflow, or it is not an outbound one.
        """
        wf = self.workflows[workflow_id]
        if wf.direction != "outbound":
            raise KeyError(f"workflow {workflow_id!r} is not an outbound workflow")
        return wf


def default_dir() -> Path:
    """The workflows shipped with the appliance (package data)."""
    return Path(__file__).resolve().parent / "workflows"


def load_workflows(directory: Path, tools: ToolRegistry) -> WorkflowSet:
    """Load every ``*.yaml`` file of ``directory``.

    Args:
        directory: Folder of workflow files.
        tools: The tools the agent has (see :func:`load_workflow`).

    Raises:
        WorkflowError: For the first invalid file, a duplicate workflow id or intent name, or
            an empty directory.
    """
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise WorkflowError(directory, "", "", "no workflow files (*.yaml)")
    workflows: dict[str, Workflow] = {}
    where: dict[str, Path] = {}
    intents: dict[str, Path] = {}
    for path in files:
        wf = load_workflow(path, tools)
        if wf.id in workflows:
            raise WorkflowError(
                path, "", "id", f"duplicate workflow id {wf.id!r} (also {where[wf.id]})"
            )
        for name in wf.intents:
            if name in intents:
                raise WorkflowError(
                    path, "", f"intents.{name}", f"intent also declared in {intents[name]}"
                )
            intents[name] = path
        workflows[wf.id] = wf
        where[wf.id] = path
    return WorkflowSet(workflows, where)


def as_dict(wf: Workflow) -> dict[str, Any]:
    """A JSON-able view of a workflow (for the admin page and tests)."""
    return wf.model_dump(by_alias=True)
