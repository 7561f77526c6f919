"""Benchmark: voice-to-voice of browser test calls (WebRTC) next to SIP calls, same agent.

Run with ``.venv/bin/python -m benchmarks.webrtc_call [--quick]``. One ``appliance serve``
takes both kinds of call, one after the other, with the same caller turns (the OSR Harvard
sentences, ``shared/data/speech/osr``):

* WebRTC: a scripted aiortc "browser" (:mod:`tests.kit.webrtc`) placed through the control op
  ``webrtc.offer``, as the admin page does; Opus over DTLS-SRTP on loopback.
* SIP (the reference): sipp over RTP/PCMU on loopback, the script of
  :func:`benchmarks.wire.conversation_call`.

Figures per channel, P50/P90 in seconds:

* in-process voice-to-voice, from the agent's ``TurnLatency`` events (VAD stop to first agent
  audio, plus the VAD hangover; the same clock for both channels);
* on the wire: caller's last voiced frame to the first voiced agent frame, as the client sees it
  (WebRTC: aiortc send/arrival times; SIP: tshark loopback capture, ``benchmarks/wire.py``).
  The WebRTC figure is taken after the client's Opus decoder and jitter buffer, the SIP one at
  the packet capture, so the WebRTC figure includes the client's receive buffering as a
  browser's would.

Prints a table and writes JSON to ``benchmarks/results/webrtc-<date>.json``. Absolute times are
only meaningful for the device named in the JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import soxr
from aiortc import RTCPeerConnection, RTCSessionDescription

from appliance.control import ControlClient, ControlError
from benchmarks.run import RESULTS, device, pct
from benchmarks.wire import turns_from_capture
from tests.conftest import speech_dir
from tests.e2e.capture import LoopbackCapture
from tests.e2e.server import ApplianceProcess, free_udp_port
from tests.e2e.sipp import Pause, Play, render_uac_scenario, run_sipp
from tests.e2e.speech import RATE as OSR_RATE
from tests.e2e.speech import osr_sentences, sentence_pcap
from tests.kit.webrtc import RATE, CallerTrack, Listener

#: Seconds of silence after the call connects before the first turn (disclosure + greeting).
OPENING_S = 7.0
#: Seconds to wait for the agent's reply after each turn (as ``benchmarks.wire``: 9 s).
REPLY_WAIT_S = 9.0


async def webrtc_call(proc: ApplianceProcess, sentences: list[np.ndarray]) -> dict[str, object]:
    """One browser test call: the sentences as turns; returns its id and wire latencies (s)."""
    control = ControlClient(proc.workdir / "control.sock", timeout=30)
    mic = CallerTrack()
    listener = Listener()
    pc = RTCPeerConnection()
    pc.addTrack(mic)
    pc.on("track", listener.attach)
    await pc.setLocalDescription(await pc.createOffer())
    answer = await control.acall(
        "webrtc.offer", {"sdp": pc.localDescription.sdp, "type": "offer"}, "service:bench"
    )
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
    await asyncio.sleep(OPENING_S)
    for pcm in sentences:
        seconds = mic.say(pcm)
        await asyncio.sleep(seconds + REPLY_WAIT_S)
    try:
        await control.acall("webrtc.hangup", {"call_id": answer["call_id"]}, "service:bench")
    except ControlError as exc:
        if exc.code != "not_found":  # the agent may have ended the call itself (a goodbye)
            raise
    await pc.close()
    listener.stop()
    wire: list[float | None] = []
    for i, end in enumerate(mic.ends):
        until = mic.ends[i + 1] if i + 1 < len(mic.ends) else None
        first = listener.first_voiced_after(end, until)
        wire.append(None if first is None else round(first - end, 3))
    return {"call_id": answer["call_id"], "wire_s": wire}


def sip_call(uri: str, rtp_base: int, work: Path, indexes: list[int]) -> list[float | None]:
    """One SIP call with the same turns (:func:`benchmarks.wire.conversation_call`'s script).

    The capture is read even when sipp reports a failure: the agent may end the call itself
    (a workflow's goodbye) before the script's last pause, which sipp counts as unexpected.
    """
    steps: list[object] = [Pause(int(OPENING_S * 1000))]
    windows = []
    t = OPENING_S
    for i in indexes:
        pcap, _, seconds = sentence_pcap(i, work / f"s{i}.pcap")
        steps += [Play(str(pcap)), Pause(int(REPLY_WAIT_S * 1000))]
        windows.append((t, t + seconds))
        t += seconds + REPLY_WAIT_S
    cap = work / "conversation.pcap"
    with LoopbackCapture(cap, bpf="udp"):
        run_sipp(render_uac_scenario(steps=steps), uri, timeout_s=t + 60)
    return [turn.latency for turn in turns_from_capture(cap, rtp_base, windows)]


def by_channel(events: list[dict]) -> dict[str, list[float]]:
    """In-process voice-to-voice (s) of each channel's turns, from the event stream."""
    channel = {e["call_id"]: e.get("channel", "sip") for e in events if e["kind"] == "CallAnswered"}
    out: dict[str, list[float]] = {"sip": [], "webrtc": []}
    for e in events:
        if e["kind"] == "TurnLatency" and e.get("voice_to_voice_s") is not None:
            out.setdefault(channel.get(e["call_id"], "sip"), []).append(e["voice_to_voice_s"])
    return out


def summary(values: list[float | None]) -> dict[str, object]:
    vals = [v for v in values if v is not None]
    return {
        "n": len(vals),
        "missing": len(values) - len(vals),
        "p50": pct(vals, 50),
        "p90": pct(vals, 90),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="one call of three turns per channel")
    ap.add_argument("--no-sip", action="store_true", help="skip the SIP reference calls")
    args = ap.parse_args()
    speech_dir()
    indexes = [0, 1, 2] if args.quick else list(range(6))
    calls = 1 if args.quick else 2
    parts, _ = osr_sentences()
    sentences = [soxr.resample(parts[i], OSR_RATE, RATE).astype(np.int16) for i in indexes]

    work = Path(tempfile.mkdtemp(prefix="appliance-bench-webrtc-"))
    (work / "agent").mkdir()
    proc = ApplianceProcess(
        work / "agent",
        sip_port=free_udp_port(),
        rtp_port=48400,
        max_calls=2,
        extra_toml=(
            "[agent]\nidle_timeout_s = 600\n"
            f'[admin]\ncontrol_socket = "{work / "agent" / "control.sock"}"\n'
        ),
    )
    print("starting appliance serve ...", flush=True)
    proc.start()
    webrtc_wire: list[float | None] = []
    sip_wire: list[float | None] = []
    sip_note = ""
    try:
        for c in range(calls):
            print(f"WebRTC call {c + 1}/{calls} ...", flush=True)
            webrtc_wire += asyncio.run(webrtc_call(proc, sentences))["wire_s"]  # type: ignore[operator]
        if not args.no_sip:
            for c in range(calls):
                print(f"SIP call {c + 1}/{calls} ...", flush=True)
                (work / f"sip{c}").mkdir()
                try:
                    sip_wire += sip_call(proc.uri, 48400, work / f"sip{c}", indexes)
                except (RuntimeError, OSError, ValueError) as exc:
                    sip_note = f"SIP wire measurement failed: {type(exc).__name__}: {exc}"[:300]
                    break
        else:
            sip_note = "SIP reference skipped (--no-sip)"
        time.sleep(2.0)
        events = proc.events()
    finally:
        code = proc.stop()
    lat = by_channel(events)
    by_id = {e["call_id"]: e.get("channel", "sip") for e in events if e["kind"] == "CallAnswered"}
    report: dict[str, object] = {
        "device": device(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "models": "default profile (models/manifest.toml)",
        "turns_per_call": len(indexes),
        "calls_per_channel": calls,
        "webrtc": {
            "in_process_voice_to_voice_s": summary(lat["webrtc"]),  # type: ignore[arg-type]
            "wire_voice_to_voice_s": summary(webrtc_wire),
        },
        "sip": {
            "in_process_voice_to_voice_s": summary(lat["sip"]),  # type: ignore[arg-type]
            "wire_voice_to_voice_s": summary(sip_wire),
            "note": sip_note,
        },
        "dispositions": sorted(
            f"{by_id.get(e['call_id'], 'sip')}:{e['disposition']}"
            for e in events
            if e["kind"] == "CallEnded"
        ),
        "serve_exit_code": code,
    }
    print_table(report)
    RESULTS.mkdir(exist_ok=True)
    name = f"webrtc-{time.strftime('%Y%m%d-%H%M%S')}{'-quick' if args.quick else ''}.json"
    (RESULTS / name).write_text(json.dumps(report, indent=2))
    print(f"\nwrote {RESULTS / name}")
    return 0


def print_table(r: dict) -> None:
    def fmt(v: object) -> str:
        return "-" if v is None else f"{v:.3f}"

    print(f"\n{'voice-to-voice (s)':<38}{'P50':>8}{'P90':>8}{'n':>5}")
    for channel in ("webrtc", "sip"):
        for key, label in (
            ("wire_voice_to_voice_s", "on the wire"),
            ("in_process_voice_to_voice_s", "in-process (TurnLatency)"),
        ):
            s = r[channel][key]
            name = f"{channel.upper()} {label}"
            print(f"{name:<38}{fmt(s['p50']):>8}{fmt(s['p90']):>8}{s['n']:>5}")
    if r["sip"].get("note"):
        print(f"\n{r['sip']['note']}")
    print(f"\n{r['device']}")


if __name__ == "__main__":
    raise SystemExit(main())
