"""Published versions: which exist, which a server holds, and garbage collection.

A running server holds the version it resolved through a **lease**: each process that loads
artifacts from a version directory (:func:`hold`, called by ``Backend.load``) writes
``<lease dir>/<version-dir-name>/<host>-<pid>-<uuid>`` (JSON: host, pid, since) and a daemon
thread touches it every ``LEASE_REFRESH_S`` seconds; a clean exit removes it. The lease dir
(:func:`lease_root`) is ``TWINSERVE_ARTIFACT_LEASE_DIR`` or, unset, ``.leases`` beside the
versions: outside the version directory, so a server that mounts the artifacts read-only can
still lease them (the chart mounts ``<volume>/.leases`` a second time, read-write). Leases in the
old place, ``<version>/.leases/``, are still read. Garbage collection treats a lease
modified within the TTL (``TWINSERVE_ARTIFACT_LEASE_TTL_S``, default 600 s) as a pin, so a
replica that restarts minutes after its process died still finds its files; a lease older than
that is from a process that died and is ignored. An explicit pin (``<version>/.pinned``,
``twinserve artifacts pin``) never expires.

:func:`collect` keeps the current version, the newest ``keep`` versions and every pinned or
leased one, and removes the rest (its lease directory, then the version: renamed to
``.<name>.trash-<uuid>`` first, then deleted, so a half-deleted version never looks like a version).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from service.artifacts import publishing as _publishing
from service.artifacts.publishing import DEFAULT_KEEP_VERSIONS, LEASES_DIR, fsync_dir, publish_lock

__all__ = [
    "LEASE_REFRESH_S", "Lease", "Version", "collect", "default_lease_ttl_s", "hold", "lease_root", "list_versions",
    "pin", "prepare_leases", "release", "resolve_version", "unpin",
]

log = logging.getLogger(__name__)

LEASE_REFRESH_S = 60.0
PIN_FILE = ".pinned"
# .<name>-<YYYYmmdd-HHMMSS[ffffff]>-<tag8>[-<random>]: versions written by service.artifacts.publishing (and
# by the job before it: seconds, no random suffix). The UTC time of the publish orders them.
_VERSION = re.compile(r"^\.(?P<name>.+)-(?P<stamp>\d{8}-\d{6}(?:\d{6})?)-(?P<tag>[0-9a-z]{8})(?:-[0-9a-z]+)?$")


def default_lease_ttl_s() -> float:
    from service.settings import Settings

    return Settings().artifact_lease_ttl_s


def lease_root(parent: Path) -> Path:
    """The directory holding the leases on the versions in ``parent`` (the artifacts root), one
    subdirectory per version named as the version: ``TWINSERVE_ARTIFACT_LEASE_DIR``, or ``<parent>/.leases``."""
    from service.settings import Settings

    configured = Settings().artifact_lease_dir
    return configured.expanduser().absolute() if configured is not None else parent / LEASES_DIR


def _shared_dir(path: Path) -> None:
    """Make ``path`` (and its parents); when this call made it, mode 1777: any serving user may lease
    (sticky: each removes only its own files)."""
    if path.is_dir():
        return
    path.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # made by another user in between: theirs to set
        os.chmod(path, 0o1777)


def prepare_leases(out: Path) -> Path:
    """Make the lease directory of ``out``'s versions if missing (publishing does); return it. One it
    cannot make is logged: publishing goes on."""
    root = lease_root(out.parent)
    try:
        _shared_dir(root)
    except OSError as e:
        log.warning("cannot make the lease directory %s (%s): servers cannot lease versions there", root,
                    e.strerror or e)
    return root


@dataclass
class Lease:
    path: Path
    holder: str  # "host pid" from the file (or its name)
    age_s: float
    fresh: bool


@dataclass
class Version:
    path: Path
    created: datetime
    current: bool
    size_bytes: int
    pin: dict | None  # the pin file's content ({"by", "at", "note"}) when pinned
    leases: list[Lease] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def held(self) -> bool:
        return self.pin is not None or any(lease.fresh for lease in self.leases)


def _is_version(path: Path, name: str | None = None) -> re.Match | None:
    m = _VERSION.match(path.name)
    if m is None or (name is not None and m["name"] != name):
        return None
    return m if path.is_dir() and not path.is_symlink() else None


def _size(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def _leases(version: Path, root: Path, ttl_s: float, now: float) -> list[Lease]:
    out = []
    # The lease directory, and <version>/.leases where servers from before it wrote theirs.
    files = [p for d in (root / version.name, version / LEASES_DIR) if d.is_dir() for p in sorted(d.iterdir())]
    for p in files:
        try:
            age = now - p.stat().st_mtime
        except FileNotFoundError:
            continue
        try:
            info = json.loads(p.read_text())
            holder = f"{info['host']} pid {info['pid']}"
        except (OSError, ValueError, KeyError, TypeError):
            holder = p.name
        out.append(Lease(path=p, holder=holder, age_s=age, fresh=age < ttl_s))
    return out


def _read_pin(version: Path) -> dict | None:
    p = version / PIN_FILE
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {"by": "unknown", "at": None, "note": ""}


def list_versions(out: Path, *, lease_ttl_s: float | None = None, sizes: bool = True) -> list[Version]:
    """Every published version of ``out`` (``artifacts/<name>``), newest first."""
    ttl = default_lease_ttl_s() if lease_ttl_s is None else lease_ttl_s
    root = lease_root(out.parent)
    current = out.resolve() if out.is_symlink() else None
    now = time.time()
    found = []
    if not out.parent.is_dir():
        return found
    for p in out.parent.iterdir():
        m = _is_version(p, out.name)
        if m is None:
            continue
        created = datetime.strptime(m["stamp"].ljust(21, "0"), "%Y%m%d-%H%M%S%f").replace(tzinfo=UTC)
        found.append((created, p.name, Version(
            path=p, created=created, current=p.resolve() == current, size_bytes=_size(p) if sizes else 0,
            pin=_read_pin(p), leases=_leases(p, root, ttl, now))))
    found.sort(key=lambda t: (t[0], t[1]), reverse=True)
    return [v for *_, v in found]


def _collect_locked(out: Path, *, keep: int, lease_ttl_s: float | None, dry_run: bool) -> list[Path]:
    victims = [v for i, v in enumerate(list_versions(out, lease_ttl_s=lease_ttl_s, sizes=False))
               if i >= keep and not v.current and not v.held]
    if dry_run:
        return [v.path for v in victims]
    root = lease_root(out.parent)
    for v in victims:
        shutil.rmtree(root / v.name, ignore_errors=True)  # expired leases first: killed here, the next gc ends it
        trash = out.parent / f".{out.name}.trash-{uuid.uuid4().hex}"
        os.rename(v.path, trash)
        fsync_dir(out.parent)
        _publishing._checkpoint("gc")
        shutil.rmtree(trash, ignore_errors=True)
    return [v.path for v in victims]


def collect(out: Path, *, keep: int = DEFAULT_KEEP_VERSIONS, lease_ttl_s: float | None = None,
            dry_run: bool = False, lock_timeout_s: float = 600.0) -> list[Path]:
    """Remove the versions of ``out`` beyond the newest ``keep`` that are neither current, pinned nor
    leased (a lease younger than ``lease_ttl_s``), and their lease directories; return them (with
    ``dry_run``: what would go)."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1 (the current version), got {keep}")
    if dry_run:
        return _collect_locked(out, keep=keep, lease_ttl_s=lease_ttl_s, dry_run=True)
    with publish_lock(out, lock_timeout_s):
        return _collect_locked(out, keep=keep, lease_ttl_s=lease_ttl_s, dry_run=False)


def resolve_version(target: str | Path, out: Path | None = None) -> Path:
    """A version directory from a path, a version's directory name beside ``out``, or ``current``."""
    if out is not None and str(target) == "current":
        p = out.resolve()
    else:
        p = Path(target)
        if not p.exists() and out is not None:
            p = out.parent / str(target)
        p = p.resolve()
    if _is_version(p) is None:
        raise ValueError(f"{target} is not a published version directory (.<name>-<stamp>-<hash>...)"
                         + (f"; `twinserve artifacts list {out}` shows them" if out is not None else ""))
    return p


def pin(version: Path, note: str = "") -> Path:
    """Pin ``version`` until :func:`unpin`: gc never removes it."""
    p = version / PIN_FILE
    info = {"by": f"{os.environ.get('USER') or os.getuid()}@{socket.gethostname()}",
            "at": datetime.now(UTC).isoformat(timespec="seconds"), "note": note}
    tmp = version / f"{PIN_FILE}.{uuid.uuid4().hex}"
    tmp.write_text(json.dumps(info) + "\n")
    os.replace(tmp, p)
    fsync_dir(version)
    return p


def unpin(version: Path) -> bool:
    p = version / PIN_FILE
    existed = p.exists()
    p.unlink(missing_ok=True)
    return existed


# --- the serving side: one lease per version this process loaded from -----------------------------------

_held: dict[Path, Path] = {}  # version directory -> this process's lease file
_lock = threading.Lock()
_refresher: threading.Thread | None = None


def _after_fork_in_child() -> None:
    """A forked child inherits the registry, not the leases: it must neither refresh nor remove them."""
    global _lock, _refresher
    _held.clear()
    _lock, _refresher = threading.Lock(), None


os.register_at_fork(after_in_child=_after_fork_in_child)


def hold(artifact_dir: str | Path, *, refresh: bool = True) -> Path | None:
    """Lease the version ``artifact_dir`` resolves to for as long as this process runs; return the lease
    file (``<lease_root>/<version-dir-name>/<host>-<pid>-<uuid>``). A directory that is not a published
    version (a copy, a fixture) needs none: None. A lease directory this process cannot write to is
    logged once and the version left to ``keep`` (None)."""
    global _refresher
    version = Path(artifact_dir).resolve()
    if _is_version(version) is None:
        return None
    with _lock:
        if version in _held:
            return _held[version]
        root = lease_root(version.parent)
        lease = root / version.name / f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        try:
            _shared_dir(root)
            _shared_dir(lease.parent)
            lease.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                         "since": datetime.now(UTC).isoformat(timespec="seconds")}) + "\n")
        except OSError as e:
            log.warning("cannot lease %s in %s (%s): artifacts gc may remove it once %d newer versions are "
                        "published; set TWINSERVE_ARTIFACT_LEASE_DIR to a writable directory gc reads too",
                        version, root, e.strerror or e, DEFAULT_KEEP_VERSIONS)
            return None
        _held[version] = lease
        if refresh and _refresher is None:
            _refresher = threading.Thread(target=_refresh_forever, name="twinserve-artifact-lease", daemon=True)
            _refresher.start()
    return lease


def release(artifact_dir: str | Path | None = None) -> None:
    """Drop this process's lease on ``artifact_dir``'s version (all of them when None); also at exit."""
    with _lock:
        versions = list(_held) if artifact_dir is None else [Path(artifact_dir).resolve()]
        for v in versions:
            lease = _held.pop(v, None)
            if lease is not None:
                lease.unlink(missing_ok=True)


def _refresh_forever() -> None:
    while True:
        time.sleep(LEASE_REFRESH_S)
        with _lock:
            for version, lease in list(_held.items()):
                try:
                    os.utime(lease)
                except FileNotFoundError:
                    if version.is_dir():  # someone removed the lease by hand: write it again
                        try:
                            lease.parent.mkdir(parents=True, exist_ok=True)
                            lease.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}) + "\n")
                        except OSError:
                            pass
                except OSError:
                    pass


atexit.register(release)
