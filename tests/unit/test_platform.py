"""service._platform: the one CPU-feature reader and the one process stop ladder."""

from __future__ import annotations

import signal
import sys

import pytest

from service._platform import ChildProcess, feature_names, parse_cpu_flags, poll_until


def test_stop_climbs_the_ladder_past_an_ignored_signal(tmp_path):
    code = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    child = ChildProcess([sys.executable, "-c", code], tmp_path / "child.log")
    poll_until(lambda: "up" in (tmp_path / "child.log").read_text(), 20, poll_s=0.05, alive=child.alive, what="child")
    rc = child.stop(((signal.SIGINT, 0.5, False), (signal.SIGTERM, 10, False)))
    assert rc == -signal.SIGTERM and not child.alive()
    assert child.log_tail() == "up"


def test_poll_until_says_when_the_process_died_first(tmp_path):
    child = ChildProcess([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "child.log")
    with pytest.raises(RuntimeError, match="child exited before it was ready"):
        poll_until(lambda: False, 20, poll_s=0.05, alive=child.alive, what="child")
    assert child.stop() == 3


def test_cpu_features_are_read_in_one_vocabulary():
    assert parse_cpu_flags("Features\t: fp asimd asimddp sve i8mm\n") == ["asimd", "asimddp", "sve", "i8mm"]
    assert feature_names(["amx_int8", "avx512_vnni"]) == "AVX-512 VNNI, AMX-INT8"
