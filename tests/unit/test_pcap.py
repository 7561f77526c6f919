"""Unit tests for tests.kit.pcap: RTP pcap writing, stream extraction and analysis."""

from __future__ import annotations

import math
import struct
import wave
from pathlib import Path

import dpkt
import numpy as np
import pytest
import soxr

from tests.kit.pcap import (
    RtpStream,
    pcap_duration,
    pcm_to_rtp_pcap,
    read_rtp_streams,
    read_wav_mono16,
    stream_pcm,
    telephone_events,
    voiced_intervals,
    wav_to_rtp_pcap,
)
from tests.kit.rtp import RtpPacket, TelephoneEvent, pcmu_decode, pcmu_encode

SPEECH_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "speech"
OSR_WAV = SPEECH_DIR / "osr" / "OSR_us_000_0034_8k.wav"
SIPP_DTMF_POUND = Path("/usr/share/sip-tester/dtmf_2833_pound.pcap")


def _osr_pcm() -> np.ndarray:
    if not OSR_WAV.is_file():
        pytest.skip(f"shared speech data not found at {OSR_WAV} (clone the repo next to shared/)")
    pcm, rate = read_wav_mono16(OSR_WAV)
    assert rate == 8000
    return np.frombuffer(pcm, dtype="<i2")


def _tone(seconds: float, rate: int = 8000, freq: float = 440.0, amp: float = 8000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * math.pi * freq * t)).astype("<i2").tobytes()


def _snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    ref = reference.astype(float)
    err = test.astype(float) - ref
    return float(10 * np.log10(np.sum(ref**2) / max(np.sum(err**2), 1e-9)))


def _rtp_frames(path: Path) -> list[tuple[float, dpkt.ethernet.Ethernet]]:
    with open(path, "rb") as fh:
        reader = dpkt.pcap.Reader(fh)
        assert reader.datalink() == dpkt.pcap.DLT_EN10MB
        return [(ts, dpkt.ethernet.Ethernet(buf)) for ts, buf in reader]


def test_pcm_to_rtp_pcap_packet_layout(tmp_path: Path) -> None:
    """Frames are 20 ms apart with consecutive sequence numbers and timestamps."""
    path = tmp_path / "tone.pcap"
    duration = pcm_to_rtp_pcap(
        _tone(1.0), 8000, path, ssrc=0x1234, src=("127.0.0.2", 16000), dst=("127.0.0.3", 6000)
    )
    assert duration == pytest.approx(1.0)
    frames = _rtp_frames(path)
    assert len(frames) == 50
    for i, (ts, eth) in enumerate(frames):
        ip, udp = eth.data, eth.data.data
        assert ts == pytest.approx(i * 0.020)
        assert (ip.src, ip.dst) == (bytes([127, 0, 0, 2]), bytes([127, 0, 0, 3]))
        assert (udp.sport, udp.dport, udp.ulen) == (16000, 6000, 8 + 12 + 160)
        assert ip.len == 20 + udp.ulen
        rtp = RtpPacket.parse(bytes(udp.data))
        assert (rtp.payload_type, rtp.ssrc, rtp.marker) == (0, 0x1234, i == 0)
        assert rtp.sequence == 1000 + i
        assert rtp.timestamp == 160 * i
        assert len(rtp.payload) == 160


def test_udp_checksums_are_valid(tmp_path: Path) -> None:
    """IPv4 header and UDP checksums verify."""
    path = tmp_path / "tone.pcap"
    pcm_to_rtp_pcap(_tone(0.1), 8000, path)
    for _, eth in _rtp_frames(path):
        ip = eth.data
        raw = bytes(ip)
        assert dpkt.in_cksum(raw[:20]) == 0
        udp = raw[20:]
        pseudo = ip.src + ip.dst + struct.pack("!BBH", 0, 17, len(udp))
        assert dpkt.in_cksum(pseudo + udp) == 0


def test_padding_silence_and_resampling(tmp_path: Path) -> None:
    """16 kHz input is resampled, and silence pads both ends."""
    path = tmp_path / "wide.pcap"
    duration = pcm_to_rtp_pcap(
        _tone(0.5, rate=16000),
        16000,
        path,
        codec="PCMA",
        leading_silence_ms=100,
        trailing_silence_ms=110,
    )
    assert duration == pytest.approx(0.1 + 0.5 + 0.12)  # 110 ms rounds up to a whole packet
    (stream,) = read_rtp_streams(path)
    assert stream.payload_types == {8}
    pcm = np.frombuffer(stream_pcm(stream, codec="PCMA"), dtype="<i2")
    assert pcm.size == round(duration * 8000)
    assert np.abs(pcm[:800]).max() <= 8  # A-law silence decodes to +-8
    assert np.abs(pcm[800:4800]).max() > 7000
    assert stream_pcm(stream, codec="PCMU") == b""


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    """Bad codec, odd PCM, bad ptime and stereo WAV raise ValueError."""
    with pytest.raises(ValueError, match="unsupported codec"):
        pcm_to_rtp_pcap(b"", 8000, tmp_path / "x.pcap", codec="G722")
    with pytest.raises(ValueError, match="even number"):
        pcm_to_rtp_pcap(b"\x00", 8000, tmp_path / "x.pcap")
    with pytest.raises(ValueError, match="whole number"):
        pcm_to_rtp_pcap(b"", 8000, tmp_path / "x.pcap", ptime_ms=0)
    stereo = tmp_path / "stereo.wav"
    with wave.open(str(stereo), "wb") as wf:
        wf.setnchannels(2)
        wf.setsampwidth(2)
        wf.setframerate(8000)
        wf.writeframes(bytes(400))
    with pytest.raises(ValueError, match="mono 16-bit"):
        wav_to_rtp_pcap(stereo, tmp_path / "x.pcap")


def test_pcap_duration(tmp_path: Path) -> None:
    """The play-out duration counts the last packet."""
    path = tmp_path / "tone.pcap"
    pcm_to_rtp_pcap(_tone(0.3), 8000, path)
    assert pcap_duration(path) == pytest.approx(0.3)


def _stream(packets: list[RtpPacket], start: float = 100.0) -> RtpStream:
    return RtpStream(
        src=("127.0.0.1", 1),
        dst=("127.0.0.1", 2),
        ssrc=7,
        packets=[(start + 0.02 * i, p) for i, p in enumerate(packets)],
    )


def _audio_packets(n: int, *, seq0: int = 0, ts0: int = 0, value: int = 1000) -> list[RtpPacket]:
    payload = pcmu_encode(struct.pack("<h", value) * 160)
    return [
        RtpPacket(0, (seq0 + i) & 0xFFFF, (ts0 + 160 * i) & 0xFFFFFFFF, 7, payload=payload)
        for i in range(n)
    ]


def test_stream_pcm_fills_gaps_and_drops_duplicates() -> None:
    """Reordered, duplicated and lost packets decode in place across wrap-around."""
    packets = _audio_packets(5, seq0=65533, ts0=0xFFFFFF00)  # both counters wrap
    arrived = [packets[0], packets[2], packets[1], packets[1], packets[4]]  # reorder, dup, loss
    pcm = np.frombuffer(stream_pcm(_stream(arrived)), dtype="<i2")
    assert pcm.size == 5 * 160
    level = int(np.frombuffer(pcmu_decode(packets[0].payload[:1]), dtype="<i2")[0])
    assert (pcm[:480] == level).all()
    assert (pcm[480:640] == 0).all()  # the lost packet 3 becomes silence
    assert (pcm[640:] == level).all()


def test_stream_pcm_skips_events_and_overlap() -> None:
    """Event packets are ignored and overlapping audio is trimmed."""
    audio = _audio_packets(2)
    overlap = RtpPacket(0, 2, 240, 7, payload=audio[0].payload)  # half overlaps packet 1
    event = RtpPacket(101, 3, 400, 7, payload=TelephoneEvent(1, False, 10, 160).to_bytes())
    pcm = stream_pcm(_stream([*audio, overlap, event]))
    assert len(pcm) == 2 * (320 + 80)


def test_telephone_events_deduplicates_end_packets() -> None:
    """One entry per event, however many update and end packets."""

    def ev(seq: int, ts: int, code: int, end: bool, dur: int) -> RtpPacket:
        return RtpPacket(101, seq, ts, 7, payload=TelephoneEvent(code, end, 10, dur).to_bytes())

    packets = [
        ev(1, 800, 1, False, 160),
        ev(2, 800, 1, False, 320),
        ev(3, 800, 1, True, 480),
        ev(3, 800, 1, True, 480),
        ev(3, 800, 1, True, 480),
        ev(4, 1600, 11, True, 160),  # an event seen only by its end packets
        ev(4, 1600, 11, True, 160),
        ev(5, 800, 1, False, 160),  # the first digit replayed (same pcap played twice)
        ev(6, 800, 1, True, 320),
        ev(7, 2400, 16, True, 160),  # flash: not a DTMF digit
        *_audio_packets(1, seq0=8),
    ]
    events = telephone_events(_stream(packets))
    assert [d for _, d in events] == ["1", "#", "1"]
    assert [round(t, 2) for t, _ in events] == [100.0, 100.1, 100.14]


@pytest.mark.skipif(not SIPP_DTMF_POUND.is_file(), reason="sip-tester pcaps not installed")
def test_telephone_events_from_sipp_pcap() -> None:
    """The '#' pcap from sipp yields exactly one '#'."""
    (stream,) = read_rtp_streams(SIPP_DTMF_POUND)
    assert len(stream.packets) == 10
    assert [d for _, d in telephone_events(stream)] == ["#"]


def _write_linktype(path: Path, linktype: int, frames: list[bytes]) -> None:
    with open(path, "wb") as fh:
        writer = dpkt.pcap.Writer(fh, snaplen=65535, linktype=linktype)
        for i, frame in enumerate(frames):
            writer.writepkt(frame, ts=1.0 + 0.02 * i)


def _ip_frames(path: Path) -> list[bytes]:
    return [bytes(eth.data) for _, eth in _rtp_frames(path)]


@pytest.mark.parametrize(
    ("linktype", "prefix"),
    [
        (113, b"\x00\x00\x03\x04\x00\x06" + bytes(8) + b"\x08\x00"),  # Linux cooked (SLL)
        (276, b"\x08\x00\x00\x00\x00\x00\x00\x01\x03\x04\x00\x06" + bytes(8)),  # SLL2
        (101, b""),  # raw IP
    ],
)
def test_reads_other_link_types(tmp_path: Path, linktype: int, prefix: bytes) -> None:
    """Linux cooked (SLL, SLL2) and raw IP captures read like Ethernet."""
    source = tmp_path / "eth.pcap"
    pcm_to_rtp_pcap(_tone(0.2), 8000, source)
    path = tmp_path / "other.pcap"
    _write_linktype(path, linktype, [prefix + ip for ip in _ip_frames(source)])
    (stream,) = read_rtp_streams(path)
    assert len(stream.packets) == 10
    assert stream_pcm(stream) == stream_pcm(read_rtp_streams(source)[0])


def _eth_udp_frame(sport: int, dport: int, payload: bytes) -> bytes:
    udp = dpkt.udp.UDP(sport=sport, dport=dport, ulen=8 + len(payload), data=payload)
    ip = dpkt.ip.IP(src=b"\x7f\0\0\1", dst=b"\x7f\0\0\1", p=17, data=udp)
    return bytes(dpkt.ethernet.Ethernet(type=dpkt.ethernet.ETH_TYPE_IP, data=ip))


def test_reads_pcapng_and_skips_sip_and_truncated_frames(tmp_path: Path) -> None:
    """A pcapng file is read; SIP and RTCP are skipped; truncated frames are counted."""
    source = tmp_path / "eth.pcap"
    pcm_to_rtp_pcap(_tone(0.2), 8000, source, dst=("127.0.0.1", 40000))
    frames = [bytes(eth) for _, eth in _rtp_frames(source)]
    sip_frame = _eth_udp_frame(5060, 5070, b"INVITE sip:x@y SIP/2.0\r\n\r\n")
    rtcp = _eth_udp_frame(16001, 40001, b"\x80\xc8\x00\x06" + bytes(24))  # RTCP SR: PT 200
    all_frames = [sip_frame, *frames, frames[3][:50], frames[4][:20], rtcp]
    path = tmp_path / "mixed.pcapng"
    with open(path, "wb") as fh:
        writer = dpkt.pcapng.Writer(fh, snaplen=65535, linktype=dpkt.pcap.DLT_EN10MB)
        for i, frame in enumerate(all_frames):
            writer.writepkt(frame, ts=5.0 + 0.02 * i)
    streams = read_rtp_streams(path)
    assert len(streams) == 1
    assert streams[0].dst == ("127.0.0.1", 40000)
    assert len(streams[0].packets) == 10
    assert streams.truncated == 2
    assert streams.non_rtp == 2  # the SIP message and the RTCP packet


def test_osr_round_trip(tmp_path: Path) -> None:
    """Speech through pcap and back keeps its length and more than 25 dB SNR."""
    speech = _osr_pcm()
    path = tmp_path / "osr.pcap"
    duration = wav_to_rtp_pcap(OSR_WAV, path)
    (stream,) = read_rtp_streams(path)
    assert stream.ssrc == 0x5EED0001
    decoded = np.frombuffer(stream_pcm(stream, codec="PCMU"), dtype="<i2")
    assert abs(decoded.size - speech.size) <= 160
    assert decoded.size == round(duration * 8000)
    n = min(decoded.size, speech.size)
    assert _snr_db(speech[:n], decoded[:n]) > 25


def test_osr_round_trip_resampled(tmp_path: Path) -> None:
    """16 kHz speech is resampled to 8 kHz on the way into the pcap."""
    speech = _osr_pcm()[: 8000 * 5]
    wide = soxr.resample(speech.astype(np.float32), 8000, 16000)
    wav = tmp_path / "wide.wav"
    with wave.open(str(wav), "wb") as wf:
        wf.setnchannels(1)
        wf.setsampwidth(2)
        wf.setframerate(16000)
        wf.writeframes(np.clip(wide, -32768, 32767).astype("<i2").tobytes())
    wav_to_rtp_pcap(wav, tmp_path / "wide.pcap", codec="PCMA")
    decoded = np.frombuffer(stream_pcm(read_rtp_streams(tmp_path / "wide.pcap")[0]), dtype="<i2")
    assert abs(decoded.size - speech.size) <= 160
    # Reference: the original 8 kHz speech through 16 kHz and back (band-limited by soxr).
    reference = soxr.resample(wide, 16000, 8000)
    n = min(decoded.size, reference.size)
    assert _snr_db(reference[:n], decoded[:n]) > 25


def test_voiced_intervals_find_inserted_gap(tmp_path: Path) -> None:
    """A 2 s hole cut into speech is found within 40 ms."""
    speech = _osr_pcm()
    # Cut at a packet boundary inside loud speech, so the packets either side are voiced.
    frames = speech[: speech.size // 160 * 160].reshape(-1, 160).astype(float)
    rms = np.sqrt((frames**2).mean(axis=1))
    both_loud = np.minimum(rms[:-1], rms[1:])  # [k - 1] is min(rms of frame k - 1, frame k)
    quarter = both_loud.size // 4
    cut = (quarter + int(np.argmax(both_loud[quarter : 3 * quarter])) + 1) * 160
    gap = np.zeros(16000, dtype="<i2")  # 2 s
    pcm = np.concatenate([speech[:cut], gap, speech[cut:]])
    path = tmp_path / "gap.pcap"
    pcm_to_rtp_pcap(pcm.tobytes(), 8000, path, start_time=1000.0)
    (stream,) = read_rtp_streams(path)
    intervals = voiced_intervals(stream, threshold_dbfs=-45.0, min_gap_ms=300)
    gap_start = 1000.0 + cut / 8000  # arrival time of the first silent packet
    gap_end = gap_start + 2.0  # arrival time of the first packet after the gap
    before = min(intervals, key=lambda iv: abs(iv[1] - (gap_start - 0.02)))
    after = intervals[intervals.index(before) + 1]
    assert abs(before[1] - (gap_start - 0.02)) <= 0.04
    assert abs(after[0] - gap_end) <= 0.04
    # Nothing voiced inside the gap.
    assert not [iv for iv in intervals if gap_start < iv[0] < gap_end - 0.02]


def test_voiced_intervals_merge_short_gaps() -> None:
    """Holes shorter than min_gap_ms merge; longer ones split."""
    loud = _audio_packets(1, value=8000)[0].payload
    quiet = pcmu_encode(bytes(320))
    pattern = [loud] * 5 + [quiet] * 10 + [loud] * 5 + [quiet] * 20 + [loud] * 3
    packets = [RtpPacket(0, i, 160 * i, 7, payload=p) for i, p in enumerate(pattern)]
    intervals = voiced_intervals(_stream(packets, start=0.0), min_gap_ms=300)
    # The 10-packet (200 ms) hole is merged; the 20-packet (400 ms) hole splits.
    assert intervals == [
        pytest.approx((0.0, 0.38)),
        pytest.approx((0.80, 0.84)),
    ]


def test_dtmf_rtp_pcap_round_trip(tmp_path) -> None:  # noqa: ANN001
    from tests.kit.pcap import dtmf_rtp_pcap, read_rtp_streams, telephone_events

    path = tmp_path / "dtmf.pcap"
    seconds = dtmf_rtp_pcap("4111#", path)
    assert seconds == pytest.approx(5 * (0.1 + 0.2), abs=0.01)
    streams = read_rtp_streams(path)
    assert len(streams) == 1
    assert "".join(d for _, d in telephone_events(streams[0])) == "4111#"
    stamps = {p.timestamp for _, p in streams[0].packets}
    assert len(stamps) == 5  # one distinct RTP timestamp per event
