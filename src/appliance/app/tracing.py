"""OpenTelemetry traces of each caller turn, built from the call path's events (no content).

An event-bus observer (:class:`TurnTracer`): every :class:`~appliance.events.TurnLatency`
becomes one root span ``turn`` with a child span per stage, timed from the event's own time
(``t``, when the agent's first audio of the reply was queued) and its durations, in the
layout documented in :mod:`appliance.metrics.latency`:

* ``turn``: the caller's last voice (``t - voice_to_voice_s``) to ``t``.
* ``endpointing``: the voice end to the turn being declared over (``endpointing_s``).
* ``stt``: ``stt_s`` long, from the voice end (the VAD's stop hangover, where the STT really
  starts, is not on the event; the duration is exact, the start is the voice end).
* ``dialogue``: the turn's end to the receptionist's reply (``agent_s``); a ``tool <name>``
  child per :class:`~appliance.events.ToolCalled` of the turn, from the dialogue's start
  (or the previous tool's result) to the tool's result (the event carries no start time);
  the :class:`~appliance.events.IntentRecognized` of the turn as span events.
* ``reply``: the reply to the first audio (``reply_s``), with ``llm`` (time to first token,
  from the reply's start) and ``tts`` (time to first audio, ending at ``t``) children.

Attributes are fixed identifiers and numbers only: the opaque call id, stage durations, the
listening kind, intent/tool/workflow names, ``ok`` flags. Never a transcript, a digit, a tool's
arguments or result, or a caller number (:data:`appliance.events.CONTENT_FIELDS` are never
read).

Export (both off by default; nothing leaves the box unless a local collector is configured):
``telemetry.traces_file`` writes each finished span as one JSON line (the SDK's
``ReadableSpan.to_json``, compacted); ``telemetry.otlp_endpoint`` sends OTLP/HTTP to a
loopback or private-network collector, with the optional ``opentelemetry-exporter-otlp-proto-http``
package.

Why not pipecat's own tracing (``pipecat.utils.tracing``): its service spans put the
transcript (``transcript``), the LLM's messages and output (``input``, ``output``) and the
spoken text (``text``) into span attributes, i.e. PHI, and it is wired per pipeline task;
these spans are built from the events the call path already emits, with no content.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

from appliance.config.settings import TelemetrySettings
from appliance.errors import ConfigError
from appliance.events import CallEnded, Event, IntentRecognized, ToolCalled, TurnLatency

_NS = 1_000_000_000
SERVICE_NAME = "appliance-agent"


class JsonLinesSpanExporter(SpanExporter):
    """Appends each span as one compact JSON object per line to a local file.

    Args:
        path: The file (created with its directory, mode 0600 for a new file).
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._file: IO[str] | None = path.open("a", encoding="utf-8")

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Write the spans; a closed exporter or a write error reports failure."""
        lines = "".join(
            json.dumps(json.loads(span.to_json(indent=None)), separators=(",", ":")) + "\n"
            for span in spans
        )
        with self._lock:
            if self._file is None:
                return SpanExportResult.FAILURE
            try:
                self._file.write(lines)
                self._file.flush()
            except OSError:
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Close the file."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Everything is flushed on each export."""
        return True


def _private(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or (ip.is_private and not ip.is_unspecified) or ip.is_link_local


def check_local_endpoint(url: str) -> str:
    """Accept an OTLP/HTTP URL only when its host is loopback or a private-network address.

    A host name must resolve to such addresses only (RFC 1918 / RFC 4193 private ranges,
    loopback, link-local).

    Returns:
        The URL, unchanged.

    Raises:
        ConfigError: ``telemetry_endpoint`` when the URL is not http(s), has no host, or its
            host is (or resolves to) a public address: nothing leaves the box.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError("telemetry_endpoint", f"otlp_endpoint must be an http(s) URL: {url!r}")
    try:
        addresses = [host] if _is_ip(host) else _resolve(host, parts.port)
    except OSError as exc:
        raise ConfigError("telemetry_endpoint", f"cannot resolve {host!r}: {exc}") from exc
    public = [a for a in addresses if not _private(a)]
    if public or not addresses:
        raise ConfigError(
            "telemetry_endpoint",
            f"otlp_endpoint {host!r} is not a loopback or private address "
            f"({', '.join(public) or 'no address'}); traces never leave the local network",
        )
    return url


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _resolve(host: str, port: int | None) -> list[str]:
    infos = socket.getaddrinfo(host, port or 4318, proto=socket.IPPROTO_TCP)
    return sorted({str(info[4][0]).split("%")[0] for info in infos})


def exporters(settings: TelemetrySettings) -> list[SpanExporter]:
    """The exporters the settings ask for (empty: tracing off).

    Raises:
        ConfigError: A public OTLP endpoint, or an OTLP endpoint without the optional
            ``opentelemetry-exporter-otlp-proto-http`` package.
    """
    out: list[SpanExporter] = []
    if settings.traces_file is not None:
        out.append(JsonLinesSpanExporter(Path(settings.traces_file)))
    if settings.otlp_endpoint:
        url = check_local_endpoint(settings.otlp_endpoint)
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
                OTLPSpanExporter,
            )
        except ImportError as exc:
            raise ConfigError(
                "telemetry_endpoint",
                "otlp_endpoint needs the opentelemetry-exporter-otlp-proto-http package",
            ) from exc
        out.append(OTLPSpanExporter(endpoint=url))
    return out


def _ns(seconds: float) -> int:
    return int(round(seconds * _NS))


class TurnTracer:
    """Event-bus observer making one trace per caller turn; subscribe :meth:`on_event`.

    Args:
        processors: Span processors (e.g. a ``BatchSpanProcessor`` over an exporter).
    """

    def __init__(self, processors: Sequence[SpanProcessor]) -> None:
        self.provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
        for processor in processors:
            self.provider.add_span_processor(processor)
        self._tracer = self.provider.get_tracer("appliance.app.tracing")
        self._lock = threading.Lock()
        self._tools: dict[str, list[ToolCalled]] = defaultdict(list)
        self._intents: dict[str, list[IntentRecognized]] = defaultdict(list)
        self._turns: dict[str, int] = defaultdict(int)

    @classmethod
    def from_settings(cls, settings: TelemetrySettings) -> TurnTracer | None:
        """A tracer exporting as configured, or ``None`` when tracing is off.

        Raises:
            ConfigError: See :func:`exporters`.
        """
        chosen = exporters(settings)
        if not chosen:
            return None
        return cls([BatchSpanProcessor(e) for e in chosen])

    def on_event(self, event: Event) -> None:
        """Collect a turn's tool calls and intents; a ``TurnLatency`` makes its spans."""
        with self._lock:
            if isinstance(event, ToolCalled):
                self._tools[event.call_id].append(event)
                return
            if isinstance(event, IntentRecognized):
                self._intents[event.call_id].append(event)
                return
            if isinstance(event, CallEnded):
                self._tools.pop(event.call_id, None)
                self._intents.pop(event.call_id, None)
                self._turns.pop(event.call_id, None)
                return
            if not isinstance(event, TurnLatency):
                return
            tools = self._tools.pop(event.call_id, [])
            intents = self._intents.pop(event.call_id, [])
            self._turns[event.call_id] += 1
            index = self._turns[event.call_id]
        self._turn(event, index, tools, intents)

    def _turn(
        self,
        ev: TurnLatency,
        index: int,
        tools: list[ToolCalled],
        intents: list[IntentRecognized],
    ) -> None:
        end = ev.t
        known = [x for x in (ev.endpointing_s, ev.agent_s, ev.reply_s) if x is not None]
        v2v = ev.voice_to_voice_s if ev.voice_to_voice_s is not None else sum(known)
        start = end - v2v
        attrs: dict[str, str | int | float] = {
            "appliance.call_id": ev.call_id,
            "appliance.turn": index,
            "appliance.listening": ev.listening,
        }
        for name in ("endpointing_s", "stt_s", "agent_s", "reply_s", "llm_ttft_s", "tts_ttfa_s"):
            value = getattr(ev, name)
            if value is not None:
                attrs[f"appliance.{name}"] = float(value)
        attrs["appliance.voice_to_voice_s"] = float(v2v)
        root = self._tracer.start_span("turn", start_time=_ns(start), attributes=attrs)
        ctx = trace.set_span_in_context(root)

        def child(
            name: str,
            t0: float,
            t1: float,
            parent: Context = ctx,
            **a: str | int | float | bool,
        ) -> trace.Span:
            span = self._tracer.start_span(name, parent, start_time=_ns(t0), attributes=a)
            span.end(end_time=_ns(t1))
            return span

        if ev.endpointing_s is not None:
            child("endpointing", start, start + ev.endpointing_s)
        if ev.stt_s is not None:
            child("stt", start, start + ev.stt_s)
        turn_end = start + ev.endpointing_s if ev.endpointing_s is not None else None
        if turn_end is not None and ev.agent_s is not None:
            dialogue_end = turn_end + ev.agent_s
            dialogue = self._tracer.start_span("dialogue", ctx, start_time=_ns(turn_end))
            for intent in intents:
                dialogue.add_event(
                    "intent",
                    {
                        "intent": intent.intent,
                        "confidence": float(intent.confidence),
                        "method": intent.method,
                        "workflow": intent.workflow,
                        "node": intent.node,
                    },
                    timestamp=_ns(min(max(intent.t, turn_end), dialogue_end)),
                )
            dctx = trace.set_span_in_context(dialogue)
            cursor = turn_end
            for tool in tools:
                done = min(max(tool.t, cursor), dialogue_end)
                child(f"tool {tool.tool}", cursor, done, dctx, tool=tool.tool, ok=tool.ok)
                cursor = done
            dialogue.end(end_time=_ns(dialogue_end))
        else:
            for tool in tools:  # no dialogue timing: the tool's result time only
                child(f"tool {tool.tool}", tool.t, tool.t, tool=tool.tool, ok=tool.ok)
        if ev.reply_s is not None:
            reply_start = end - ev.reply_s
            reply = self._tracer.start_span("reply", ctx, start_time=_ns(reply_start))
            rctx = trace.set_span_in_context(reply)
            if ev.llm_ttft_s is not None:
                child("llm", reply_start, reply_start + ev.llm_ttft_s, rctx)
            if ev.tts_ttfa_s is not None:
                child("tts", end - ev.tts_ttfa_s, end, rctx)
            reply.end(end_time=_ns(end))
        elif ev.tts_ttfa_s is not None:
            child("tts", end - ev.tts_ttfa_s, end)
        root.end(end_time=_ns(end))

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Export every finished span now."""
        return self.provider.force_flush(int(timeout_s * 1000))

    def shutdown(self) -> None:
        """Flush and close the exporters."""
        self.provider.shutdown()
