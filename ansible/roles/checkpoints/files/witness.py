#!/usr/bin/env python3
r"""Append a freshly fetched checkpoint file to the controller's witness copy, or refuse it.

Usage: ``witness.py HOST_DIR FETCHED [--enrol BOX_PUB] [--key-name NAME]``.

``HOST_DIR/checkpoints.log`` is the witness copy (JSON lines ``{"size": N, "note": "<signed
note>"}``, src/appliance/audit/store.py). ``HOST_DIR/audit-signing.pub`` is the box's Ed25519
public key (hex), pinned at enrolment: the first collection copies it from ``BOX_PUB`` (the
``.pub`` fetched from the box, or one given by the operator), and it is never replaced after.
A later ``BOX_PUB`` that differs from the pinned key is refused (the box's key was swapped).

The fetched file is accepted only if it starts with the witness copy byte for byte (the box's
file is append-only), every line is a well-formed checkpoint note (origin, decimal size equal to
``size``, base64 32-byte root) carrying a valid Ed25519 signature by ``NAME`` with the pinned
key (``golang.org/x/mod/sumdb/note``: key id = first 4 bytes of ``SHA-256(name || "\n" || 0x01
|| public key)``, signature over the body), sizes never decrease (the tree never shrinks), and a
size that was seen before has the same root. Accepted: only the new suffix is appended (and
fsynced) to the witness copy, and a line is added to ``HOST_DIR/collections.jsonl``. Refused:
the fetched file is moved to ``HOST_DIR/rejected/`` and the exit status is 1. Prints one JSON
object either way.

Needs only the Python standard library and ``cryptography`` (a dependency of ansible-core).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

KEY_NAME = "appliance-audit"
"""The name the box signs its checkpoints with (appliance.audit.service.KEY_NAME)."""


class Inconsistent(Exception):
    """The fetched file is not a consistent extension of the witness copy."""


def key_id(name: str, public: bytes) -> bytes:
    r"""The signed-note key hash: first 4 bytes of SHA-256(name || "\n" || 0x01 || key)."""
    return hashlib.sha256(name.encode() + b"\n\x01" + public).digest()[:4]


def read_public_key(path: Path) -> bytes:
    """A raw 32-byte Ed25519 public key from a hex file."""
    try:
        raw = bytes.fromhex(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError) as exc:
        raise Inconsistent(f"{path}: not a hex Ed25519 public key") from exc
    if len(raw) != 32:
        raise Inconsistent(f"{path}: not a 32-byte Ed25519 public key")
    return raw


def check_signature(body: str, sigs: str, public: bytes, name: str, where: str) -> None:
    """Require a valid signature by ``name`` with the pinned ``public`` key."""
    want = key_id(name, public)
    verifier = Ed25519PublicKey.from_public_bytes(public)
    for line in sigs.split("\n"):
        if not line:
            continue
        if not line.startswith("\u2014 "):
            raise Inconsistent(f"{where}: malformed signature line")
        signer, _, sig64 = line[2:].partition(" ")
        try:
            raw = base64.b64decode(sig64, validate=True)
        except binascii.Error as exc:
            raise Inconsistent(f"{where}: signature is not base64") from exc
        if signer != name or raw[:4] != want:
            continue  # another signer (a cosigning witness): not ours to check
        try:
            verifier.verify(raw[4:], body.encode("utf-8"))
        except InvalidSignature as exc:
            raise Inconsistent(f"{where}: bad signature by {name!r}") from exc
        return
    raise Inconsistent(f"{where}: no signature by {name!r} with the pinned public key")


def parse_line(line: str, where: str, public: bytes, name: str) -> tuple[str, int, bytes]:
    """Return (origin, size, root) of one checkpoint line whose signature checked."""
    try:
        entry = json.loads(line)
        size, note = entry["size"], entry["note"]
    except (ValueError, KeyError, TypeError) as exc:
        raise Inconsistent(f"{where}: not a checkpoint line") from exc
    if not isinstance(note, str) or not isinstance(size, int) or isinstance(size, bool):
        raise Inconsistent(f"{where}: not a checkpoint line")
    split = note.rfind("\n\n")
    body, sigs = (note[: split + 1], note[split + 2 :]) if split >= 0 else (note, "")
    lines = body[:-1].split("\n") if body.endswith("\n") else []
    if split < 0 or len(lines) != 3 or not sigs.startswith("\u2014 "):
        raise Inconsistent(f"{where}: malformed signed note")
    origin, size_text, root64 = lines
    if not size_text.isdigit() or int(size_text) != size:
        raise Inconsistent(f"{where}: size {size!r} does not match the note ({size_text!r})")
    try:
        root = base64.b64decode(root64, validate=True)
    except binascii.Error as exc:
        raise Inconsistent(f"{where}: root is not base64") from exc
    if len(root) != 32:
        raise Inconsistent(f"{where}: root is not 32 bytes")
    check_signature(body, sigs, public, name, where)
    return origin, size, root


def check(
    old: bytes, new: bytes, public: bytes, name: str = KEY_NAME
) -> list[tuple[str, int, bytes]]:
    """Check ``new`` against ``old`` and the pinned key; return the parsed new lines."""
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
        o, size, root = parse_line(line, f"line {n}", public, name)
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


def pinned_key(host_dir: Path, enrol: Path | None) -> bytes:
    """The pinned public key; pinned from ``enrol`` on the first collection only."""
    pinned = host_dir / "audit-signing.pub"
    offered = read_public_key(enrol) if enrol is not None else None
    if pinned.exists():
        public = read_public_key(pinned)
        if offered is not None and offered != public:
            raise Inconsistent(
                "the box's public key differs from the one pinned at enrolment "
                f"({pinned}): its signing key was replaced"
            )
        return public
    if offered is None:
        raise Inconsistent(f"no pinned public key ({pinned}) and none offered for enrolment")
    fd = os.open(pinned, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(offered.hex() + "\n")
        f.flush()
        os.fsync(f.fileno())
    return offered


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1] if __doc__ else None)
    parser.add_argument("host_dir", type=Path)
    parser.add_argument("fetched", type=Path)
    parser.add_argument("--enrol", type=Path, default=None, help="the box's .pub (hex)")
    parser.add_argument("--key-name", default=KEY_NAME)
    args = parser.parse_args(argv)
    host_dir, fetched = args.host_dir, args.fetched
    witness = host_dir / "checkpoints.log"
    old = witness.read_bytes() if witness.exists() else b""
    new = fetched.read_bytes()
    report: dict[str, object] = {"witness": str(witness), "old_bytes": len(old)}
    try:
        public = pinned_key(host_dir, args.enrol)
        report["public_key"] = public.hex()
        added = check(old, new, public, args.key_name)
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
