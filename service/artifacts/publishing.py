"""Publishing an artifact directory: build beside it, sync, rename, swing a symlink, collect.

Layout, for ``out = artifacts/<name>``::

    artifacts/<name>                          symlink to the current version (what servers open)
    artifacts/.<name>-<utc time>-<hash8>-<r>  a published version (manifest.json, files, .pinned)
    artifacts/.<name>.tmp-<uuid>/             a build in progress; holds .build.lock (flock) while alive
    artifacts/.<name>.publish.lock            flock: one publish (or gc, or clean-up) at a time
    artifacts/.<name>.link-<uuid>             the new link, for the instant before it replaces <name>
    artifacts/.<name>.trash-<uuid>/           a version being deleted by gc
    artifacts/.leases/<version-dir-name>/     the serving processes' leases on that version (1777; unless
                                              TWINSERVE_ARTIFACT_LEASE_DIR names another directory)

A build is identified by the lock it holds, not by a PID (which repeats across hosts and
containers: every pod is PID 1): clean-up removes a ``.tmp-*`` directory only when it can take
that directory's lock, i.e. when its owner is dead. Link files and trash directories are only
made under the publish lock, so any found by someone holding that lock are debris.

Each step is durable before the next: every file and directory of the build is fsynced (and
made world-readable: files 0644, directories 0755) before the rename, and the parent directory
after each rename. A SIGKILL at any point leaves ``<name>`` resolving to a complete, verifiable
version (the previous one or the new one).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

__all__ = [
    "BUILD_LOCK", "DEFAULT_KEEP_VERSIONS", "PublishError", "building", "publish", "publish_lock", "remove_orphans",
    "sync_tree",
]

BUILD_LOCK = ".build.lock"
DEFAULT_KEEP_VERSIONS = 3
LOCKLESS_GRACE_S = 300.0  # a .tmp-* directory without a lock file (an old job's, or one killed before its
#                           first write) is debris once it is this old
LEASES_DIR = ".leases"  # the default lease directory, beside the versions (service.artifacts.versions.lease_root);
#                         servers before it wrote <version>/.leases/, which gc still reads


class PublishError(RuntimeError):
    """Publishing cannot proceed; the message says why and what to do."""


def _say(msg: str) -> None:
    print(f"[twinserve artifacts] {msg}", file=sys.stderr, flush=True)


def _checkpoint(step: str) -> None:
    """Between publishing steps; a no-op (tests replace it to SIGKILL the process at ``step``)."""


def _whoami() -> str:
    return f"host {socket.gethostname()} pid {os.getpid()} since {datetime.now(UTC).isoformat(timespec='seconds')}"


def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_tree(root: Path) -> None:
    """Make every file under ``root`` world-readable (0644; directories 0755) and fsync it, then every
    directory bottom-up, ``root`` last. The serving container runs as another user (UID 10001)."""
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for f in filenames:
            p = os.path.join(dirpath, f)
            if os.path.islink(p):
                continue
            os.chmod(p, 0o644)
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.chmod(dirpath, 0o755)
        fsync_dir(dirpath)


def _lock_holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


@contextlib.contextmanager
def publish_lock(out: Path, timeout_s: float = 600.0) -> Iterator[None]:
    """Hold ``<parent>/.<name>.publish.lock`` (flock). A second publisher waits for it, saying who holds
    it, and fails with :class:`PublishError` after ``timeout_s``."""
    path = out.parent / f".{out.name}.publish.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
            if time.monotonic() >= deadline:
                raise PublishError(
                    f"another job is publishing into {out.parent} ({_lock_holder(path)}) and still held {path.name} "
                    f"after {timeout_s:.0f} s; wait for it or stop it, then run again")
            if not told:
                _say(f"waiting for {path.name}, held by another publish ({_lock_holder(path)})")
                told = True
            time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (_whoami() + "\n").encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock; the file stays (unlinking a lock file races with its next taker)


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on ``path``, or None when a live process holds it (or it is gone)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def building(out: Path) -> Iterator[Path]:
    """A fresh build directory beside ``out`` (``.<name>.tmp-<uuid4>``), flocked for as long as the
    context is open; removed if the body raises. :func:`publish` it inside the context."""
    out.parent.mkdir(parents=True, exist_ok=True)
    build = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex}"
    build.mkdir()
    fd = os.open(build / BUILD_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, (_whoami() + "\n").encode())
        yield build
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    finally:
        os.close(fd)


def remove_orphans(out: Path, *, lock_timeout_s: float = 600.0) -> list[Path]:
    """Remove what killed jobs left beside ``out``: build directories whose lock is free (their owner is
    dead), stray link files and trash directories. Live builds, versions and ``out`` are never touched."""
    if not out.parent.is_dir():
        return []
    removed = []
    with publish_lock(out, lock_timeout_s):
        for p in sorted(out.parent.glob(f".{out.name}.*-*")):
            kind = p.name[len(out.name) + 2:].partition("-")[0]
            if kind == "tmp" and p.is_dir() and not p.is_symlink():
                lock = p / BUILD_LOCK
                if lock.exists():
                    fd = _try_lock(lock)
                    if fd is None:
                        continue  # a live build (here or on another host)
                    try:
                        _say(f"removing {p.name}, left by an interrupted job ({_lock_holder(lock)})")
                        shutil.rmtree(p, ignore_errors=True)
                    finally:
                        os.close(fd)
                elif time.time() - p.stat().st_mtime > LOCKLESS_GRACE_S:
                    _say(f"removing {p.name}, left by an interrupted job (no lock file)")
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    continue
            elif kind == "trash" and p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            elif kind == "link" and p.is_symlink():
                p.unlink(missing_ok=True)
            else:
                continue
            removed.append(p)
    return removed


def version_name(name: str, tag: str, when: datetime | None = None) -> str:
    """``.<name>-<YYYYmmdd-HHMMSSffffff UTC>-<tag[:8]>-<random>``: in publish order, unique across hosts."""
    stamp = (when or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S%f")
    return f".{name}-{stamp}-{tag[:8]}-{uuid.uuid4().hex[:6]}"


def publish(build: Path, out: Path, tag: str, *, keep_versions: int = DEFAULT_KEEP_VERSIONS,
            lease_ttl_s: float | None = None, lock_timeout_s: float = 600.0) -> Path:
    """Publish the finished ``build`` (from :func:`building`) as the current version of ``out``.

    Under the publish lock: sync the build, rename it to a version, point a new link at it,
    ``os.replace`` the link over ``out``, then keep the newest ``keep_versions`` versions and every
    pinned or leased one (:func:`service.artifacts.versions.collect`). The lease directory is made
    if missing. ``tag`` (hex, e.g. the inputs' fingerprint) names the version. Returns the version directory.
    """
    from service.artifacts.versions import _collect_locked, prepare_leases

    if keep_versions < 1:
        raise PublishError(f"keep_versions must be at least 1 (the current version), got {keep_versions}")
    with publish_lock(out, lock_timeout_s):
        _checkpoint("built")
        prepare_leases(out)
        sync_tree(build)
        _checkpoint("synced")
        version = out.parent / version_name(out.name, tag)
        os.rename(build, version)
        fsync_dir(out.parent)
        _checkpoint("renamed")
        if out.exists() and not out.is_symlink():
            # A plain directory from the oldest layout: move it aside as a version (not atomic; once only).
            when = datetime.fromtimestamp(out.stat().st_mtime, UTC)
            os.rename(out, out.parent / version_name(out.name, "legacy00", when))
            fsync_dir(out.parent)
        link = out.parent / f".{out.name}.link-{uuid.uuid4().hex}"
        link.symlink_to(version.name)
        _checkpoint("linked")
        os.replace(link, out)
        fsync_dir(out.parent)
        _checkpoint("swung")
        (version / BUILD_LOCK).unlink(missing_ok=True)  # the build's lock file (its fd is closed by `building`)
        _collect_locked(out, keep=keep_versions, lease_ttl_s=lease_ttl_s, dry_run=False)
    return version
