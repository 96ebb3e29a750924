"""Publishing, versions, leases and gc (service.artifacts), on tiny fake versions: a manifest and one
hashed file each. No Ray, no timing assertions; other processes are real (subprocess)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from service import artifacts
from service.artifacts import (
    PublishError,
    building,
    collect,
    hash_directory,
    hold,
    list_versions,
    pin,
    publish,
    publish_lock,
    release,
    remove_orphans,
    unpin,
    verify_artifacts,
    write_manifest,
)
from service.artifacts.manifest import CorpusInfo, LatencyRow, Manifest, VariantInfo
from service.model.config import LayerShape

ROOT = Path(__file__).resolve().parents[2]
TTL_S = 600.0


def _manifest(tag: str, files: dict[str, str]) -> Manifest:
    variant = dict(layers=[LayerShape(heads=1, ffn=4, source_index=0)], parameters=1, encoder_parameters=1,
                   flops_per_token={"128": 1})
    return Manifest(
        name="tiny", created_at=datetime.now(UTC), fingerprint=tag, source_model="fake", source_model_sha256="0" * 64,
        max_tokens=16, criterion="taylor", schedule={}, config={},
        corpus=CorpusInfo(source="wordnet", path=None, sha256="0" * 64, n_train=1, n_heldout=1),
        dense=VariantInfo(onnx_file="dense.onnx", precision="fp32", **variant),
        pruned=VariantInfo(onnx_file="pruned.onnx", precision="fp32", **variant),
        candidates={}, quantization={}, latency_hardware="test",
        latency=[LatencyRow(variant="dense", batch=1, seq_len=16, median_ms=1.0, p90_ms=1.0, runs=1)],
        build_seconds=0.0, files=files)


def publish_fake(out: Path, tag: str, keep: int = 3, lock_timeout_s: float = 600.0) -> Path:
    """What the pruning job does around its build, with a two-file build. Also run in subprocesses."""
    remove_orphans(out, lock_timeout_s=lock_timeout_s)
    with building(out) as b:
        (b / "weights.bin").write_bytes(tag.encode() * 100)
        (b / "sub").mkdir()
        (b / "sub" / "config.json").write_text(f'{{"tag": "{tag}"}}')
        os.chmod(b / "weights.bin", 0o600)  # as safetensors writes it: publishing makes it world-readable
        write_manifest(_manifest(tag, hash_directory(b)), b)
        return publish(b, out, tag, keep_versions=keep, lock_timeout_s=lock_timeout_s)


def _versions(out: Path) -> list[Path]:
    return [v.path for v in list_versions(out, lease_ttl_s=TTL_S)]


def _expire(lease: Path) -> None:
    past = time.time() - TTL_S - 1
    os.utime(lease, (past, past))


def _debris(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir()
                  if any(k in p.name for k in (".tmp-", ".link-", ".trash-")))


def _lease_dir(version: Path) -> Path:
    """Where gc reads the leases on ``version`` by default: ``<artifacts root>/.leases/<version-dir-name>``."""
    return version.parent / ".leases" / version.name


@pytest.fixture
def out(tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv("TWINSERVE_ARTIFACT_LEASE_DIR", raising=False)
    yield tmp_path / "arts" / "tiny"
    release()  # this process's leases


def test_publish_swings_the_link_and_files_are_world_readable_and_verified(out):
    v1 = publish_fake(out, "aaaa0001")
    assert out.is_symlink() and out.resolve() == v1 and v1.name.startswith(".tiny-")
    m = verify_artifacts(out)
    assert m.fingerprint == "aaaa0001"
    assert (v1 / "weights.bin").stat().st_mode & 0o777 == 0o644
    assert (v1 / "sub").stat().st_mode & 0o777 == 0o755 and v1.stat().st_mode & 0o777 == 0o755
    assert not (v1 / ".build.lock").exists() and _debris(out) == []


def test_a_fresh_lease_keeps_a_version_through_publish_and_gc_until_it_expires(out):
    v1 = publish_fake(out, "aaaa0001")
    lease = hold(v1, refresh=False)  # a server resolved and loaded v1
    assert lease is not None and lease.parent == _lease_dir(v1) and not (v1 / ".leases").exists()
    v2 = publish_fake(out, "aaaa0002", keep=1)
    v3 = publish_fake(out, "aaaa0003", keep=1)
    assert v1.is_dir() and not v2.exists() and out.resolve() == v3  # v2: not held, beyond K = 1
    assert collect(out, keep=1, lease_ttl_s=TTL_S) == [] and v1.is_dir()
    (held,) = [v for v in list_versions(out, lease_ttl_s=TTL_S) if v.path == v1]
    assert held.held and held.leases[0].fresh and str(os.getpid()) in held.leases[0].holder
    _expire(lease)  # the server died more than a TTL ago
    assert collect(out, keep=1, lease_ttl_s=TTL_S, dry_run=True) == [v1] and v1.is_dir()  # dry run: nothing goes
    assert collect(out, keep=1, lease_ttl_s=TTL_S) == [v1]
    assert not v1.exists() and _versions(out) == [v3] and _debris(out) == []
    assert not _lease_dir(v1).exists()  # gc took the version's lease directory with it


def test_gc_keeps_k_newest_the_current_and_pinned_versions(out):
    vs = [publish_fake(out, f"bbbb000{i}", keep=10) for i in range(5)]
    assert _versions(out) == vs[::-1]
    assert collect(out, keep=3, dry_run=True, lease_ttl_s=TTL_S) == [vs[1], vs[0]]
    assert _versions(out) == vs[::-1]  # dry run removed nothing
    pin(vs[0], note="rollback target")
    assert collect(out, keep=3, lease_ttl_s=TTL_S) == [vs[1]]
    assert _versions(out) == [vs[4], vs[3], vs[2], vs[0]]
    # Roll back by hand to the oldest: gc never removes the current version, whatever K.
    tmp_link = out.parent / "rollback"
    tmp_link.symlink_to(vs[0].name)
    os.replace(tmp_link, out)
    assert unpin(vs[0])
    assert collect(out, keep=1, lease_ttl_s=TTL_S) == [vs[3], vs[2]]
    assert _versions(out) == [vs[4], vs[0]] and out.resolve() == vs[0]
    verify_artifacts(out)
    with pytest.raises(ValueError, match="at least 1"):
        collect(out, keep=0)


def test_a_replica_restarting_after_two_publishes_loads_the_version_its_server_resolved(out, tiny_artifacts):
    """What build_app does (resolve the link once) and what each replica does (Backend.load from that path)."""
    import shutil

    from service.model.backends import OnnxBackend

    remove_orphans(out)
    with building(out) as b:
        for p in tiny_artifacts.iterdir():
            (shutil.copytree if p.is_dir() else shutil.copy2)(p, b / p.name)
        publish(b, out, "cccc0001")
    resolved = out.expanduser().resolve()  # service/serving/app.py: build_app
    first = OnnxBackend(resolved, variant="pruned", threads=1)
    first.load()  # the replica leases the version it loads
    assert [p.name.split("-")[1] for p in _lease_dir(resolved).iterdir()] == [str(os.getpid())]
    publish_fake(out, "cccc0002", keep=1)
    publish_fake(out, "cccc0003", keep=1)
    assert out.resolve() != resolved
    restarted = OnnxBackend(resolved, variant="pruned", threads=1)  # the replica's restart
    restarted.load()
    assert restarted.embed(["still here"]).shape[0] == 1
    assert verify_artifacts(resolved).fingerprint == verify_artifacts(tiny_artifacts).fingerprint


def test_a_forked_child_leaves_its_parents_lease_alone(out):
    lease = hold(publish_fake(out, "abab0001"), refresh=False)
    pid = os.fork()
    if pid == 0:  # the child's exit (atexit runs release) must not remove the parent's lease
        release()
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    assert lease.exists()


def test_hold_ignores_a_directory_that_is_not_a_published_version(tmp_path):
    plain = tmp_path / "copy"
    plain.mkdir()
    assert hold(plain) is None and not (plain / ".leases").exists() and not (tmp_path / ".leases").exists()


def test_a_server_leasing_through_its_own_lease_mount_keeps_its_version_until_the_lease_expires(out, tmp_path):
    """The chart's layout: the server sees the artifacts read-only and the lease directory at another path
    (TWINSERVE_ARTIFACT_LEASE_DIR; here a symlink stands for the second mount of <volume>/.leases); gc, run
    with nothing set, reads <artifacts root>/.leases. A server killed without a clean exit leaves its lease."""
    v1 = publish_fake(out, "acac0001")
    assert (out.parent / ".leases").stat().st_mode & 0o7777 == 0o1777  # made by publishing, for any serving user
    mount = tmp_path / "mnt" / "leases"
    mount.parent.mkdir()
    mount.symlink_to(out.parent / ".leases")
    ready = tmp_path / "ready"
    log = tmp_path / "server.log"
    server = subprocess.Popen(
        [sys.executable, "-c", f"import time; from pathlib import Path; from service.artifacts import hold; "
                               f"Path({str(ready)!r}).write_text(str(hold({str(v1)!r}))); time.sleep(600)"],
        cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT,
        env={**os.environ, "TWINSERVE_ARTIFACT_LEASE_DIR": str(mount)})
    try:
        _wait_for(lambda: ready.exists() and ready.read_text(), server, log, "the server's lease")
        lease = Path(ready.read_text())
        assert lease.parent == mount / v1.name and lease.is_file()
        assert not (v1 / ".leases").exists()  # nothing written into the version
        v3 = [publish_fake(out, f"acac000{i}", keep=1) for i in (2, 3)][-1]
        assert v1.is_dir() and collect(out, keep=1, lease_ttl_s=TTL_S) == [] and v1.is_dir()
        (held,) = [v for v in list_versions(out, lease_ttl_s=TTL_S) if v.path == v1]
        assert held.held and [lease.path.name for lease in held.leases] == [lease.name]
        assert f"pid {server.pid}" in held.leases[0].holder
    finally:
        server.kill()  # SIGKILL: no clean exit, the lease stays behind
        server.wait(60)
    assert (_lease_dir(v1) / lease.name).is_file()
    assert collect(out, keep=1, lease_ttl_s=TTL_S) == []  # fresh still: the server may be restarting
    _expire(_lease_dir(v1) / lease.name)
    assert collect(out, keep=1, lease_ttl_s=TTL_S) == [v1]
    assert _versions(out) == [v3] and not _lease_dir(v1).exists() and _debris(out) == []


def test_hold_writes_where_the_lease_dir_setting_says(out, tmp_path, monkeypatch):
    v1 = publish_fake(out, "adad0001")
    elsewhere = tmp_path / "leases"
    monkeypatch.setenv("TWINSERVE_ARTIFACT_LEASE_DIR", str(elsewhere))
    lease = hold(v1, refresh=False)
    assert lease.parent == elsewhere / v1.name and not any(_lease_dir(v1).parent.iterdir())
    publish_fake(out, "adad0002", keep=1)
    assert v1.is_dir()  # publishing's keep-K clean-up read the lease where it was written
    _expire(lease)
    assert collect(out, keep=1, lease_ttl_s=TTL_S) == [v1] and not (elsewhere / v1.name).exists()


def test_leases_written_inside_a_version_by_older_servers_still_count(out):
    v1 = publish_fake(out, "aeae0001")
    old = v1 / ".leases" / "oldhost-7-0123456789ab"
    old.parent.mkdir()
    old.write_text('{"host": "oldhost", "pid": 7}\n')
    publish_fake(out, "aeae0002", keep=1)
    (held,) = [v for v in list_versions(out, lease_ttl_s=TTL_S) if v.path == v1]
    assert v1.is_dir() and held.held and held.leases[0].holder == "oldhost pid 7"
    _expire(old)
    assert collect(out, keep=1, lease_ttl_s=TTL_S) == [v1]


def test_a_second_publisher_waits_for_the_lock_then_fails_in_words(out):
    publish_fake(out, "dddd0001")
    with pytest.raises(PublishError, match=r"another job is publishing into .* \(host .* pid \d+"):
        with building(out) as b, publish_lock(out):  # a second open file in this process conflicts like another's
            publish(b, out, "dddd0002", lock_timeout_s=0.3)
    assert _debris(out) == []  # the failed publisher removed its own build
    verify_artifacts(out)


def _spawn(script: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _wait_for(cond, proc: subprocess.Popen, log: Path, what: str) -> None:
    deadline = time.monotonic() + 120
    while not cond():
        assert proc.poll() is None, f"{what}: process exited early: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"{what}: not reached; {log.read_text()[-2000:]}"
        time.sleep(0.05)


def test_two_concurrent_publishers_neither_deletes_the_others_build(out, tmp_path):
    publish_fake(out, "eeee0000")
    go = tmp_path / "go"
    # A: builds, then waits for `go` before publishing (so B runs its orphan clean-up while A's build is live).
    script_a = f"""
import time
from pathlib import Path
from service.artifacts import building, hash_directory, publish, remove_orphans, write_manifest
from tests.unit.test_artifacts import _manifest
out = Path({str(out)!r})
remove_orphans(out)
with building(out) as b:
    (b / "weights.bin").write_bytes(b"A" * 100)
    write_manifest(_manifest("aaaaaaaa", hash_directory(b)), b)
    (b.parent / "a-built").write_text(b.name)
    while not Path({str(go)!r}).exists():
        time.sleep(0.05)
    publish(b, out, "aaaaaaaa")
"""
    log_a = tmp_path / "a.log"
    a = _spawn(script_a, log_a)
    built = out.parent / "a-built"
    _wait_for(built.exists, a, log_a, "A's build")
    a_build = out.parent / built.read_text()
    # B publishes start to finish meanwhile: its clean-up must leave A's live (locked) build alone.
    b = subprocess.run([sys.executable, "-c", f"from pathlib import Path; from tests.unit.test_artifacts import "
                        f"publish_fake; publish_fake(Path({str(out)!r}), 'bbbbbbbb')"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert b.returncode == 0, b.stderr[-2000:]
    assert a_build.is_dir() and (a_build / "weights.bin").read_bytes() == b"A" * 100
    assert verify_artifacts(out).fingerprint == "bbbbbbbb"
    # Now A publishes while this process holds the publish lock: A waits (and says for whom) until it is free.
    with publish_lock(out):
        go.write_text("")
        _wait_for(lambda: "waiting for .tiny.publish.lock" in log_a.read_text(), a, log_a, "A waiting")
        assert a_build.is_dir() and a.poll() is None
    assert a.wait(120) == 0, log_a.read_text()[-2000:]
    assert verify_artifacts(out).fingerprint == "aaaaaaaa"
    assert [verify_artifacts(p).fingerprint for p in _versions(out)] == ["aaaaaaaa", "bbbbbbbb", "eeee0000"]
    assert _debris(out) == []


STEPS = ["built", "synced", "renamed", "linked", "swung", "gc"]


@pytest.mark.parametrize("step", STEPS)
def test_sigkill_at_each_publish_step_leaves_a_loadable_tree_and_the_next_publish_cleans_up(out, tmp_path, step):
    v1 = publish_fake(out, "ffff0001")
    script = f"""
import os, signal
from pathlib import Path
from service.artifacts import publishing as p
from tests.unit.test_artifacts import publish_fake
def checkpoint(step):
    if step == {step!r}:
        os.kill(os.getpid(), signal.SIGKILL)
p._checkpoint = checkpoint
publish_fake(Path({str(out)!r}), "ffff0002", keep=1)
"""
    log = tmp_path / "kill.log"
    proc = _spawn(script, log)
    assert proc.wait(120) == -signal.SIGKILL, log.read_text()[-2000:]
    current = out.resolve()
    assert current.is_dir()
    assert verify_artifacts(current).fingerprint == ("ffff0001" if STEPS.index(step) < STEPS.index("swung")
                                                     else "ffff0002")
    if step in ("built", "synced"):
        assert len([p for p in out.parent.iterdir() if ".tmp-" in p.name]) == 1  # the killed build, its lock free
    if step == "gc":
        assert not v1.exists() and len([p for p in out.parent.iterdir() if ".trash-" in p.name]) == 1
    v3 = publish_fake(out, "ffff0003", keep=1)
    assert _debris(out) == [] and _versions(out) == [v3] and verify_artifacts(out).fingerprint == "ffff0003"


def test_orphan_clean_up_skips_a_live_build_and_takes_a_dead_ones(out, tmp_path):
    publish_fake(out, "aaaa0001")
    with building(out) as live:
        assert remove_orphans(out) == [] and live.is_dir()
        dead = out.parent / ".tiny.tmp-0123456789abcdef"
        dead.mkdir()
        (dead / ".build.lock").write_text("host elsewhere pid 1\n")  # nobody holds its flock
        old = out.parent / ".tiny.tmp-1"  # what the job left before builds were locked: no lock file
        old.mkdir()
        os.utime(old, (time.time() - 3600, time.time() - 3600))
        assert sorted(p.name for p in remove_orphans(out)) == [".tiny.tmp-0123456789abcdef", ".tiny.tmp-1"]
        assert live.is_dir()


# --- twinserve artifacts ----------------------------------------------------------------------------------------

def test_cli_list_gc_dry_run_pin(out, capsys):
    from service.cli import main

    vs = [publish_fake(out, f"abcd000{i}", keep=10) for i in range(4)]
    hold(vs[0], refresh=False)
    assert main(["artifacts", "pin", vs[1].name, "--dir", str(out), "--note", "canary"]) == 0
    capsys.readouterr()
    assert main(["artifacts", "list", str(out)]) == 0
    text = capsys.readouterr().out
    for v in vs:
        assert v.name in text
    assert "yes" in text and "pinned by" in text and "canary" in text and f"pid {os.getpid()}" in text
    assert "leases read from" in text and str(out.parent / ".leases") in text.replace("\n", "")
    assert main(["artifacts", "gc", str(out), "--keep", "1", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "would remove 1 version(s)" in text and vs[2].name in text  # vs[0] leased, vs[1] pinned
    assert _versions(out) == vs[::-1]
    assert main(["artifacts", "unpin", vs[1].name, "--dir", str(out)]) == 0
    assert main(["artifacts", "gc", str(out), "--keep", "1"]) == 0
    assert "removed 2 version(s)" in capsys.readouterr().out
    assert _versions(out) == [vs[3], vs[0]]
    assert main(["artifacts", "pin", "nonsense", "--dir", str(out)]) == 2
    assert "not a published version" in capsys.readouterr().err


def test_the_package_exports_what_it_documents():
    for name in artifacts.__all__:
        assert hasattr(artifacts, name), name
