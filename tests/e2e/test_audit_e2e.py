"""The audit log written by real end-to-end calls.

Nothing in clear on disk, export with the key, verification without it, and tamper detection
on the real log.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.server import ApplianceProcess
from tests.e2e.sipp import Pause, Play, Rfc2833, render_uac_scenario, run_sipp
from tests.e2e.speech import sentence_pcap

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp is not installed"),
]


def cli(proc: ApplianceProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance.cli", "audit", "--config", str(proc.config), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def audited_call(appliance: ApplianceProcess, tmp_path_factory):  # noqa: ANN001, ANN201
    work = tmp_path_factory.mktemp("audited")
    pcap, said, _ = sentence_pcap(5, work / "caller.pcap")
    steps = [Pause(8500), Play(str(pcap)), Pause(9000), Rfc2833("7"), Pause(800)]
    result = run_sipp(render_uac_scenario(steps=steps), appliance.uri, timeout_s=60)
    assert result.returncode == 0, result.messages[-2000:]
    ended = appliance.wait_event("CallEnded", count=1)
    call_id = ended[-1]["call_id"]
    events = [e for e in appliance.events() if e["call_id"] == call_id]
    heard = [e["user_text"] for e in events if e["kind"] == "TurnEnded"]
    spoke = [e["text"] for e in events if e["kind"] == "AgentSpoke" and e["text"]]
    assert heard and spoke
    return call_id, heard, spoke


def audit_files(proc: ApplianceProcess) -> list[Path]:
    return sorted((proc.workdir / "var" / "audit").glob("audit.sqlite*"))


def test_no_caller_or_agent_words_in_clear_on_disk(appliance, audited_call) -> None:  # noqa: ANN001
    _, heard, spoke = audited_call
    files = [*audit_files(appliance), appliance.workdir / "calls.sqlite", appliance.log_path]
    assert any(f.name == "audit.sqlite" for f in files)
    phrases = [p for p in heard + spoke if len(p.split()) >= 3]
    for f in files:
        blob = f.read_bytes().lower()
        for phrase in phrases:
            assert phrase.lower().encode() not in blob, f"content in clear in {f.name}"


def test_verify_passes_without_the_key_and_export_shows_the_words(
    appliance,
    audited_call,  # noqa: ANN001
) -> None:
    call_id, heard, spoke = audited_call
    out = cli(appliance, "verify")
    assert out.returncode == 0 and out.stdout.startswith("OK"), out.stdout + out.stderr
    exported = cli(appliance, "export", "--call", call_id)
    assert exported.returncode == 0, exported.stderr
    assert heard[-1] in exported.stdout and spoke[-1] in exported.stdout
    # The key was pressed outside a digit slot: its record carries a count, never the digit.
    dtmf = [r for r in json.loads(exported.stdout) if r["kind"] == "DtmfReceived"]
    assert len(dtmf) == 1, dtmf
    fields = {**dtmf[0].get("meta", {}), **(dtmf[0].get("content") or {})}
    assert fields.get("digit", "") == "" and fields.get("count") == 1, dtmf
    db = audit_files(appliance)[0]
    kinds = [
        r[0]
        for r in sqlite3.connect(db).execute(
            "SELECT json_extract(substr(data, 2), '$.kind') FROM records"
        )
    ]
    assert "AuditExport" in kinds  # the export itself is on the record
    assert "ServiceStarted" in kinds  # every start (and any version change) is on the record


def test_tampering_with_the_real_log_is_detected(appliance, audited_call, tmp_path: Path) -> None:  # noqa: ANN001
    src = audit_files(appliance)[0]
    conn = sqlite3.connect(src)
    conn.execute("PRAGMA wal_checkpoint(FULL)")
    conn.close()
    copy = tmp_path / "var" / "audit" / "audit.sqlite"
    copy.parent.mkdir(parents=True)
    shutil.copy(src, copy)
    conn = sqlite3.connect(copy)
    data = bytearray(conn.execute("SELECT data FROM records WHERE idx=3").fetchone()[0])
    data[-5] ^= 0x04
    conn.execute("UPDATE records SET data=? WHERE idx=3", (bytes(data),))
    conn.commit()
    conn.close()
    pub = appliance.workdir / "var" / "keys" / "audit-signing.pub"
    cfg = tmp_path / "appliance.toml"
    cfg.write_text(f'[audit]\ndb = "{copy}"\n')
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance.cli",
            "audit",
            "--config",
            str(cfg),
            "verify",
            "--public-key",
            str(pub),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and "at index 3" in out.stdout, out.stdout + out.stderr


def test_pci_spoken_and_keyed_card_numbers_never_on_disk_in_clear(
    appliance: ApplianceProcess,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    import numpy as np

    from tests.conftest import read_pcm, speech_dir
    from tests.kit.pcap import dtmf_rtp_pcap, pcm_to_rtp_pcap

    card = "4111111111111111"  # a Luhn-valid test PAN
    gap = np.zeros(800, np.int16)
    clips = []
    for d in card:
        clips += [read_pcm(speech_dir() / "fsdd" / f"{d}_george_0.wav", 8000), gap]
    pcap = tmp_path / "card.pcap"
    pcm_to_rtp_pcap(np.concatenate(clips).tobytes(), 8000, pcap, codec="PCMU")
    before = len(appliance.events())
    steps = [Pause(8500), Play(str(pcap)), Pause(7000)]
    # Keyed: RFC 4733 events with distinct timestamps (sipp's own digit pcaps reuse one
    # timestamp per digit, so a repeated digit would look like a retransmission).
    keyed_pcap = tmp_path / "card-dtmf.pcap"
    dtmf_rtp_pcap(card, keyed_pcap)
    steps += [Play(str(keyed_pcap)), Pause(800)]
    result = run_sipp(render_uac_scenario(steps=steps), appliance.uri, timeout_s=90)
    assert result.returncode == 0, result.messages[-2000:]
    appliance.wait_event(
        "CallEnded", count=1 + sum(e["kind"] == "CallEnded" for e in appliance.events()[:before])
    )
    events = appliance.events()[before:]
    assert "failing closed" not in appliance.log()  # the export by another process was fine
    assert any(e["kind"] == "CallEnded" for e in events)
    keyed = [(e["digit"], e["count"]) for e in events if e["kind"] == "DtmfReceived"]
    assert keyed == [("", n) for n in range(1, len(card) + 1)]  # outside a digit slot: a count
    spoken = [e["user_text"] for e in events if e["kind"] == "TurnEnded"]
    assert spoken, "the spoken card number was not transcribed at all"
    needles = [card.encode(), " ".join(card).encode()]
    needles += [s.encode() for s in spoken if sum(c.isdigit() for c in s) >= 4]
    files = [*audit_files(appliance), appliance.workdir / "calls.sqlite", appliance.log_path]
    files += list((appliance.workdir / "var").rglob("*"))
    for f in files:
        if f.is_file():
            blob = f.read_bytes()
            for needle in needles:
                assert needle not in blob, f"card data in clear in {f}"
