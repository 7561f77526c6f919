"""AudioBridge: 20 ms chunking, bounded inbound queue, barge-in clearing."""

from __future__ import annotations

import threading

from appliance.audio.bridge import AudioBridge

FRAME = 640  # 20 ms of 16-bit mono PCM at 16 kHz


def test_outbound_is_chunked_and_padded() -> None:
    b = AudioBridge(16000)
    b.put_outbound(b"\x01" * (FRAME * 2 + 100))
    assert b.queued_ms == 60
    chunks = [b.take_outbound() for _ in range(3)]
    assert all(len(c) == FRAME for c in chunks)
    assert chunks[2][:100] == b"\x01" * 100 and chunks[2][100:] == bytes(FRAME - 100)
    assert b.take_outbound() == bytes(FRAME)  # underrun -> silence
    assert b.stats.tx_underruns == 1 and b.stats.tx_voiced_frames == 3


def test_clear_keeps_protected_audio_in_order() -> None:
    b = AudioBridge(16000)
    b.put_outbound(b"\x02" * FRAME * 3, interruptible=False)  # disclosure
    b.put_outbound(b"\x03" * FRAME * 5, interruptible=True)  # reply
    assert b.clear_interruptible() == 100
    assert b.queued_ms == 60
    assert [b.take_outbound()[0] for _ in range(3)] == [2, 2, 2]
    assert b.take_outbound() == bytes(FRAME)


def test_inbound_is_bounded_and_notifies() -> None:
    calls = []
    b = AudioBridge(16000, max_inbound_ms=100, on_inbound=lambda: calls.append(1))
    for i in range(8):
        b.put_inbound(bytes([i]) * FRAME)
    frames = b.drain_inbound()
    assert [f[0] for f in frames] == [3, 4, 5, 6, 7]
    assert b.stats.rx_dropped == 3 and len(calls) == 8


def test_closed_bridge_drops_everything() -> None:
    b = AudioBridge(16000)
    b.close()
    b.put_outbound(b"\x01" * FRAME)
    b.put_inbound(b"\x01" * FRAME)
    assert b.queued_ms == 0 and b.drain_inbound() == []


def test_concurrent_producer_and_media_thread() -> None:
    b = AudioBridge(16000)
    taken: list[bytes] = []
    stop = threading.Event()

    def media() -> None:
        while not stop.is_set() or b.queued_ms:
            taken.append(b.take_outbound())

    t = threading.Thread(target=media)
    t.start()
    for i in range(200):
        b.put_outbound(bytes([i % 250 + 1]) * FRAME)
    stop.set()
    t.join(5)
    voiced = [c[0] for c in taken if c[0]]
    assert voiced == [i % 250 + 1 for i in range(200)]
