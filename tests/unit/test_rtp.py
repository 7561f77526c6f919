"""Unit tests for tests.kit.rtp: RTP header, RFC 4733 events and G.711 helpers."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from tests.kit.rtp import (
    DTMF_EVENT_CHARS,
    RtpPacket,
    TelephoneEvent,
    dtmf_event_code,
    g711_decode,
    g711_encode,
    g711_payload_type,
    pcma_decode,
    pcma_encode,
    pcmu_decode,
    pcmu_encode,
)

# V=2, PT=0, seq=1000, ts=160, SSRC=0x5EED0001, then four bytes of µ-law payload.
GOLDEN_PCMU = bytes.fromhex("800003e8000000a05eed0001") + b"\xff\x7f\x00\x80"
# First packet of sipp's dtmf_2833_pound.pcap: M=1, PT=101, seq 8436, ts 92640, SSRC 0x0e05384e,
# event 11 ('#'), E=0, volume 10, duration 0.
GOLDEN_EVENT_START = bytes.fromhex("80e520f4000169e00e05384e0b0a0000")
# Last (end) packet of sipp's dtmf_2833_1.pcap payload: event 1, E=1, volume 10, duration 2240.
GOLDEN_EVENT_END_PAYLOAD = bytes.fromhex("018a08c0")


def test_parse_golden_pcmu_packet() -> None:
    """A PCMU packet's fixed header fields and payload parse exactly."""
    pkt = RtpPacket.parse(GOLDEN_PCMU)
    assert pkt == RtpPacket(
        payload_type=0,
        sequence=1000,
        timestamp=160,
        ssrc=0x5EED0001,
        marker=False,
        payload=b"\xff\x7f\x00\x80",
        csrcs=(),
    )


def test_build_golden_pcmu_packet() -> None:
    """Building the same packet gives the golden bytes."""
    pkt = RtpPacket(0, 1000, 160, 0x5EED0001, payload=b"\xff\x7f\x00\x80")
    assert pkt.to_bytes() == GOLDEN_PCMU


def test_parse_golden_telephone_event_packet() -> None:
    """The first '#' event packet from sipp parses and rebuilds byte for byte."""
    pkt = RtpPacket.parse(GOLDEN_EVENT_START)
    assert (pkt.payload_type, pkt.marker, pkt.sequence, pkt.timestamp, pkt.ssrc) == (
        101,
        True,
        8436,
        92640,
        0x0E05384E,
    )
    event = TelephoneEvent.parse(pkt.payload)
    assert event == TelephoneEvent(event=11, end=False, volume=10, duration=0)
    assert event.digit == "#"
    assert pkt.to_bytes() == GOLDEN_EVENT_START


def test_csrcs_round_trip() -> None:
    """CSRC identifiers are parsed and serialised."""
    data = bytes.fromhex("8208000100000002000000030000000a0000000b") + b"xy"
    pkt = RtpPacket.parse(data)
    assert pkt.csrcs == (10, 11)
    assert pkt.payload == b"xy"
    assert pkt.to_bytes() == data


def test_header_extension_is_skipped() -> None:
    """A header extension is skipped, leaving only the payload."""
    # X=1; extension header: profile 0xBEDE, length 1 word, then one word of extension data.
    data = bytes.fromhex("900000010000000200000003") + bytes.fromhex("bede0001aabbccdd") + b"pay"
    pkt = RtpPacket.parse(data)
    assert pkt.payload == b"pay"
    assert pkt.sequence == 1


def test_padding_is_removed() -> None:
    """Padding counted by the last byte is stripped from the payload."""
    data = bytes.fromhex("a00000010000000200000003") + b"abc" + b"\x00\x00\x03"
    assert RtpPacket.parse(data).payload == b"abc"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "too short"),
        (GOLDEN_PCMU[:11], "too short"),
        (b"\x40" + GOLDEN_PCMU[1:], "version 1"),
        (b"\x00" + GOLDEN_PCMU[1:], "version 0"),
        (b"\xc0" + GOLDEN_PCMU[1:], "version 3"),
        (bytes.fromhex("830000010000000200000003") + b"\x00" * 8, "CSRC count 3"),
        (bytes.fromhex("900000010000000200000003") + b"\xbe\xde", "extension"),
        (bytes.fromhex("900000010000000200000003") + bytes.fromhex("bede0002aabbccdd"), "overruns"),
        (bytes.fromhex("a00000010000000200000003") + b"ab\x00", "padding length 0"),
        (bytes.fromhex("a00000010000000200000003") + b"ab\x09", "padding length 9"),
    ],
)
def test_parse_rejects_bad_packets(data: bytes, message: str) -> None:
    """Malformed packets raise ValueError naming the problem."""
    with pytest.raises(ValueError, match=message):
        RtpPacket.parse(data)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"payload_type": 128},
        {"sequence": 65536},
        {"sequence": -1},
        {"timestamp": 1 << 32},
        {"ssrc": 1 << 32},
        {"csrcs": tuple(range(16))},
    ],
)
def test_build_rejects_out_of_range_fields(kwargs: dict[str, object]) -> None:
    """Fields that do not fit the header raise ValueError."""
    fields: dict[str, object] = {"payload_type": 0, "sequence": 0, "timestamp": 0, "ssrc": 0}
    fields.update(kwargs)
    with pytest.raises(ValueError):
        RtpPacket(**fields).to_bytes()  # type: ignore[arg-type]


def test_sequence_and_timestamp_extremes_round_trip() -> None:
    """Maximum field values survive a round trip."""
    pkt = RtpPacket(127, 65535, 0xFFFFFFFF, 0xFFFFFFFF, marker=True, payload=b"\x01")
    assert RtpPacket.parse(pkt.to_bytes()) == pkt


def test_parse_golden_end_event() -> None:
    """The end-of-event '1' payload from sipp parses and rebuilds byte for byte."""
    event = TelephoneEvent.parse(GOLDEN_EVENT_END_PAYLOAD)
    assert event == TelephoneEvent(event=1, end=True, volume=10, duration=2240)
    assert event.digit == "1"
    assert event.to_bytes() == GOLDEN_EVENT_END_PAYLOAD


def test_event_r_bit_is_ignored() -> None:
    """The reserved bit does not leak into the volume."""
    assert TelephoneEvent.parse(b"\x05\xca\x00\xa0") == TelephoneEvent(5, True, 10, 160)


@pytest.mark.parametrize("payload", [b"", b"\x01", b"\x01\x8a\x08", b"\x01\x8a\x08\xc0\x00"])
def test_event_rejects_bad_length(payload: bytes) -> None:
    """Payloads that are not whole 4-byte event blocks raise ValueError."""
    with pytest.raises(ValueError, match="multiple of 4"):
        TelephoneEvent.parse(payload)


def test_event_codes_map_to_characters() -> None:
    """Event codes 0-15 map to DTMF characters and back; 16 has none."""
    digits = [TelephoneEvent(code, False, 10, 0).digit for code in range(17)]
    assert digits == [*"0123456789", "*", "#", "A", "B", "C", "D", None]
    assert [dtmf_event_code(c) for c in DTMF_EVENT_CHARS] == list(range(16))
    assert dtmf_event_code("a") == 12


@pytest.mark.parametrize("digit", ["", "E", "12", " ", "!"])
def test_dtmf_event_code_rejects_non_digits(digit: str) -> None:
    """Non-DTMF characters raise ValueError."""
    with pytest.raises(ValueError, match="not a DTMF digit"):
        dtmf_event_code(digit)


def test_event_to_bytes_rejects_out_of_range() -> None:
    """Event fields that do not fit raise ValueError."""
    with pytest.raises(ValueError):
        TelephoneEvent(256, False, 0, 0).to_bytes()
    with pytest.raises(ValueError):
        TelephoneEvent(1, False, 64, 0).to_bytes()
    with pytest.raises(ValueError):
        TelephoneEvent(1, False, 0, 65536).to_bytes()


def test_g711_known_values() -> None:
    """G.711 silence and extreme codes match the ITU tables."""
    silence = bytes(8)  # four zero samples
    assert pcmu_encode(silence) == b"\xff" * 4
    assert pcma_encode(silence) == b"\xd5" * 4
    assert struct.unpack("<4h", pcmu_decode(b"\xff\x7f\x00\x80")) == (0, 0, -32124, 32124)
    assert struct.unpack("<2h", pcma_decode(b"\xd5\x55")) == (8, -8)


def test_g711_round_trip_snr() -> None:
    """A tone through either G.711 law keeps more than 35 dB SNR."""
    t = np.arange(8000) / 8000
    tone = (8000 * np.sin(2 * math.pi * 440 * t)).astype("<i2")
    for encode, decode in ((pcmu_encode, pcmu_decode), (pcma_encode, pcma_decode)):
        coded = encode(tone.tobytes())
        assert len(coded) == tone.size
        back = np.frombuffer(decode(coded), dtype="<i2").astype(float)
        snr = 10 * np.log10(np.sum(tone.astype(float) ** 2) / np.sum((back - tone) ** 2))
        assert snr > 35


def test_g711_rejects_odd_pcm() -> None:
    """Encoding half a 16-bit sample raises ValueError."""
    with pytest.raises(ValueError, match="even number"):
        pcmu_encode(b"\x00")
    with pytest.raises(ValueError, match="even number"):
        pcma_encode(b"\x00\x00\x00")


def test_g711_dispatch_by_payload_type() -> None:
    """Codec names and payload types select the right G.711 law."""
    assert g711_payload_type("pcmu") == 0
    assert g711_payload_type("PCMA") == 8
    pcm = bytes(4)
    assert g711_encode(0, pcm) == b"\xff\xff"
    assert g711_decode(8, b"\xd5") == pcma_decode(b"\xd5")
    with pytest.raises(ValueError, match="unsupported codec"):
        g711_payload_type("opus")
    with pytest.raises(ValueError, match="not G.711"):
        g711_decode(9, b"")
    with pytest.raises(ValueError, match="not G.711"):
        g711_encode(101, pcm)
