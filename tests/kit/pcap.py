"""Write speech as RTP pcap files and read RTP streams back out of packet captures.

This is wire-level measurement tooling for tests and benchmarks (``tests.kit``; it needs the
``test`` extra and is not part of the appliance's runtime package):

* :func:`pcm_to_rtp_pcap` / :func:`wav_to_rtp_pcap` turn speech into a pcap of G.711 RTP packets
  (RFC 3550, one packet per ``ptime_ms``) that sipp can play with
  ``<exec play_pcap_audio="..."/>``.
* :func:`read_rtp_streams` extracts RTP streams from a capture (for example
  ``tshark -i lo -w FILE``), and :func:`stream_pcm`, :func:`voiced_intervals` and
  :func:`telephone_events` decode audio, speech timing and RFC 4733 DTMF from a stream.

Pcap files are read and written with ``dpkt``. Audio on the wire is G.711 at 8000 Hz.
"""

from __future__ import annotations

import logging
import math
import socket
import wave
from dataclasses import dataclass, field
from pathlib import Path

import dpkt
import numpy as np
import soxr

from tests.kit._pcap_io import Address, TruncatedFrame, read_frames, udp_datagram, udp_frame
from tests.kit.rtp import (
    DYNAMIC_PT_MAX,
    DYNAMIC_PT_MIN,
    G711_SAMPLE_RATE,
    PT_PCMA,
    PT_PCMU,
    RtpPacket,
    TelephoneEvent,
    dtmf_event_code,
    g711_decode,
    g711_encode,
    g711_payload_type,
)

_LOGGER = logging.getLogger(__name__)

_SILENCE_FLOOR_DBFS = -120.0


@dataclass
class RtpStream:
    """The packets of one RTP stream, as seen on the wire.

    Attributes:
        src: Source (IP address, UDP port).
        dst: Destination (IP address, UDP port).
        ssrc: RTP synchronisation source.
        packets: ``(arrival_time_s, packet)`` in capture order; the arrival time is the capture
            timestamp in seconds since the Unix epoch.
    """

    src: Address
    dst: Address
    ssrc: int
    packets: list[tuple[float, RtpPacket]] = field(default_factory=list)

    @property
    def payload_types(self) -> set[int]:
        """Payload types seen in this stream."""
        return {pkt.payload_type for _, pkt in self.packets}

    @property
    def audio_packets(self) -> list[tuple[float, RtpPacket]]:
        """The G.711 (payload type 0 or 8) packets, in capture order."""
        return [(t, p) for t, p in self.packets if p.payload_type in (PT_PCMU, PT_PCMA)]


class RtpStreams(list[RtpStream]):
    """The list returned by :func:`read_rtp_streams`, with counts of what was skipped.

    Attributes:
        truncated: Frames cut short (snap length, damaged file) that could not be decoded.
        non_rtp: UDP datagrams that were not RTP v2 with payload type 0, 8 or 96-127.
    """

    truncated: int = 0
    non_rtp: int = 0


def pcm_to_rtp_pcap(
    pcm: bytes,
    sample_rate: int,
    pcap_path: str | Path,
    *,
    codec: str = "PCMU",
    ptime_ms: int = 20,
    leading_silence_ms: int = 0,
    trailing_silence_ms: int = 0,
    ssrc: int = 0x5EED0001,
    src: Address = ("127.0.0.1", 16000),
    dst: Address = ("127.0.0.1", 6000),
    first_sequence: int = 1000,
    first_timestamp: int = 0,
    start_time: float = 0.0,
) -> float:
    """Write 16-bit mono PCM as a pcap of G.711 RTP packets in Ethernet/IPv4/UDP frames.

    The audio is resampled to 8000 Hz (soxr) if needed, padded with silence to whole packets,
    and written one packet per ``ptime_ms`` (160 samples at 20 ms): pcap timestamps
    ``ptime_ms`` apart, RTP timestamps +samples-per-packet, sequence +1, marker bit on the first
    packet (RFC 3551 §4.1). sipp's ``play_pcap_audio`` replays it, paced by the pcap timestamps,
    to the media address from the peer's SDP; it rewrites the addresses and ports.

    Args:
        pcm: 16-bit signed little-endian mono PCM.
        sample_rate: Sample rate of ``pcm`` in Hz.
        pcap_path: Output file (classic pcap, link type Ethernet).
        codec: "PCMU" (payload type 0) or "PCMA" (payload type 8).
        ptime_ms: Packet duration in milliseconds.
        leading_silence_ms: Digital silence to put before the audio, in milliseconds.
        trailing_silence_ms: Digital silence to put after the audio, in milliseconds.
        ssrc: RTP SSRC.
        src: Source (IPv4 address, UDP port) written in the frames.
        dst: Destination (IPv4 address, UDP port) written in the frames.
        first_sequence: RTP sequence number of the first packet.
        first_timestamp: RTP timestamp of the first packet.
        start_time: Pcap timestamp of the first packet, in seconds.

    Returns:
        The duration of the written audio in seconds (packets x ptime).

    Raises:
        ValueError: On odd-length PCM, a bad codec, or a ptime that is not a whole number of
            samples.
    """
    payload_type = g711_payload_type(codec)
    if len(pcm) % 2:
        raise ValueError(f"16-bit PCM must have an even number of bytes, got {len(pcm)}")
    spp = G711_SAMPLE_RATE * ptime_ms // 1000
    if spp <= 0 or G711_SAMPLE_RATE * ptime_ms % 1000:
        raise ValueError(f"ptime {ptime_ms} ms is not a whole number of 8 kHz samples")
    samples = np.frombuffer(pcm, dtype="<i2")
    if sample_rate != G711_SAMPLE_RATE and samples.size:
        samples = soxr.resample(samples.astype(np.float32), sample_rate, G711_SAMPLE_RATE)
        samples = np.clip(np.round(samples), -32768, 32767).astype("<i2")
    lead = np.zeros(G711_SAMPLE_RATE * leading_silence_ms // 1000, dtype="<i2")
    trail = np.zeros(G711_SAMPLE_RATE * trailing_silence_ms // 1000, dtype="<i2")
    samples = np.concatenate([lead, samples.astype("<i2"), trail])
    n_packets = math.ceil(samples.size / spp)
    samples = np.concatenate([samples, np.zeros(n_packets * spp - samples.size, dtype="<i2")])
    payload = g711_encode(payload_type, samples.tobytes())

    src_ip, dst_ip = socket.inet_aton(src[0]), socket.inet_aton(dst[0])
    with open(pcap_path, "wb") as fh:
        writer = dpkt.pcap.Writer(fh, snaplen=65535, linktype=dpkt.pcap.DLT_EN10MB)
        for i in range(n_packets):
            rtp = RtpPacket(
                payload_type=payload_type,
                sequence=(first_sequence + i) & 0xFFFF,
                timestamp=(first_timestamp + i * spp) & 0xFFFFFFFF,
                ssrc=ssrc,
                marker=i == 0,
                payload=payload[i * spp : (i + 1) * spp],
            ).to_bytes()
            frame = udp_frame(src_ip, src[1], dst_ip, dst[1], rtp, ip_id=i & 0xFFFF)
            writer.writepkt(frame, ts=start_time + i * ptime_ms / 1000)
    return n_packets * ptime_ms / 1000


def dtmf_rtp_pcap(
    digits: str,
    pcap_path: str | Path,
    *,
    payload_type: int = 101,
    tone_ms: int = 100,
    gap_ms: int = 200,
    ssrc: int = 0x5EED0101,
    src: Address = ("127.0.0.1", 16000),
    dst: Address = ("127.0.0.1", 6000),
    first_timestamp: int = 1000,
    first_sequence: int = 0,
) -> float:
    """Write DTMF digits as RFC 4733 telephone-event packets in a pcap (for sipp to play).

    Each digit is one event: a packet every 20 ms carrying the growing duration (marker bit on
    the first), then the end packet sent three times (RFC 4733 §2.5.1.4), all with the event's
    own RTP timestamp; events are ``gap_ms`` apart. Unlike sipp's bundled ``dtmf_2833_*.pcap``,
    every event has a distinct timestamp, so repeated digits are not taken for retransmissions.

    Several pcaps played one after another in one call must continue each other's RTP sequence
    numbers (``first_sequence``): a pcap that starts again at 0 looks like old, reordered
    packets to the receiver (RFC 3550 A.1: a backward jump within the misorder window is
    dropped), and its digits are lost.

    Returns:
        The duration in seconds.

    Raises:
        ValueError: A character is not a DTMF symbol.
    """
    step = 160  # 20 ms at the 8 kHz telephone-event clock
    src_ip, dst_ip = socket.inet_aton(src[0]), socket.inet_aton(dst[0])
    seq = first_sequence
    t = 0.0
    ts = first_timestamp
    with open(pcap_path, "wb") as fh:
        writer = dpkt.pcap.Writer(fh, snaplen=65535, linktype=dpkt.pcap.DLT_EN10MB)

        def emit(event: TelephoneEvent, marker: bool) -> None:
            nonlocal seq
            rtp = RtpPacket(
                payload_type=payload_type,
                sequence=seq & 0xFFFF,
                timestamp=ts & 0xFFFFFFFF,
                ssrc=ssrc,
                marker=marker,
                payload=event.to_bytes(),
            ).to_bytes()
            writer.writepkt(
                udp_frame(src_ip, src[1], dst_ip, dst[1], rtp, ip_id=seq & 0xFFFF), ts=t
            )
            seq += 1

        for digit in digits:
            code = dtmf_event_code(digit)
            n = max(1, tone_ms // 20)
            for i in range(1, n + 1):
                emit(TelephoneEvent(code, False, 10, i * step), i == 1)
                t += 0.02
            for _ in range(3):
                emit(TelephoneEvent(code, True, 10, n * step), False)
            t += gap_ms / 1000
            ts += (n + gap_ms // 20) * step
    return t


def wav_to_rtp_pcap(
    wav_path: str | Path,
    pcap_path: str | Path,
    *,
    codec: str = "PCMU",
    ptime_ms: int = 20,
    leading_silence_ms: int = 0,
    trailing_silence_ms: int = 0,
    ssrc: int = 0x5EED0001,
    src: Address = ("127.0.0.1", 16000),
    dst: Address = ("127.0.0.1", 6000),
) -> float:
    """Write a mono 16-bit WAV file (any sample rate) as a pcap of G.711 RTP packets.

    See :func:`pcm_to_rtp_pcap` for the packet layout; the result can be played by sipp's
    ``<exec play_pcap_audio="..."/>``.

    Args:
        wav_path: Mono 16-bit PCM WAV file; resampled to 8000 Hz if needed.
        pcap_path: Output pcap file.
        codec: "PCMU" or "PCMA".
        ptime_ms: Packet duration in milliseconds.
        leading_silence_ms: Silence before the audio, in milliseconds.
        trailing_silence_ms: Silence after the audio, in milliseconds.
        ssrc: RTP SSRC.
        src: Source (IPv4 address, UDP port) written in the frames.
        dst: Destination (IPv4 address, UDP port) written in the frames.

    Returns:
        The duration of the written audio in seconds.

    Raises:
        ValueError: If the WAV file is not mono 16-bit PCM.
    """
    pcm, rate = read_wav_mono16(wav_path)
    return pcm_to_rtp_pcap(
        pcm,
        rate,
        pcap_path,
        codec=codec,
        ptime_ms=ptime_ms,
        leading_silence_ms=leading_silence_ms,
        trailing_silence_ms=trailing_silence_ms,
        ssrc=ssrc,
        src=src,
        dst=dst,
    )


def read_wav_mono16(wav_path: str | Path) -> tuple[bytes, int]:
    """Read a mono 16-bit PCM WAV file.

    Args:
        wav_path: The WAV file.

    Returns:
        ``(pcm, sample_rate_hz)`` with 16-bit signed little-endian samples.

    Raises:
        ValueError: If the file is not mono 16-bit PCM.
    """
    with wave.open(str(wav_path), "rb") as wf:
        if wf.getnchannels() != 1 or wf.getsampwidth() != 2:
            raise ValueError(
                f"{wav_path}: need mono 16-bit PCM, got {wf.getnchannels()} channel(s) of "
                f"{8 * wf.getsampwidth()} bits"
            )
        return wf.readframes(wf.getnframes()), wf.getframerate()


def pcap_duration(pcap_path: str | Path) -> float:
    """Return how long sipp takes to play a pcap file, in seconds.

    This is the span of the packet timestamps plus the spacing of the last two packets (the
    duration of the last RTP packet); 0.0 for an empty file.

    Args:
        pcap_path: A pcap or pcapng file.

    Returns:
        The play-out duration in seconds.
    """
    times = [ts for ts, _ in read_frames(pcap_path)[1]]
    if len(times) < 2:
        return 0.0
    return times[-1] - times[0] + max(0.0, times[-1] - times[-2])


def read_rtp_streams(pcap_path: str | Path) -> RtpStreams:
    """Extract RTP streams from a capture file.

    Accepts pcap and pcapng with link types Ethernet (what ``tshark -i lo`` records on Linux),
    Linux cooked SLL and SLL2, raw IP and BSD loopback. Keeps UDP datagrams whose payload parses
    as RTP version 2 with payload type 0 (PCMU), 8 (PCMA) or 96-127 (dynamic, for example
    telephone-event), grouped by (source, destination, SSRC). Other UDP (SIP, RTCP, ...) is
    skipped; frames too short to decode are counted in :attr:`RtpStreams.truncated`.

    Args:
        pcap_path: The capture file.

    Returns:
        The streams in order of their first packet.

    Raises:
        ValueError: If the file is not pcap/pcapng or has an unsupported link type.
    """
    streams = RtpStreams()
    by_key: dict[tuple[str, int, str, int, int], RtpStream] = {}
    linktype, frames = read_frames(pcap_path)
    for ts, buf in frames:
        try:
            udp = udp_datagram(linktype, buf)
        except TruncatedFrame:
            streams.truncated += 1
            continue
        if udp is None:
            continue
        src, dst, payload = udp
        try:
            pkt = RtpPacket.parse(payload)
        except ValueError:
            streams.non_rtp += 1
            continue
        pt = pkt.payload_type
        if pt not in (PT_PCMU, PT_PCMA) and not DYNAMIC_PT_MIN <= pt <= DYNAMIC_PT_MAX:
            streams.non_rtp += 1
            continue
        key = (src[0], src[1], dst[0], dst[1], pkt.ssrc)
        stream = by_key.get(key)
        if stream is None:
            stream = by_key[key] = RtpStream(src=src, dst=dst, ssrc=pkt.ssrc)
            streams.append(stream)
        stream.packets.append((float(ts), pkt))
    if streams.truncated:
        _LOGGER.warning("%s: skipped %d truncated frames", pcap_path, streams.truncated)
    return streams


def stream_pcm(stream: RtpStream, *, codec: str | None = None, max_gap_s: float = 600.0) -> bytes:
    """Decode the G.711 audio of a stream to linear PCM.

    Packets are ordered by RTP sequence number (with wrap-around) and placed by RTP timestamp:
    gaps (lost packets, silence suppression, DTMF interruptions) become digital silence, and
    duplicate or overlapping audio is dropped.

    Args:
        stream: The stream.
        codec: "PCMU" or "PCMA" to decode only that payload type; None decodes both 0 and 8.
        max_gap_s: Longest gap filled with silence; longer gaps are shortened to this, in
            seconds, with a warning (guards against timestamp jumps).

    Returns:
        16-bit signed little-endian PCM at 8000 Hz.
    """
    wanted = {g711_payload_type(codec)} if codec else {PT_PCMU, PT_PCMA}
    packets = [p for _, p in stream.packets if p.payload_type in wanted]
    if not packets:
        return b""
    seqs = _unwrap([p.sequence for p in packets], 16)
    stamps = _unwrap([p.timestamp for p in packets], 32)
    order = sorted(range(len(packets)), key=lambda i: (seqs[i], i))
    out: list[bytes] = []
    expected: int | None = None
    last_seq: int | None = None
    max_gap = int(max_gap_s * G711_SAMPLE_RATE)
    for i in order:
        if seqs[i] == last_seq:
            continue
        last_seq = seqs[i]
        pcm = g711_decode(packets[i].payload_type, packets[i].payload)
        ts = stamps[i]
        if expected is not None:
            gap = ts - expected
            if gap > max_gap:
                _LOGGER.warning("RTP timestamp gap of %d samples shortened to %d", gap, max_gap)
                gap = max_gap
            if gap > 0:
                out.append(bytes(2 * gap))
            elif gap < 0:
                pcm = pcm[-2 * gap :]
                ts = expected
        out.append(pcm)
        end = ts + len(pcm) // 2
        expected = end if expected is None else max(expected, end)
    return b"".join(out)


def packet_levels(stream: RtpStream) -> list[tuple[float, float]]:
    """Return the RMS level of every G.711 packet of a stream.

    Args:
        stream: The stream.

    Returns:
        ``(arrival_time_s, level_dbfs)`` per audio packet in capture order, where 0 dBFS is
        the RMS of a full-scale square wave and digital silence is -120 dBFS.
    """
    levels = []
    for t, pkt in stream.audio_packets:
        samples = np.frombuffer(g711_decode(pkt.payload_type, pkt.payload), dtype="<i2")
        rms = float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) if samples.size else 0.0
        level = 20 * math.log10(rms / 32768) if rms > 0 else _SILENCE_FLOOR_DBFS
        levels.append((t, max(level, _SILENCE_FLOOR_DBFS)))
    return levels


def voiced_intervals(
    stream: RtpStream, *, threshold_dbfs: float = -45.0, min_gap_ms: float = 300
) -> list[tuple[float, float]]:
    """Find when a stream carried sound, from per-packet levels, by arrival time.

    This is a measurement tool for tests and benchmarks (for example response latency on the
    wire: end of the caller's speech to start of the agent's answer). It is a plain level
    threshold, not the product's voice activity detector: noise above the threshold counts as
    voiced.

    Args:
        stream: The stream.
        threshold_dbfs: A packet is voiced when its RMS level is at least this, in dBFS.
        min_gap_ms: Voiced packets less than this apart (arrival times) are merged into one
            interval, in milliseconds.

    Returns:
        ``(first_voiced_arrival_s, last_voiced_arrival_s)`` per interval, in time order.
        Both ends are arrival times of packets, so an interval's audio lasts one ptime longer
        than ``end - start``.
    """
    voiced = sorted(t for t, level in packet_levels(stream) if level >= threshold_dbfs)
    intervals: list[tuple[float, float]] = []
    for t in voiced:
        if intervals and t - intervals[-1][1] < min_gap_ms / 1000:
            intervals[-1] = (intervals[-1][0], t)
        else:
            intervals.append((t, t))
    return intervals


def telephone_events(stream: RtpStream) -> list[tuple[float, str]]:
    """Return the RFC 4733 DTMF digits carried by a stream, one entry per event.

    Packets with a dynamic payload type (96-127) and a valid 4-byte event payload are read.
    All packets of one event share its RTP timestamp; the retransmitted end packets
    (RFC 4733 §2.5.1.4) and the updates are folded into the event. Events 16 and above
    (flash, tones) are left out.

    Args:
        stream: The stream.

    Returns:
        ``(arrival_time_s_of_first_packet, digit)`` per event, in time order.
    """
    events: list[tuple[float, str]] = []
    current: tuple[int, int] | None = None  # (rtp timestamp, event code) of the last event
    ended = False
    for t, pkt in stream.packets:
        if not DYNAMIC_PT_MIN <= pkt.payload_type <= DYNAMIC_PT_MAX:
            continue
        try:
            event = TelephoneEvent.parse(pkt.payload)
        except ValueError:
            continue
        key = (pkt.timestamp, event.event)
        # Same event: an update, or a retransmitted end packet. A non-end packet after the
        # end of an event with the same key is the same digit sent again (e.g. a replayed pcap).
        if key == current and (not ended or event.end):
            ended = ended or event.end
            continue
        current, ended = key, event.end
        if event.digit is not None:
            events.append((t, event.digit))
    return events


def _unwrap(values: list[int], bits: int) -> list[int]:
    """Unwrap modular counters (RTP sequence or timestamp), relative to the first value."""
    modulus, half = 1 << bits, 1 << (bits - 1)
    out = [values[0]] if values else []
    for prev, cur in zip(values, values[1:], strict=False):
        delta = (cur - prev) % modulus
        out.append(out[-1] + (delta - modulus if delta >= half else delta))
    return out
