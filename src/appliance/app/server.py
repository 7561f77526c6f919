"""``appliance serve``: the agent process.

Loads the models once, starts the pjsua2 user agent, runs one pipecat pipeline per answered
call, writes call metadata (no content) and, on SIGTERM, drains: new INVITEs get ``503`` with
``Retry-After`` while active calls finish, bounded by ``sip.drain_timeout_s``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path

from pipecat.frames.frames import TTSSpeakFrame
from pipecat.workers.runner import WorkerRunner

from appliance.agent.dialog import DialogManager, Next, Reply
from appliance.agent.runtime import AgentRuntime, load_agent
from appliance.app.control_ops import start_control
from appliance.app.liveness import Liveness, RunMarker, install_test_faults
from appliance.app.memory import freeze_startup_objects, return_freed_memory
from appliance.app.outbound import OutboundService, start_outbound
from appliance.app.sdnotify import SystemdNotifier
from appliance.app.tracing import TurnTracer
from appliance.app.transfer import Transfers
from appliance.app.webrtc import register_webrtc
from appliance.app.witness import checkpoint_loop
from appliance.audit.observer import AuditObserver
from appliance.audit.service import open_audit, retention_sweep
from appliance.audit.store import AuditError
from appliance.config.settings import ApplianceSettings
from appliance.errors import ConfigError
from appliance.events import (
    CallAnswered,
    CallEnded,
    CallOffered,
    CallRejected,
    ConfigChanged,
    Event,
    EventBus,
    JsonlEventSink,
    MediaStats,
    ServiceStarted,
)
from appliance.media.sip import CallHandle, SipUserAgent
from appliance.metrics.loop_lag import LoopLagMonitor
from appliance.metrics.store import CallMetadataStore
from appliance.models.engines import ModelSet, load_models
from appliance.pipeline.builder import (
    CallPipeline,
    build_call_pipeline,
    fixed_phrases,
    initial_messages,
)
from appliance.pipeline.phrase_cache import PhraseCache
from appliance.policy.scoring import score_call

_LOGGER = logging.getLogger(__name__)

#: How long to wait for RTP media after answering before giving up on a call, in s.
MEDIA_TIMEOUT_S = 5.0

AUDIT_FAILURE_TEXT = (
    "I'm sorry, we have a technical problem and can't continue this call. "
    "Please call back in a few minutes. Goodbye."
)


class ApplianceServer:
    """The agent process: SIP user agent plus per-call pipelines.

    Args:
        settings: Validated settings.
        test_events: If set, write every event (content included) as JSON lines here.
            For tests only; never in production.
        models: Pre-loaded engines (tests share them); loaded from settings when ``None``.
        reload: Re-reads the settings on SIGHUP; a bad file is refused and serving goes on.
        worker: The worker number behind the SIP edge (its own run marker), or ``None``.
    """

    def __init__(
        self,
        settings: ApplianceSettings,
        *,
        test_events: Path | None = None,
        models: ModelSet | None = None,
        reload: Callable[[], ApplianceSettings] | None = None,
        worker: int | None = None,
    ) -> None:
        self.settings = settings
        self._reload = reload
        self.bus = EventBus()
        self.models = models
        self._test_events = test_events
        self._ua: SipUserAgent | None = None
        self._calls: dict[str, asyncio.Task[None]] = {}
        self._stop = asyncio.Event()
        self._bg: set[asyncio.Task[object]] = set()
        self._notifier = SystemdNotifier()
        self.store: CallMetadataStore | None = None
        self.phrases: PhraseCache | None = None
        self.audit: AuditObserver | None = None
        self._active: dict[str, tuple[CallHandle, object]] = {}
        self.agent: AgentRuntime | None = None
        self._call_events: dict[str, list[Event]] = {}
        self.liveness: Liveness | None = None
        self.transfers: Transfers | None = None
        self.outbound: OutboundService | None = None
        #: How late the event loop runs what is due (started once serving).
        self.loop_lag = LoopLagMonitor()
        marker = "agent.running" if worker is None else f"agent-{worker}.running"  # ADR 0020
        self._marker = RunMarker(Path(settings.store.metadata_db).with_name(marker))

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT, then drain. Returns the process exit code.

        Raises:
            ModelError: A model file is missing or broken (before serving).
            MediaError: SIP cannot bind.
        """
        loop = asyncio.get_running_loop()
        # From the first moment: a stop asked for while models load ends the run cleanly once
        # they have (no call is taken), instead of killing the process half-started.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        if self.models is None:
            self.models = await asyncio.to_thread(load_models, self.settings.models)
        self.agent = await asyncio.to_thread(self._load_agent, self.settings)
        await asyncio.to_thread(self._warm)
        _LOGGER.info("%d start-up objects frozen out of the collector", freeze_startup_objects())
        self.store = CallMetadataStore(self.settings.store.metadata_db)
        self.bus.subscribe(self.store.on_event)
        self.bus.subscribe(self._collect)
        if (tracer := TurnTracer.from_settings(self.settings.telemetry)) is not None:
            self.bus.subscribe(tracer.on_event)  # per-turn OpenTelemetry spans, no content
        if self.settings.audit.enabled:
            log = await asyncio.to_thread(open_audit, self.settings.audit)
            self.audit = AuditObserver(
                log, on_failure=lambda _exc: loop.call_soon_threadsafe(self._fail_closed)
            )
            self.bus.subscribe(self.audit)
            retention = asyncio.create_task(self._retention_loop())
            self._bg.add(retention)
            retention.add_done_callback(self._bg.discard)
            # Signed checkpoints every [audit] checkpoint_interval_s, pushed to witness_url.
            signer = asyncio.create_task(checkpoint_loop(self.audit, self.settings.audit))
            self._bg.add(signer)
            signer.add_done_callback(self._bg.discard)
        self._record_start()
        # The admin page's control socket (appliance.app.control_ops); serving goes on without.
        control = await start_control(self)
        webrtc = register_webrtc(self, control) if control is not None else None  # test calls
        sink = JsonlEventSink(self._test_events) if self._test_events else None
        if sink is not None:
            _LOGGER.warning("TEST EVENT STREAM ENABLED: never use --test-events in production")
            self.bus.subscribe(sink)
        self._ua = SipUserAgent(
            self.settings.sip, loop, self._on_call, on_rejected=self._on_rejected
        )
        if webrtc is not None:
            self._ua.other_callers = webrtc.active  # test calls take SIP call slots too
        self._ua.start()
        self._ua.draining = self._stop.is_set()
        self.transfers = Transfers(self._ua, lambda: self.settings, self.bus.emit)
        self.outbound = start_outbound(self, control)  # [outbound] reminder calls
        loop.add_signal_handler(signal.SIGHUP, self.reload_settings)
        install_test_faults(loop, self._ua)
        self.liveness = Liveness(
            self._ua,
            self.settings.sip.liveness_timeout_s,
            notify=self._notifier.notify,
            watchdog_interval_s=self._notifier.watchdog_interval_s,
        )
        live = asyncio.create_task(self.liveness.run())
        self._bg.add(live)
        live.add_done_callback(self._bg.discard)
        self.loop_lag.start()  # issue 13 item 4: the loop's lag, in ``status`` and /metrics
        self._notifier.notify("READY=1", "STATUS=accepting calls")
        _LOGGER.info(
            "ready: accepting SIP calls on %s (max %d concurrent)",
            self.settings.sip.bind,
            self.settings.sip.max_calls,
        )
        try:
            await self._stop.wait()
            await self._drain()
        finally:
            if control is not None:
                await control.close()  # before the audit log closes under its requests
            live.cancel()
            self.loop_lag.stop()
            if self.outbound is not None:
                self.outbound.close()
            self.liveness.disarm()
            # The process exits right after (cli: os._exit); see SipUserAgent.stop.
            self._ua.stop(destroy=False)
            self.store.close()
            if self.audit is not None:
                self.audit.close()
                self.audit.log.close()
            if sink is not None:
                sink.close()
        self._marker.end()
        _LOGGER.info("stopped")
        return 0

    def reload_settings(self) -> bool:
        """Re-read the configuration (SIGHUP). New calls use it; SIP changes need a restart.

        A missing, corrupt or invalid file is refused with an error naming it, and the
        process keeps serving with the settings it has.
        """
        if self._reload is None:
            return False
        try:
            new = self._reload()
        except ConfigError as exc:
            _LOGGER.error("configuration reload refused, still serving: %s", exc.message)
            self.bus.emit(ConfigChanged("", accepted=False, detail=exc.code))
            return False
        try:
            agent = self._load_agent(new, self.agent)
        except ConfigError as exc:
            _LOGGER.error("workflow reload refused, keeping the last good set: %s", exc.message)
            self.bus.emit(ConfigChanged("", accepted=False, detail=exc.code))
            return False
        self.agent = agent
        if self.phrases is not None:
            # New workflow texts: render in the background; until then they are synthesised live.
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None:
                task = loop.create_task(
                    asyncio.to_thread(self.phrases.render, agent.fixed_phrases())
                )
                self._bg.add(task)
                task.add_done_callback(self._bg.discard)
        if new.sip != self.settings.sip or new.models != self.settings.models:
            _LOGGER.warning("configuration reloaded; [sip] and [models] changes need a restart")
            new = new.model_copy(update={"sip": self.settings.sip, "models": self.settings.models})
        self.settings = new
        _LOGGER.info("configuration reloaded")
        self.bus.emit(ConfigChanged("", accepted=True, detail="reloaded"))
        return True

    def request_stop(self) -> None:
        """Begin draining (what SIGTERM does): refuse new calls at once, then wait."""
        if self._ua is not None:
            self._ua.draining = True
        self._stop.set()

    def _load_agent(
        self, settings: ApplianceSettings, previous: AgentRuntime | None = None
    ) -> AgentRuntime:
        assert self.models is not None and self.models.embedder is not None
        calendar = previous.calendar if previous is not None else None
        agent = load_agent(
            settings,
            self.models.embedder.encode,
            calendar=calendar,
            complete_json=self.models.llm.complete_json,
        )
        _LOGGER.info(
            "workflows loaded: %s",
            ", ".join(f"{w.id} v{w.version}" for w in agent.workflows.workflows.values()),
        )
        return agent

    def _record_start(self) -> None:
        """Put this start, and any version change since the last one, on the audit record."""
        from importlib.metadata import PackageNotFoundError, version

        try:
            current = version("appliance")
        except PackageNotFoundError:
            current = "unknown"
        marker = Path(self.settings.store.metadata_db).with_name("appliance.version")
        previous = marker.read_text().strip() if marker.exists() else ""
        previous_exit = self._marker.begin()
        if previous_exit:
            _LOGGER.warning("the last run ended without a clean stop: this start is a restart")
        self.bus.emit(
            ServiceStarted(
                "",
                version=current,
                previous_version="" if previous == current else previous,
                previous_exit=previous_exit,
            )
        )
        try:
            marker.write_text(current + "\n")
        except OSError:
            _LOGGER.warning("could not record the running version in %s", marker)
        if previous and previous != current:
            _LOGGER.info("software version changed from %s to %s", previous, current)
        self._record_firstboot()

    def _record_firstboot(self) -> None:
        """Put first boot's decisions (a trunk file applied or refused) on the audit record.

        First boot cannot open the audit log; it leaves them in a pending file next to it
        (:mod:`appliance.app.firstboot.records`), removed once they are recorded.
        """
        from appliance.app.firstboot.records import PENDING_NAME, clear_pending, read_pending

        if self.audit is None:
            return
        pending = Path(self.settings.audit.db).with_name(PENDING_NAME)
        for record in read_pending(pending):
            detail = f"firstboot {record.at}: {record.detail}"
            self.bus.emit(ConfigChanged("", accepted=record.accepted, detail=detail))
            if not record.accepted:
                _LOGGER.warning("first boot refused a settings change (see the audit log)")
        clear_pending(pending)

    def _collect(self, event: Event) -> None:
        """Keep each live call's events for its post-call score."""
        if event.call_id in self._call_events:
            self._call_events[event.call_id].append(event)

    def _warm(self) -> None:
        assert self.models is not None and self.agent is not None
        t0 = time.perf_counter()
        self.models.llm.warm_messages(initial_messages(self.settings))
        _LOGGER.info("LLM prompt prefix cached in %.2f s", time.perf_counter() - t0)
        t0 = time.perf_counter()
        m = self.settings.models
        self.phrases = PhraseCache(self.models.tts, m.tts_speed, m.phrase_cache, m.tts_voice)
        phrases = fixed_phrases(self.settings, self.agent.fixed_phrases())
        # Every fixed phrase is ready before "ready": calls never wait for their synthesis, and
        # they play even if the TTS fails later. The disk cache makes this a one-off per voice.
        # Whole phrases too: replies that end in a transfer or hang-up are spoken as one unit.
        count = self.phrases.render(phrases, whole=True)
        _LOGGER.info(
            "%d fixed phrases ready (%d synthesised) in %.2f s",
            len(phrases),
            count,
            time.perf_counter() - t0,
        )

    async def _drain(self) -> None:
        assert self._ua is not None
        self._ua.draining = True
        self._notifier.notify("STOPPING=1", "STATUS=draining")
        active = len(self._calls)
        _LOGGER.info("draining: refusing new calls, waiting for %d active call(s)", active)
        deadline = time.monotonic() + self.settings.sip.drain_timeout_s
        while self._calls and time.monotonic() < deadline:  # noqa: ASYNC110 - bounded poll
            await asyncio.sleep(0.2)
        if self._calls:
            _LOGGER.warning("drain timeout: ending %d call(s)", len(self._calls))
            for task in list(self._calls.values()):
                task.cancel()
            await asyncio.gather(*self._calls.values(), return_exceptions=True)

    async def _retention_loop(self) -> None:
        """Crypto-shred content past its retention period, periodically (a timer)."""
        assert self.audit is not None
        while True:
            try:
                audit = self.settings.audit
                count = await asyncio.to_thread(
                    retention_sweep,
                    self.audit.log,
                    audit.transcript_retention_days,
                    consent_retention_days=audit.consent_retention_days,
                )
                if count:
                    _LOGGER.info("retention: %d data key(s) destroyed", count)
            except AuditError:
                _LOGGER.exception("retention sweep failed")
                self._fail_closed()
                return
            await asyncio.sleep(self.settings.audit.retention_sweep_s)

    def _fail_closed(self) -> None:
        """The audit log cannot be written: take no new calls, end current ones politely."""
        _LOGGER.critical(
            "audit log unavailable: refusing new calls, ending %d call(s)", len(self._active)
        )
        if self._ua is not None:
            self._ua.draining = True
        for handle, worker in list(self._active.values()):
            task = asyncio.create_task(self._end_with_notice(handle, worker))
            self._bg.add(task)
            task.add_done_callback(self._bg.discard)

    async def _end_with_notice(self, handle: CallHandle, worker: object) -> None:
        await worker.queue_frame(TTSSpeakFrame(AUDIT_FAILURE_TEXT))  # type: ignore[attr-defined]
        await asyncio.sleep(9.0)
        handle.hangup()

    def _on_rejected(self, peer: str, status: int, reason: str) -> None:
        self.bus.emit(CallRejected("-", status=status, reason=reason))

    def _on_call(self, handle: CallHandle, channel: str = "sip") -> None:
        """Start a call's pipeline; ``channel`` is ``"sip"`` or ``"webrtc"`` (app.webrtc)."""
        self._call_events[handle.call_id] = []  # every event of the call feeds its score
        self.bus.emit(CallOffered(handle.call_id, source_ip=handle.peer_ip))
        task = asyncio.create_task(self._run_call(handle, channel), name=f"call-{handle.call_id}")
        self._calls[handle.call_id] = task
        task.add_done_callback(lambda _t: self._calls.pop(handle.call_id, None))

    async def _run_call(
        self,
        handle: CallHandle,
        channel: str = "sip",
        *,
        dialog: DialogManager | None = None,
        greeting: str | None = None,
    ) -> None:
        assert self.models is not None
        started = time.time()
        disposition = "caller_hangup"
        emit = self.bus.emit
        try:
            await asyncio.wait_for(handle.media_ready.wait(), MEDIA_TIMEOUT_S)
        except TimeoutError:
            _LOGGER.warning("call %s: no media after answer, hanging up", handle.call_id)
            handle.hangup()
            emit(CallEnded(handle.call_id, disposition="no_media", duration_s=0.0))
            self._call_events.pop(handle.call_id, None)
            return
        emit(CallAnswered(handle.call_id, codec=handle.codec, channel=channel))
        holder: dict[str, CallPipeline] = {}
        agent = self.agent
        assert agent is not None

        async def on_after(reply: Reply) -> None:
            nonlocal disposition
            call = holder["call"]
            if reply.next is Next.HANGUP:
                disposition = "agent_hangup"
                handle.hangup()
            elif reply.next is Next.PCI and reply.pci is not None:

                async def pci_done(ok: bool) -> None:
                    await call.receptionist.speak(
                        await call.receptionist.ask(call.receptionist.dialog.pci_done, ok)
                    )

                call.pci.start(
                    pci_done,
                    digits_max=reply.pci.digits_max,
                    timeout_s=reply.pci.timeout_s,
                    handoff_id=reply.pci.handoff_id,
                )
            elif reply.next is Next.TRANSFER and reply.transfer is not None:
                assert self.transfers is not None
                if await self.transfers.run(handle, call, reply.transfer):
                    disposition = "transferred"

        # Building loads per-call ONNX sessions (VAD, smart-turn): keep it off the event loop.
        try:
            call = await asyncio.to_thread(
                build_call_pipeline,
                handle.call_id,
                handle.bridge,
                self.models,
                self.settings,
                emit,
                on_after,
                agent,
                self.phrases,
                dialog=dialog,
                greeting=greeting,
            )
        except Exception:
            _LOGGER.exception(
                "call %s: pipeline could not be built, ending the call", handle.call_id
            )
            handle.hangup(500)
            emit(CallEnded(handle.call_id, disposition="pipeline_error", duration_s=0.0))
            self._call_events.pop(handle.call_id, None)
            return
        holder["call"] = call
        self._active[handle.call_id] = (handle, call.task)
        transport_in = call.transport.input()

        def on_dtmf(digit: str, method: str) -> None:
            task = asyncio.create_task(transport_in.push_dtmf(digit, method))
            self._bg.add(task)
            task.add_done_callback(self._bg.discard)

        handle.on_dtmf = on_dtmf
        runner = WorkerRunner(handle_sigint=False, handle_sigterm=False)
        await runner.add_workers(call.task)
        run = asyncio.create_task(runner.run())
        hangup = asyncio.create_task(handle.disconnected.wait())
        try:
            done, _ = await asyncio.wait(
                {run, hangup},
                timeout=self.settings.sip.max_call_duration_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if not done:
                disposition = "max_duration"
                handle.hangup()
        except asyncio.CancelledError:
            disposition = "drain_timeout"
            handle.hangup()
            raise
        finally:
            hangup.cancel()
            if not run.done():
                await call.task.cancel()
                try:
                    await asyncio.wait_for(run, 5)
                except (TimeoutError, asyncio.CancelledError):
                    run.cancel()
            handle.hangup()
            self._active.pop(handle.call_id, None)
            call.tracker.finish()
            self._media_stats(handle)
            disposition = handle.end_reason or disposition  # no_ack, rtp_timeout (ADR 0018)
            emit(
                CallEnded(
                    handle.call_id,
                    disposition=disposition,
                    duration_s=round(time.time() - started, 3),
                )
            )
            self._score(handle.call_id)
            _LOGGER.info("call %s ended (%s)", handle.call_id, disposition)
            trim = asyncio.create_task(asyncio.to_thread(return_freed_memory))
            self._bg.add(trim)
            trim.add_done_callback(self._bg.discard)

    def _media_stats(self, handle: CallHandle) -> None:
        """Export the call's media counters (metrics store, audit); log failures once."""
        st = handle.bridge.stats
        self.bus.emit(
            MediaStats(
                handle.call_id,
                rx_frames=st.rx_frames,
                rx_dropped=st.rx_dropped,
                tx_frames=st.tx_frames,
                tx_underruns=st.tx_underruns,
                callback_errors=st.callback_errors,
            )
        )
        if st.callback_errors:
            _LOGGER.warning(
                "call %s: %d media callback error(s) (%d of %d received frames dropped)",
                handle.call_id,
                st.callback_errors,
                st.rx_dropped,
                st.rx_frames,
            )

    def _score(self, call_id: str) -> None:
        """Score the call (100% of calls, rules first) and record it."""
        events = self._call_events.pop(call_id, [])
        try:
            self.bus.emit(score_call(events))
        except Exception:  # noqa: BLE001 - a scoring bug must not disturb the next call
            _LOGGER.exception("call %s: scoring failed", call_id)
