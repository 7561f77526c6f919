"""The agent's tool registry: tools by name, their parameters, arguments from the workflow.

A ``tool`` node of a workflow names a registered tool and maps the tool's parameters to slots
collected by the workflow's ``ask`` nodes::

    verify:
      type: tool
      tool: identity.verify
      args: {name: "{patient_name}", birth_date: "{birth_date}"}

Each ``args`` value is a reference to exactly one slot, ``"{slot_name}"``. When the workflows
are loaded, :meth:`ToolRegistry.check_args` refuses an unknown tool, an argument the tool does
not take, a required parameter left out, and a value that is not a reference to a slot of a
type the parameter accepts (:mod:`appliance.agent.workflow` turns that into a
:class:`~appliance.agent.workflow.WorkflowError` naming file, node and field). At call time
:meth:`ToolRegistry.call` resolves the references to the slots' typed values (a ``date`` for a
``date_of_birth`` slot, a ``datetime`` for ``date_time``, a ``str`` for ``person_name``),
derives **one** idempotency key for the call, runs the tool with it (the scheduling tools pass
it to the calendar) and records :class:`~appliance.events.ToolCalled` with the same key.

The tools themselves live in :mod:`appliance.agent.scheduling_tools`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from appliance.agent.calendar import (
    Appointment,
    Patient,
    SchedulingAdapter,
    SchedulingError,
    Slot,
    idempotency_key,
)
from appliance.agent.calendar.adapter import json_default
from appliance.events import Event, ToolCalled

_LOGGER = logging.getLogger(__name__)

_REFERENCE = re.compile(r"^\{([a-z][a-z0-9_]*)\}$")


@dataclass(frozen=True)
class Param:
    """One parameter of a tool.

    Attributes:
        name: The key in a tool node's ``args``.
        slot_types: Slot types whose values the tool accepts here (see
            :data:`appliance.agent.workflow.SLOT_TYPES`).
        required: Whether a tool node must map it.
    """

    name: str
    slot_types: tuple[str, ...]
    required: bool = True


@dataclass
class ToolSession:
    """What the tools of one call share: the verified patient, the appointment and slot in hand.

    The patient stays verified for the rest of the call; the appointment and slot belong to
    one workflow (:meth:`end_workflow`).
    """

    patient: Patient | None = None
    appointment: Appointment | None = None
    slot: Slot | None = None
    #: On a reminder call the box placed: the appointment it is about (nothing of it is
    #: disclosed before ``reminder.verify`` matched its patient's date of birth).
    reminder_appointment_id: str = ""

    def subject(self, records: Iterable[str]) -> dict[str, str]:
        """The IDs of the named records in hand (part of a call's idempotency key; no PHI).

        Args:
            records: Any of ``"patient"``, ``"appointment"``, ``"slot"``.

        Returns:
            Record name to ID (``""`` when none is in hand).

        Raises:
            AttributeError: An unknown record name.
        """
        ids = {}
        for name in records:
            record = getattr(self, name)
            ids[name] = record.id if record is not None else ""
        return ids

    def end_workflow(self) -> None:
        """Forget the workflow's appointment and slot (the verified patient stays)."""
        self.appointment = None
        self.slot = None


@dataclass(frozen=True)
class ToolCall:
    """One call of one tool: its resolved arguments, its idempotency key and what it may use.

    Attributes:
        tool: The tool's name.
        arguments: Parameter name to the slot's typed value (absent when the slot is unfilled).
        key: The call's idempotency key (64 hex characters): pass it to every mutating
            calendar call; it is also the key of the call's ``ToolCalled`` event.
        call_id: The phone call.
        workflow: The workflow running the tool.
        attempt: 1 for the first run of this node in the workflow, 2 after one failure, ...
        now: Naive local clinic time of the call.
        calendar: The scheduling adapter, ``None`` when the appliance has none.
        session: The call's shared tool state, which the tool may update.
        emit: The call's event sink.
    """

    tool: str
    arguments: Mapping[str, Any]
    key: str
    call_id: str
    workflow: str
    attempt: int
    now: datetime
    calendar: SchedulingAdapter | None
    session: ToolSession
    emit: Callable[[Event], None]


@dataclass(frozen=True)
class ToolResult:
    """What a tool returns.

    Attributes:
        ok: Success (the workflow goes to ``on_ok``, else ``on_fail`` or ``retry``).
        result: JSON-able details for the audit record (content: sealed, may hold IDs).
        outputs: Template variables for the workflow's texts; only names the tool declares in
            :attr:`ToolSpec.outputs`.
    """

    ok: bool
    result: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)


ToolFn = Callable[[ToolCall], ToolResult]
"""A tool: runs one :class:`ToolCall`; may raise :class:`SchedulingError` (a failed result)."""


@dataclass(frozen=True)
class ToolSpec:
    """A registered tool.

    Attributes:
        name: Dotted name used by workflows, e.g. ``"calendar.book"``.
        run: The implementation.
        params: The parameters a tool node may (or must) map in ``args``.
        outputs: Template variables its success sets (the loader checks texts against them).
        needs_identity: Refuse to run (``identity_not_verified``) until the caller's identity
            was verified in this call: identity before PHI, enforced here and not left to the
            workflow author.
        acts_on: The :class:`ToolSession` records the tool's request is about (``"patient"``,
            ``"appointment"``, ``"slot"``); their IDs are part of the idempotency key, the
            records the tool itself changes are not (so a replay keeps the key).
    """

    name: str
    run: ToolFn
    params: tuple[Param, ...] = ()
    outputs: tuple[str, ...] = ()
    needs_identity: bool = False
    acts_on: tuple[str, ...] = ()


class ArgsError(ValueError):
    """A tool node's ``tool`` or ``args`` do not match the registry.

    Attributes:
        field: The node field at fault: ``"tool"``, ``"args"`` or ``"args.<name>"``.
        message: What is wrong (no caller content: workflows are configuration).
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def slot_reference(template: str) -> str | None:
    """The slot name of an ``args`` value ``"{slot_name}"``, or ``None`` if it is not one."""
    match = _REFERENCE.match(template.strip())
    return match.group(1) if match else None


class ToolRegistry:
    """The tools a workflow may call, by name.

    Args:
        specs: Tools to register at once.

    Raises:
        ValueError: Two tools share a name.
    """

    def __init__(self, specs: Iterable[ToolSpec] = ()) -> None:
        self._specs: dict[str, ToolSpec] = {}
        for spec in specs:
            self.register(spec)

    def register(self, spec: ToolSpec) -> None:
        """Add a tool.

        Raises:
            ValueError: A tool of that name is registered, or two parameters share a name.
        """
        if spec.name in self._specs:
            raise ValueError(f"tool {spec.name!r} is already registered")
        names = [p.name for p in spec.params]
        if len(set(names)) != len(names):
            raise ValueError(f"tool {spec.name!r} declares a parameter twice")
        self._specs[spec.name] = spec

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def names(self) -> list[str]:
        """Registered tool names, in registration order."""
        return list(self._specs)

    def spec(self, name: str) -> ToolSpec:
        """The tool registered under ``name``.

        Raises:
            KeyError: No such tool.
        """
        return self._specs[name]

    def check_args(
        self, tool: str, args: Mapping[str, str], slot_types: Mapping[str, set[str]]
    ) -> None:
        """Check a tool node against the registry (at workflow load time).

        Args:
            tool: The node's ``tool``.
            args: The node's ``args``: parameter name to ``"{slot_name}"``.
            slot_types: Every slot the workflow's ``ask`` nodes collect, mapped to the types
                they declare for it.

        Raises:
            ArgsError: Unknown tool (field ``tool``); an argument the tool does not take, a
                value that is not a slot reference, a reference to a slot no ``ask`` node
                collects or of a type the parameter does not accept (field ``args.<name>``); a
                required parameter not mapped (field ``args.<name>``).
        """
        spec = self._specs.get(tool)
        if spec is None:
            raise ArgsError("tool", f"unknown tool {tool!r}; known: {', '.join(self._specs)}")
        params = {p.name: p for p in spec.params}
        for name, template in args.items():
            param = params.get(name)
            if param is None:
                takes = ", ".join(params) or "no arguments"
                raise ArgsError(f"args.{name}", f"{tool} does not take {name!r}; it takes {takes}")
            slot = slot_reference(template)
            if slot is None:
                raise ArgsError(f"args.{name}", 'must be a reference to one slot, "{slot_name}"')
            if slot not in slot_types:
                raise ArgsError(f"args.{name}", f"no ask node collects slot {slot!r}")
            wrong = sorted(slot_types[slot] - set(param.slot_types))
            if wrong:
                raise ArgsError(
                    f"args.{name}",
                    f"slot {slot!r} is {', '.join(wrong)}; {tool} takes "
                    f"{' or '.join(param.slot_types)} here",
                )
        for param in spec.params:
            if param.required and param.name not in args:
                raise ArgsError(f"args.{param.name}", f"{tool} needs this argument")

    def call(
        self,
        tool: str,
        args: Mapping[str, str],
        slots: Mapping[str, object],
        *,
        call_id: str,
        workflow: str,
        run: int,
        node: str,
        attempt: int,
        now: datetime,
        calendar: SchedulingAdapter | None,
        session: ToolSession,
        emit: Callable[[Event], None],
    ) -> ToolResult:
        """Run one tool for a tool node and record it as one ``ToolCalled`` event.

        The idempotency key covers the call, the tool, the workflow run and node, the resolved
        arguments and the records the tool acts on (:attr:`ToolSpec.acts_on`): running the same
        node again on the same request (a repeated turn) gives the same key, so the calendar
        returns the first result instead of acting twice; a later workflow, other arguments
        or other records give another key. A tool failure never raises: it is a failed result.

        Args:
            tool: A registered tool (the loader checked it).
            args: The node's ``args``.
            slots: The workflow's filled slots: name to typed value.
            call_id: The phone call.
            workflow: The workflow's ID.
            run: Which workflow start of the call this is (1, 2, ...).
            node: The tool node's ID.
            attempt: See :attr:`ToolCall.attempt`.
            now: Naive local clinic time.
            calendar: The scheduling adapter, or ``None``.
            session: The call's shared tool state.
            emit: Event sink; receives the ``ToolCalled`` event (and the tool's own events).

        Returns:
            The tool's result; ``ok`` false with ``result["error"]`` set when an argument is
            missing (``missing_argument``), identity is required first
            (``identity_not_verified``), the calendar failed (its error code) or the tool
            raised (the exception's type name).

        Raises:
            KeyError: ``tool`` is not registered.
        """
        spec = self._specs[tool]
        arguments = {
            name: slots[ref]
            for name, template in args.items()
            if (ref := slot_reference(template)) is not None and ref in slots
        }
        scope = {"workflow": workflow, "run": run, "node": node}
        key = idempotency_key(
            call_id,
            tool,
            {"arguments": arguments, "scope": scope, "subject": session.subject(spec.acts_on)},
        )
        result = self._run(
            spec,
            ToolCall(
                tool, arguments, key, call_id, workflow, attempt, now, calendar, session, emit
            ),
        )
        emit(
            ToolCalled(
                call_id,
                tool=tool,
                ok=result.ok,
                idempotency_key=key,
                arguments=json.dumps(arguments, sort_keys=True, default=json_default),
                result=json.dumps(result.result, sort_keys=True, default=str),
            )
        )
        return result

    @staticmethod
    def _run(spec: ToolSpec, call: ToolCall) -> ToolResult:
        missing = [p.name for p in spec.params if p.required and p.name not in call.arguments]
        if missing:
            return ToolResult(False, {"error": "missing_argument", "argument": missing[0]})
        if spec.needs_identity and call.session.patient is None:
            return ToolResult(False, {"error": "identity_not_verified"})
        try:
            result = spec.run(call)
        except SchedulingError as exc:
            return ToolResult(False, {"error": exc.code})
        except Exception as exc:  # noqa: BLE001 - a tool failure must not end the call
            # The type only: an exception's message may quote the caller's words.
            _LOGGER.error("call %s: tool %s raised %s", call.call_id, spec.name, type(exc).__name__)
            return ToolResult(False, {"error": type(exc).__name__})
        undeclared = sorted(set(result.outputs) - set(spec.outputs))
        if undeclared:
            _LOGGER.error("call %s: tool %s set undeclared outputs", call.call_id, spec.name)
            return ToolResult(False, {"error": "undeclared_output", "outputs": undeclared})
        return result
