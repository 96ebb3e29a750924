"""`twinserve serve` argument handling, up to the point where Ray would start (no Ray here)."""

from __future__ import annotations

import pytest

from service.cli import build_parser, main


def test_serve_help_says_what_it_does(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["serve", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "/v1/embeddings" in out and "--dense-weight" in out and "fast" in out and "--metrics-port" in out


def test_serve_refuses_a_missing_explicit_artifact_dir_before_starting_ray(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["serve", "--artifacts", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"no artifacts at {missing}" in err and "twinserve prune --out" in err


def test_serve_refuses_altered_artifacts_before_starting_ray(tiny_artifacts, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_artifacts.resolve(), copy)
    (copy / "tokenizer.json").write_text("{}")
    assert main(["serve", "--artifacts", str(copy)]) == 2
    assert "tokenizer.json has sha256" in capsys.readouterr().err


def test_serve_weight_must_be_a_fraction(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--dense-weight", "1.5"])
    assert "must be in [0, 1]" in capsys.readouterr().err


def test_serve_admission_flags_are_checked(capsys):
    args = build_parser().parse_args(["serve"])
    assert (args.max_in_flight, args.queue_timeout_ms, args.ray_ingress) == (32, 50, "haproxy")
    assert build_parser().parse_args(["serve", "--max-in-flight", "0"]).max_in_flight == 0  # no edge
    for bad in (["--max-in-flight", "-1"], ["--queue-timeout-ms", "0"], ["--ray-ingress", "nginx"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["serve", *bad])
    err = capsys.readouterr().err
    assert "must be an integer >= 0, got -1" in err and "must be an integer >= 1, got 0" in err


def test_serve_refuses_a_taken_port_before_starting_ray(tiny_artifacts, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--artifacts", str(tiny_artifacts), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
