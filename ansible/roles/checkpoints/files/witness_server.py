#!/usr/bin/env python3
"""A witness that boxes without SSH push their signed checkpoints to (``[audit] witness_url``).

Usage: ``witness_server.py WITNESS_DIR [--bind ADDR] [--port N]``.

Each box is a directory ``WITNESS_DIR/<host>/`` holding ``audit-signing.pub``, the box's public
key (hex) recorded at enrolment off the box; a host without one is refused (404), so a box cannot
enrol itself. A box POSTs one signed note (``text/plain; charset=utf-8``) to ``/<host>``, its
``witness_url``. The note is accepted (204) only if it carries a valid Ed25519 signature by the
pinned key (the same check as ``witness.py``), its origin matches the earlier ones, its tree size
is not below the largest one witnessed and a size witnessed before has the same root; it is then
appended (fsynced) as ``{"size", "note"}`` to ``WITNESS_DIR/<host>/checkpoints.log``, the file
``appliance audit verify --witness ... --public-key .../audit-signing.pub`` reads. A repeated note
is accepted without a second line. Anything else is refused (409 inconsistent, 400 malformed) and
the witness copy is left as it was. Standard library and ``cryptography`` only; plain HTTP (put a
TLS terminator in front of it off the LAN).
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import re
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from witness import KEY_NAME, Inconsistent, parse_line, read_public_key  # noqa: E402

_HOST = re.compile(r"^/([A-Za-z0-9][A-Za-z0-9._-]{0,62})/?$")
_MAX_NOTE = 16 * 1024
_LOCK = threading.Lock()


def accept(host_dir: Path, note: str, key_name: str = KEY_NAME) -> bool:
    """Check one pushed note against the host's pinned key and witness copy; append it.

    Returns:
        Whether a line was added (``False`` for a note already witnessed).

    Raises:
        Inconsistent: Bad signature, other key, shrinking tree, two roots for one size, origin
            changed, or a malformed note.
    """
    public = read_public_key(host_dir / "audit-signing.pub")
    line = json.dumps({"size": _size_of(note), "note": note})
    origin, size, root = parse_line(line, "pushed note", public, key_name)
    copy = host_dir / "checkpoints.log"
    seen: dict[int, bytes] = {}
    last, first_origin = -1, None
    if copy.exists():
        for n, old in enumerate(copy.read_text(encoding="utf-8").splitlines(), 1):
            o, s, r = parse_line(old, f"witness line {n}", public, key_name)
            seen[s], last, first_origin = r, max(last, s), first_origin or o
    if first_origin is not None and origin != first_origin:
        raise Inconsistent(f"origin changed from {first_origin!r} to {origin!r}")
    if size in seen:
        if seen[size] != root:
            raise Inconsistent(f"two different roots for tree size {size}")
        return False
    if size < last:
        raise Inconsistent(f"tree size went back from {last} to {size}")
    with copy.open("a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
    return True


def _size_of(note: str) -> int:
    lines = note.split("\n")
    if len(lines) < 2 or not lines[1].isdigit():
        raise Inconsistent("pushed note: malformed signed note")
    return int(lines[1])


class Handler(http.server.BaseHTTPRequestHandler):
    """POST /<host>: one signed checkpoint note."""

    root: Path
    server_version = "appliance-witness"

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        """Check and append one pushed note (204), or refuse it (400, 404, 409)."""
        match = _HOST.match(self.path)
        host_dir = self.root / match.group(1) if match else None
        if host_dir is None or not (host_dir / "audit-signing.pub").exists():
            self._answer(404, "unknown host: enrol its public key first")
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 < length <= _MAX_NOTE:
            self._answer(400, "a signed note of at most 16 KiB is expected")
            return
        try:
            note = self.rfile.read(length).decode("utf-8")
            with _LOCK:
                added = accept(host_dir, note)
        except UnicodeDecodeError:
            self._answer(400, "not UTF-8")
            return
        except Inconsistent as exc:
            self._answer(409, str(exc))
            return
        self._answer(204 if added else 200, "")

    def _answer(self, status: int, text: str) -> None:
        body = (text + "\n").encode() if text else b""
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Access log on stderr (method, path, status: no note content)."""
        sys.stderr.write(f"{self.address_string()} {format % args}\n")


def main(argv: list[str] | None = None) -> int:
    """Serve until interrupted; prints the bound port on its first line."""
    parser = argparse.ArgumentParser(description="checkpoint witness for boxes without SSH")
    parser.add_argument("witness_dir", type=Path)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8088)
    args = parser.parse_args(argv)
    handler = type("BoundHandler", (Handler,), {"root": args.witness_dir})
    server = http.server.ThreadingHTTPServer((args.bind, args.port), handler)
    print(f"listening on {args.bind}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
