#!/usr/bin/env python3
"""Append a freshly fetched checkpoint file to the controller's witness copy, or refuse it.

Usage: ``witness.py HOST_DIR FETCHED``. ``HOST_DIR/checkpoints.log`` is the witness copy (JSON
lines ``{"size": N, "note": "<signed note>"}``, src/appliance/audit/store.py). The fetched file is
accepted only if it starts with the witness copy byte for byte (the box's file is append-only),
every new line is a well-formed checkpoint note (origin, decimal size equal to ``size``, base64
32-byte root, a signature line), sizes never decrease, and a size that was seen before has the
same root. Accepted: only the new suffix is appended (and fsynced) to the witness copy, and a
line is added to ``HOST_DIR/collections.jsonl``. Refused: the fetched file is moved to
``HOST_DIR/rejected/`` and the exit status is 1. Prints one JSON object either way.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import sys
import time
from pathlib import Path


class Inconsistent(Exception):
    """The fetched file is not a consistent extension of the witness copy."""


def parse_line(line: str, where: str) -> tuple[str, int, bytes]:
    """Return (origin, size, root) of one checkpoint line."""
    try:
        entry = json.loads(line)
        size, note = entry["size"], entry["note"]
    except (ValueError, KeyError, TypeError) as exc:
        raise Inconsistent(f"{where}: not a checkpoint line") from exc
    body, sep, sigs = note.partition("\n\n")
    lines = body.split("\n")
    if not sep or len(lines) != 3 or not sigs.startswith("\u2014 "):
        raise Inconsistent(f"{where}: malformed signed note")
    origin, size_text, root64 = lines
    if not size_text.isdigit() or int(size_text) != size or isinstance(size, bool):
        raise Inconsistent(f"{where}: size {size!r} does not match the note ({size_text!r})")
    try:
        root = base64.b64decode(root64, validate=True)
    except binascii.Error as exc:
        raise Inconsistent(f"{where}: root is not base64") from exc
    if len(root) != 32:
        raise Inconsistent(f"{where}: root is not 32 bytes")
    return origin, size, root


def check(old: bytes, new: bytes) -> list[tuple[str, int, bytes]]:
    """Check ``new`` against ``old``; return the parsed new lines."""
    if len(new) < len(old):
        raise Inconsistent(f"checkpoint file shrank: {len(old)} -> {len(new)} bytes")
    if new[: len(old)] != old:
        raise Inconsistent("checkpoint file was rewritten: it does not start with the witness copy")
    if new and not new.endswith(b"\n"):
        raise Inconsistent("checkpoint file ends in a partial line")
    seen: dict[int, bytes] = {}
    origin = None
    last = -1
    parsed = []
    for n, line in enumerate(new.decode("utf-8").splitlines(), 1):
        o, size, root = parse_line(line, f"line {n}")
        if origin is not None and o != origin:
            raise Inconsistent(f"line {n}: origin changed from {origin!r} to {o!r}")
        if size < last:
            raise Inconsistent(f"line {n}: tree size went back from {last} to {size}")
        if seen.get(size, root) != root:
            raise Inconsistent(f"line {n}: two different roots for tree size {size}")
        origin, last, seen[size] = o, size, root
        if n > old.count(b"\n"):
            parsed.append((o, size, root))
    return parsed


def main() -> int:
    """Entry point."""
    host_dir, fetched = Path(sys.argv[1]), Path(sys.argv[2])
    witness = host_dir / "checkpoints.log"
    old = witness.read_bytes() if witness.exists() else b""
    new = fetched.read_bytes()
    report: dict[str, object] = {"witness": str(witness), "old_bytes": len(old)}
    try:
        added = check(old, new)
    except (Inconsistent, UnicodeDecodeError) as exc:
        rejected = host_dir / "rejected"
        rejected.mkdir(exist_ok=True)
        target = rejected / f"checkpoints-{time.strftime('%Y%m%dT%H%M%S')}.log"
        fetched.replace(target)
        report.update(ok=False, error=str(exc), rejected=str(target))
        print(json.dumps(report))
        return 1
    if added:
        with witness.open("ab") as f:
            f.write(new[len(old) :])
            f.flush()
            os.fsync(f.fileno())
        with (host_dir / "collections.jsonl").open("a") as f:
            f.write(json.dumps({
                "collected_at": time.time(),
                "added": len(added),
                "size": added[-1][1],
                "root": base64.b64encode(added[-1][2]).decode(),
                "sha256": hashlib.sha256(new).hexdigest(),
            }) + "\n")  # fmt: skip
    fetched.unlink()
    last = added[-1][1] if added else None
    report.update(ok=True, changed=bool(added), added=len(added), latest_size=last)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
