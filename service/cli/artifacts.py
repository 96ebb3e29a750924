"""``twinserve artifacts list|gc|pin|unpin``: the published versions of an artifact directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from service.cli._common import CliError

__all__ = ["add_commands"]


def _cmd_artifacts(args: argparse.Namespace) -> None:
    from datetime import UTC, datetime

    from rich.console import Console
    from rich.table import Table

    from service.artifacts import collect, lease_root, list_versions, pin, resolve_version, unpin
    from service.settings import default_artifact_dir

    out = (args.dir or default_artifact_dir()).expanduser().absolute()
    if not out.parent.is_dir():
        raise CliError(f"no artifact directory {out.parent}")
    console = Console(width=140)
    if args.action in ("pin", "unpin"):
        try:
            version = resolve_version(args.version, out)
            if args.action == "pin":
                pin(version, args.note)
                print(f"pinned {version} (gc never removes it; `twinserve artifacts unpin {version.name}` undoes)")
            else:
                print(f"unpinned {version}" if unpin(version) else f"{version} was not pinned")
        except (ValueError, OSError) as e:
            raise CliError(str(e)) from None
        return
    if args.action == "gc":
        try:
            removed = collect(out, keep=args.keep, lease_ttl_s=args.lease_ttl_s, dry_run=args.dry_run)
        except ValueError as e:
            raise CliError(str(e)) from None
        verb = "would remove" if args.dry_run else "removed"
        for p in removed:
            print(f"{verb} {p}")
        print(f"{verb} {len(removed)} version(s) of {out.name}; kept the current one, the newest {args.keep} and "
              "every pinned or leased one")
        return
    versions = list_versions(out, lease_ttl_s=args.lease_ttl_s)
    if not versions:
        print(f"no published versions of {out.name} in {out.parent}")
        return
    now = datetime.now(UTC)
    table = Table(title=f"twinserve artifacts: {out}", caption=f"leases read from {lease_root(out.parent)}")
    for col in ("version", "current", "size", "age", "held by"):
        table.add_column(col, justify="left" if col in ("version", "held by") else "right")
    for v in versions:
        age_s = (now - v.created).total_seconds()
        age = f"{age_s / 86400:.1f} d" if age_s >= 86400 else f"{age_s / 3600:.1f} h" if age_s >= 3600 \
            else f"{age_s / 60:.0f} min"
        held = [f"pinned by {v.pin.get('by')}" + (f" ({v.pin['note']})" if v.pin.get("note") else "")] if v.pin else []
        held += [f"lease {lease.holder} ({lease.age_s:.0f} s ago{'' if lease.fresh else ', expired'})"
                 for lease in v.leases]
        table.add_row(v.name, "yes" if v.current else "", f"{v.size_bytes / 1e6:.1f} MB", age,
                      "; ".join(held) or "-")
    console.print(table)


def add_commands(sub) -> None:
    from service.artifacts import DEFAULT_KEEP_VERSIONS

    ar = sub.add_parser(
        "artifacts", help="published artifact versions: list, gc, pin, unpin",
        description="Versions of an artifact directory (artifacts/<model> is a symlink to the current one): "
                    "which exist, their size and age, which a running server leases or a person pinned; gc removes "
                    "the versions beyond the newest K that are neither current, pinned nor leased. Leases are "
                    "read from TWINSERVE_ARTIFACT_LEASE_DIR, or <artifacts root>/.leases when unset.")
    acts = ar.add_subparsers(dest="action", required=True)
    ls = acts.add_parser("list", help="versions, the current one, size, age, pins and leases")
    gc = acts.add_parser("gc", help="remove unpinned, unleased versions beyond the newest K (never the current one)")
    for a in (ls, gc):
        a.add_argument("dir", nargs="?", type=Path, help="artifact directory (default: artifacts/all-MiniLM-L6-v2)")
        a.add_argument("--lease-ttl-s", type=float, default=None,
                       help="a lease refreshed within this many seconds holds its version (default: "
                            "TWINSERVE_ARTIFACT_LEASE_TTL_S, 600)")
    gc.add_argument("--keep", type=int, default=DEFAULT_KEEP_VERSIONS, help="versions kept (default 3)")
    gc.add_argument("--dry-run", action="store_true", help="print what would be removed; remove nothing")
    for name, text in (("pin", "keep a version until unpinned"), ("unpin", "drop a version's pin")):
        a = acts.add_parser(name, help=text)
        a.add_argument("version", help="version directory (path or name as `list` shows it) or `current`")
        a.add_argument("--dir", type=Path, help="artifact directory (default: artifacts/all-MiniLM-L6-v2)")
        if name == "pin":
            a.add_argument("--note", default="", help="why (shown by `list`)")
    ar.set_defaults(func=_cmd_artifacts, lease_ttl_s=None)
