"""Packet-capture file and frame helpers for :mod:`tests.kit.pcap` (private).

Reads pcap/pcapng frames with ``dpkt``, takes the UDP datagram out of a captured frame for the
link types a Linux capture produces, and builds Ethernet/IPv4/UDP frames for writing.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import dpkt

_LOGGER = logging.getLogger(__name__)

_DLT_NULL = 0
_DLT_EN10MB = 1
_DLT_RAW = (12, 14, 101)
_DLT_LINUX_SLL = 113
_DLT_IPV4 = 228
_DLT_IPV6 = 229
_DLT_LINUX_SLL2 = 276
_ETH_IP4 = 0x0800
_ETH_IP6 = 0x86DD
_ETH_VLAN = (0x8100, 0x88A8)

Address = tuple[str, int]


class TruncatedFrame(Exception):
    """A frame ended before its headers or its UDP datagram."""


def read_frames(pcap_path: str | Path) -> tuple[int, list[tuple[float, bytes]]]:
    """Read all frames of a pcap or pcapng file.

    Args:
        pcap_path: The capture file.

    Returns:
        ``(link_type, [(timestamp_s, frame_bytes), ...])``; a damaged last record (a capture
        cut off mid-write) ends the list with a warning.
    """
    with open(pcap_path, "rb") as fh:
        magic = fh.read(4)
        fh.seek(0)
        reader = dpkt.pcapng.Reader(fh) if magic == b"\x0a\x0d\x0d\x0a" else dpkt.pcap.Reader(fh)
        linktype = reader.datalink()
        frames = [(float(ts), bytes(buf)) for ts, buf in _safe_iter(reader)]
    return linktype, frames


def _safe_iter(reader: dpkt.pcap.Reader | dpkt.pcapng.Reader) -> Iterator[tuple[float, bytes]]:
    it = iter(reader)
    while True:
        try:
            yield next(it)
        except StopIteration:
            return
        except (dpkt.NeedData, dpkt.UnpackError, ValueError) as exc:
            # A capture stopped mid-write ends in a partial record: keep what came before.
            _LOGGER.warning("pcap ends with a damaged record: %s", exc)
            return


def udp_datagram(linktype: int, buf: bytes) -> tuple[Address, Address, bytes] | None:
    """Extract the UDP datagram of one captured frame.

    Args:
        linktype: The file's link type (Ethernet, Linux SLL/SLL2, raw IP, BSD loopback).
        buf: The frame.

    Returns:
        ``(source, destination, udp_payload)``, or None if the frame is not IPv4/IPv6 UDP or
        is a non-first IP fragment.

    Raises:
        TruncatedFrame: If the frame ends before its headers or its UDP datagram.
        ValueError: For an unsupported link type.
    """
    if linktype == _DLT_EN10MB:
        offset, ethertype = 14, _u16(buf, 12)
        while ethertype in _ETH_VLAN:
            ethertype = _u16(buf, offset + 2)
            offset += 4
    elif linktype == _DLT_LINUX_SLL:
        offset, ethertype = 16, _u16(buf, 14)
    elif linktype == _DLT_LINUX_SLL2:
        offset, ethertype = 20, _u16(buf, 0)
    elif linktype == _DLT_NULL:
        if len(buf) < 5:
            raise TruncatedFrame
        offset, ethertype = 4, _ETH_IP6 if buf[4] >> 4 == 6 else _ETH_IP4
    elif linktype in _DLT_RAW or linktype in (_DLT_IPV4, _DLT_IPV6):
        if not buf:
            raise TruncatedFrame
        offset, ethertype = 0, _ETH_IP6 if buf[0] >> 4 == 6 else _ETH_IP4
    else:
        raise ValueError(f"unsupported pcap link type {linktype}")
    if ethertype == _ETH_IP4:
        return _ipv4_udp(buf, offset)
    if ethertype == _ETH_IP6:
        return _ipv6_udp(buf, offset)
    return None


def _ipv4_udp(buf: bytes, offset: int) -> tuple[Address, Address, bytes] | None:
    if len(buf) < offset + 20:
        raise TruncatedFrame
    ihl = (buf[offset] & 0x0F) * 4
    total_len = _u16(buf, offset + 2)
    frag = _u16(buf, offset + 6)
    if buf[offset + 9] != dpkt.ip.IP_PROTO_UDP or frag & 0x1FFF:
        return None  # not UDP, or a non-first fragment
    end = offset + total_len if total_len else len(buf)
    src = socket.inet_ntop(socket.AF_INET, buf[offset + 12 : offset + 16])
    dst = socket.inet_ntop(socket.AF_INET, buf[offset + 16 : offset + 20])
    return _udp(buf, offset + ihl, end, src, dst)


def _ipv6_udp(buf: bytes, offset: int) -> tuple[Address, Address, bytes] | None:
    if len(buf) < offset + 40:
        raise TruncatedFrame
    if buf[offset + 6] != dpkt.ip.IP_PROTO_UDP:
        return None  # not UDP, or behind extension headers (not used for RTP on loopback)
    end = offset + 40 + _u16(buf, offset + 4)
    src = socket.inet_ntop(socket.AF_INET6, buf[offset + 8 : offset + 24])
    dst = socket.inet_ntop(socket.AF_INET6, buf[offset + 24 : offset + 40])
    return _udp(buf, offset + 40, end, src, dst)


def _udp(
    buf: bytes, offset: int, ip_end: int, src: str, dst: str
) -> tuple[Address, Address, bytes]:
    if len(buf) < offset + 8 or len(buf) < ip_end:
        raise TruncatedFrame
    sport, dport, ulen = struct.unpack_from("!HHH", buf, offset)
    if ulen < 8 or offset + ulen > ip_end:
        raise TruncatedFrame
    return (src, sport), (dst, dport), buf[offset + 8 : offset + ulen]


def _u16(buf: bytes, offset: int) -> int:
    if len(buf) < offset + 2:
        raise TruncatedFrame
    return int.from_bytes(buf[offset : offset + 2], "big")


def udp_frame(
    src_ip: bytes, sport: int, dst_ip: bytes, dport: int, payload: bytes, *, ip_id: int
) -> bytes:
    """Build an Ethernet/IPv4/UDP frame with valid lengths and checksums.

    Args:
        src_ip: Source IPv4 address, 4 bytes.
        sport: Source UDP port.
        dst_ip: Destination IPv4 address, 4 bytes.
        dport: Destination UDP port.
        payload: UDP payload.
        ip_id: IPv4 identification field.

    Returns:
        The frame bytes.
    """
    udp = dpkt.udp.UDP(sport=sport, dport=dport, ulen=8 + len(payload), data=payload)
    ip = dpkt.ip.IP(src=src_ip, dst=dst_ip, p=dpkt.ip.IP_PROTO_UDP, ttl=64, id=ip_id, data=udp)
    ip.len = 20 + udp.ulen
    eth = dpkt.ethernet.Ethernet(
        src=b"\x02\x00\x00\x00\x00\x01",
        dst=b"\x02\x00\x00\x00\x00\x02",
        type=dpkt.ethernet.ETH_TYPE_IP,
        data=ip,
    )
    return bytes(eth)
