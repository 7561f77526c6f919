"""RTP packet and RFC 4733 telephone-event codecs, plus G.711 helpers (test tooling).

Pure functions with no I/O, used by the wire-level test and benchmark tooling
(:mod:`tests.kit.pcap`, the sipp scenarios of ``tests/e2e``); the appliance's media path does
not use them (pjsua2 handles RTP):

* :class:`RtpPacket` parses and builds the RTP fixed header (RFC 3550 §5.1), including the CSRC
  list, the header extension (§5.3.1, skipped over and kept opaque) and padding.
* :class:`TelephoneEvent` parses and builds the RFC 4733 §2.3 named-event payload used for
  out-of-band DTMF ("RFC 2833" digits).
* ``pcmu_*`` / ``pcma_*`` convert between G.711 (ITU-T G.711 µ-law / A-law, one byte per sample)
  and 16-bit signed little-endian linear PCM. G.711 on the telephone network is 8000 Hz; these
  helpers do not resample.

Malformed input raises :class:`ValueError` with a message that says what is wrong.
"""

from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass

with warnings.catch_warnings():
    # audioop is deprecated (removed in 3.13); the project pins Python 3.11.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

RTP_VERSION = 2
RTP_HEADER_LEN = 12
PT_PCMU = 0
PT_PCMA = 8
G711_SAMPLE_RATE = 8000
DYNAMIC_PT_MIN = 96
DYNAMIC_PT_MAX = 127

#: RFC 4733 §3.2 DTMF event codes 0-15 mapped to their characters.
DTMF_EVENT_CHARS = "0123456789*#ABCD"

_G711_PT = {"PCMU": PT_PCMU, "PCMA": PT_PCMA}
_HEADER = struct.Struct("!BBHII")
_EVENT = struct.Struct("!BBH")


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """One RTP packet (RFC 3550 §5.1 fixed header plus payload).

    Attributes:
        payload_type: 7-bit payload type (0 = PCMU, 8 = PCMA, 96-127 dynamic).
        sequence: 16-bit sequence number (wraps at 65536).
        timestamp: 32-bit RTP timestamp in units of the payload's clock (8000 Hz for G.711 and
            telephone-event/8000).
        ssrc: 32-bit synchronisation source identifier.
        marker: Marker bit (first packet of a talkspurt for audio, RFC 3551 §4.1).
        payload: Payload bytes, without header extension or padding.
        csrcs: Contributing source identifiers (at most 15).
    """

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    marker: bool = False
    payload: bytes = b""
    csrcs: tuple[int, ...] = ()

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        """Parse one RTP packet from a UDP payload.

        A header extension (X bit, RFC 3550 §5.3.1) is skipped; padding (P bit) is removed.

        Args:
            data: The UDP payload.

        Returns:
            The parsed packet.

        Raises:
            ValueError: If the data is shorter than the header, the version is not 2, or the
                CSRC count, header extension length or padding length do not fit the data.
        """
        if len(data) < RTP_HEADER_LEN:
            raise ValueError(f"RTP packet too short: {len(data)} bytes, need {RTP_HEADER_LEN}")
        b0, b1, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
        version = b0 >> 6
        if version != RTP_VERSION:
            raise ValueError(f"RTP version {version} is not {RTP_VERSION}")
        padding = bool(b0 & 0x20)
        extension = bool(b0 & 0x10)
        cc = b0 & 0x0F
        offset = RTP_HEADER_LEN + 4 * cc
        if len(data) < offset:
            raise ValueError(f"RTP CSRC count {cc} needs {offset} bytes, packet has {len(data)}")
        csrcs = struct.unpack_from(f"!{cc}I", data, RTP_HEADER_LEN) if cc else ()
        if extension:
            if len(data) < offset + 4:
                raise ValueError("RTP header extension flag set but no extension header")
            (ext_words,) = struct.unpack_from("!H", data, offset + 2)
            offset += 4 + 4 * ext_words
            if len(data) < offset:
                raise ValueError(
                    f"RTP header extension of {ext_words} words overruns packet of "
                    f"{len(data)} bytes"
                )
        end = len(data)
        if padding:
            pad = data[-1]
            if pad == 0 or end - pad < offset:
                raise ValueError(
                    f"RTP padding length {pad} invalid for packet of {len(data)} bytes "
                    f"with {offset}-byte header"
                )
            end -= pad
        return cls(
            payload_type=b1 & 0x7F,
            sequence=sequence,
            timestamp=timestamp,
            ssrc=ssrc,
            marker=bool(b1 & 0x80),
            payload=bytes(data[offset:end]),
            csrcs=tuple(csrcs),
        )

    def to_bytes(self) -> bytes:
        """Serialise the packet: version 2, no padding, no header extension.

        Returns:
            The RTP header (12 bytes plus 4 per CSRC) followed by the payload.

        Raises:
            ValueError: If a field is out of range.
        """
        _check_range("payload_type", self.payload_type, 0x7F)
        _check_range("sequence", self.sequence, 0xFFFF)
        _check_range("timestamp", self.timestamp, 0xFFFFFFFF)
        _check_range("ssrc", self.ssrc, 0xFFFFFFFF)
        if len(self.csrcs) > 15:
            raise ValueError(f"at most 15 CSRCs fit in an RTP header, got {len(self.csrcs)}")
        for csrc in self.csrcs:
            _check_range("csrc", csrc, 0xFFFFFFFF)
        b0 = (RTP_VERSION << 6) | len(self.csrcs)
        b1 = (0x80 if self.marker else 0) | self.payload_type
        header = _HEADER.pack(b0, b1, self.sequence, self.timestamp, self.ssrc)
        csrcs = struct.pack(f"!{len(self.csrcs)}I", *self.csrcs) if self.csrcs else b""
        return header + csrcs + bytes(self.payload)


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """An RFC 4733 §2.3 telephone-event payload (one named event).

    Attributes:
        event: Event code (0-255); 0-15 are the DTMF digits, see :data:`DTMF_EVENT_CHARS`.
        end: E bit: this packet ends the event (end packets are usually sent three times).
        volume: Power level in -dBm0, 0-63 (0 is loudest).
        duration: Duration so far, in RTP timestamp units (1/8000 s for telephone-event/8000).
    """

    event: int
    end: bool
    volume: int
    duration: int

    @property
    def digit(self) -> str | None:
        """The DTMF character for events 0-15 ('0'-'9', '*', '#', 'A'-'D'), else None."""
        if self.event < len(DTMF_EVENT_CHARS):
            return DTMF_EVENT_CHARS[self.event]
        return None

    @classmethod
    def parse(cls, payload: bytes) -> TelephoneEvent:
        """Parse the first event block of a telephone-event payload.

        Args:
            payload: RTP payload of a telephone-event packet (4 bytes per event block).

        Returns:
            The event.

        Raises:
            ValueError: If the payload is shorter than 4 bytes or not a multiple of 4 bytes.
        """
        if len(payload) < _EVENT.size or len(payload) % _EVENT.size:
            raise ValueError(
                f"telephone-event payload must be a multiple of 4 bytes, got {len(payload)}"
            )
        event, flags, duration = _EVENT.unpack_from(payload)
        return cls(event=event, end=bool(flags & 0x80), volume=flags & 0x3F, duration=duration)

    def to_bytes(self) -> bytes:
        """Serialise to the 4-byte payload (R bit zero).

        Returns:
            The payload bytes.

        Raises:
            ValueError: If a field is out of range.
        """
        _check_range("event", self.event, 0xFF)
        _check_range("volume", self.volume, 0x3F)
        _check_range("duration", self.duration, 0xFFFF)
        return _EVENT.pack(self.event, (0x80 if self.end else 0) | self.volume, self.duration)


def dtmf_event_code(digit: str) -> int:
    """Return the RFC 4733 event code of a DTMF character.

    Args:
        digit: One of '0'-'9', '*', '#', 'A'-'D' (case-insensitive).

    Returns:
        The event code, 0-15.

    Raises:
        ValueError: If ``digit`` is not a DTMF character.
    """
    if len(digit) != 1 or digit.upper() not in DTMF_EVENT_CHARS:
        raise ValueError(f"not a DTMF digit: {digit!r}")
    return DTMF_EVENT_CHARS.index(digit.upper())


def g711_payload_type(codec: str) -> int:
    """Return the static RTP payload type of a G.711 codec name (RFC 3551 §6).

    Args:
        codec: "PCMU" or "PCMA" (case-insensitive).

    Returns:
        0 for PCMU, 8 for PCMA.

    Raises:
        ValueError: For any other codec name.
    """
    try:
        return _G711_PT[codec.upper()]
    except KeyError:
        raise ValueError(f"unsupported codec {codec!r}; expected PCMU or PCMA") from None


def g711_decode(payload_type: int, data: bytes) -> bytes:
    """Decode a G.711 payload chosen by its static payload type.

    Args:
        payload_type: 0 (PCMU) or 8 (PCMA).
        data: G.711 bytes, one per sample (8000 Hz).

    Returns:
        16-bit signed little-endian PCM at 8000 Hz.

    Raises:
        ValueError: For any other payload type.
    """
    if payload_type == PT_PCMU:
        return pcmu_decode(data)
    if payload_type == PT_PCMA:
        return pcma_decode(data)
    raise ValueError(f"payload type {payload_type} is not G.711 (0 or 8)")


def g711_encode(payload_type: int, pcm: bytes) -> bytes:
    """Encode 8000 Hz 16-bit PCM to the G.711 variant of a static payload type.

    Args:
        payload_type: 0 (PCMU) or 8 (PCMA).
        pcm: 16-bit signed little-endian PCM at 8000 Hz.

    Returns:
        G.711 bytes, one per sample.

    Raises:
        ValueError: For any other payload type or odd-length PCM.
    """
    if payload_type == PT_PCMU:
        return pcmu_encode(pcm)
    if payload_type == PT_PCMA:
        return pcma_encode(pcm)
    raise ValueError(f"payload type {payload_type} is not G.711 (0 or 8)")


def pcmu_decode(data: bytes) -> bytes:
    """Decode G.711 µ-law to linear PCM.

    Args:
        data: µ-law bytes, one per sample (8000 Hz on the wire).

    Returns:
        16-bit signed little-endian PCM, two bytes per sample, same sample rate.
    """
    return audioop.ulaw2lin(data, 2)


def pcmu_encode(pcm: bytes) -> bytes:
    """Encode linear PCM to G.711 µ-law.

    Args:
        pcm: 16-bit signed little-endian PCM (8000 Hz for the telephone network).

    Returns:
        µ-law bytes, one per sample.

    Raises:
        ValueError: If ``pcm`` has an odd number of bytes.
    """
    _check_pcm(pcm)
    return audioop.lin2ulaw(pcm, 2)


def pcma_decode(data: bytes) -> bytes:
    """Decode G.711 A-law to linear PCM.

    Args:
        data: A-law bytes, one per sample (8000 Hz on the wire).

    Returns:
        16-bit signed little-endian PCM, two bytes per sample, same sample rate.
    """
    return audioop.alaw2lin(data, 2)


def pcma_encode(pcm: bytes) -> bytes:
    """Encode linear PCM to G.711 A-law.

    Args:
        pcm: 16-bit signed little-endian PCM (8000 Hz for the telephone network).

    Returns:
        A-law bytes, one per sample.

    Raises:
        ValueError: If ``pcm`` has an odd number of bytes.
    """
    _check_pcm(pcm)
    return audioop.lin2alaw(pcm, 2)


def _check_range(name: str, value: int, maximum: int) -> None:
    if not 0 <= value <= maximum:
        raise ValueError(f"{name} {value} out of range 0..{maximum}")


def _check_pcm(pcm: bytes) -> None:
    if len(pcm) % 2:
        raise ValueError(f"16-bit PCM must have an even number of bytes, got {len(pcm)}")
