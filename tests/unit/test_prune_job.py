"""The pruning job end to end on a tiny random BERT: contract, errors, atomic publish, integrity."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from service.artifacts.manifest import BOOKKEEPING, ArtifactIntegrityError, Manifest, load_manifest, verify_artifacts
from service.model import onnx_runtime
from service.model.encoder import load_encoder
from service.model.onnx_runtime import make_session, run_session
from service.model.tokenizer import TextTokenizer
from service.pruning import export as export_module
from service.pruning import job as job_module
from service.pruning.export import export_onnx, fused_ops, quantize_int8
from tests.conftest import TINY_PRUNE

REQUIRED_FILES = {"manifest.json", "tokenizer.json", "dense.onnx", "pruned.onnx", "frontier.md", "frontier.png",
                  "dense/config.json", "dense/model.safetensors", "pruned/config.json", "pruned/model.safetensors"}


def check_artifact_contract(out: Path) -> Manifest:
    """DESIGN.md's artifact contract, shared with the e2e test on the real model."""
    files = {p.relative_to(out).as_posix() for p in out.rglob("*")
             if p.is_file() and p.relative_to(out).parts[0] not in BOOKKEEPING}  # not leases, pins, build lock
    assert REQUIRED_FILES <= files
    m = verify_artifacts(out)
    assert set(m.files) == files - {"manifest.json"}  # every file hashed
    for name in ("dense.onnx", "pruned.onnx"):
        graph = onnx.load(str(out / name)).graph
        inputs = {i.name: i for i in graph.input}
        assert {"input_ids", "attention_mask"} <= set(inputs)
        for i in ("input_ids", "attention_mask"):
            t = inputs[i].type.tensor_type
            assert t.elem_type == onnx.TensorProto.INT64
            assert all(d.dim_param for d in t.shape.dim)  # dynamic batch and sequence
        assert [o.name for o in graph.output] == ["sentence_embedding"]
    # a ragged batch through the pruned graph gives unit vectors of the dense dimension
    tok = TextTokenizer(out / "tokenizer.json", m.max_tokens)
    b = tok(["a short one", "a rather longer sentence about the weather and the sea"])
    emb = run_session(make_session(out / "pruned.onnx", 1), b.input_ids, b.attention_mask)
    assert emb.shape == (2, load_encoder(out / "dense").config.hidden_size)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    # the pruned variant is physically smaller and the manifest says so
    assert m.pruned.parameters < m.dense.parameters
    assert m.pruned.flops_per_token["128"] < m.dense.flops_per_token["128"]
    assert load_encoder(out / "pruned").config.layers == tuple(m.pruned.layers)
    assert m.pruned.fidelity is not None and -1 <= m.pruned.fidelity.mean_cosine <= 1
    assert {"pruned-onnxruntime-fp32", "pruned-onnxruntime-int8", "dense-onnxruntime-int8"} <= set(m.candidates)
    assert set(m.quantization["graph_fusion"]) == {"dense", "pruned-fp32"}
    # the frontier: dense and pruned x runtime x precision, each with both held-out sets and every cell
    names = {c.name for c in m.frontier}
    assert {f"{model}-{rt}-{p}" for model in ("dense", "pruned") for rt in ("onnxruntime", "openvino")
            for p in ("fp32", "int8")} == names
    assert {r.variant for r in m.latency} == names
    assert {(r.batch, r.seq_len) for r in m.latency} == {(1, 16), (1, 128), (32, 32)}
    for c in m.frontier:
        assert set(c.fidelity) == {"heldout", "everyday"} and set(c.latency_ms) == {"1x16", "1x128", "32x32"}
    assert m.corpus.heldout_sets["heldout"] == m.corpus.n_heldout
    assert 0 < m.corpus.heldout_sets["everyday"] <= m.config["everyday_texts"]
    # the CPU variant: a pruned candidate of the frontier, its files hashed, chosen by the pure rule
    from service.pruning.select import select_cpu_variant

    cv = m.cpu_variant
    sel = select_cpu_variant(m.frontier, min_mean_cosine=cv.min_mean_cosine, min_recall_at_10=cv.min_recall_at_10)
    assert cv.candidate == sel.chosen.name and cv.model == "pruned" and cv.meets_floor == sel.meets_floor
    assert (cv.runtime, cv.precision) == (sel.chosen.runtime, sel.chosen.precision)
    assert cv.file == cv.files[0] and all(f in m.files for f in cv.files)
    assert cv.best_quantised_dense in names and cv.summary and cv.cpu
    # the frontier table and plot are published beside the manifest
    assert cv.candidate in (out / "frontier.md").read_text() and "frontier.png" in m.files
    assert m.latency_hardware
    return m


def test_tiny_job_meets_the_artifact_contract(tiny_artifacts):
    m = check_artifact_contract(tiny_artifacts)
    assert m.name == tiny_artifacts.name
    assert m.criterion == TINY_PRUNE.criterion
    assert len(m.schedule["history"]) == TINY_PRUNE.pruning_steps
    assert len(m.pruned.layers) == 2  # layer_sparsity 0.34 of 3 layers
    assert m.corpus.heldout_sets == {"heldout": TINY_PRUNE.heldout_texts, "everyday": TINY_PRUNE.everyday_texts}


def test_without_openvino_the_job_measures_onnx_runtime_alone(tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setattr(job_module, "openvino_available", lambda: False)
    m = job_module.run_prune(tiny_model_dir, tmp_path / "ort-only", TINY_PRUNE).manifest
    assert {c.runtime for c in m.frontier} == {"onnxruntime"} and len(m.frontier) == 4
    assert m.cpu_variant.runtime == "onnxruntime" and m.cpu_variant.file == "pruned.onnx"
    assert not any("openvino" in f for f in m.files)
    assert "OpenVINO is not installed" in capsys.readouterr().err


def test_manifest_schema_roundtrip(tiny_artifacts):
    m = load_manifest(tiny_artifacts)
    again = Manifest.model_validate_json(m.model_dump_json())
    assert again == m
    assert again.cpu_variant == m.cpu_variant and again.frontier == m.frontier and m.frontier
    raw = json.loads((tiny_artifacts / "manifest.json").read_text())
    raw["surprise"] = 1
    with pytest.raises(ValueError):
        Manifest.model_validate(raw)
    raw.pop("surprise")
    raw["cpu_variant"]["runtime"] = "tensorrt"  # not a runtime the server can load
    with pytest.raises(ValueError):
        Manifest.model_validate(raw)


def test_manifest_from_before_the_cpu_variant_still_loads(tiny_artifacts):
    """A job-version-4 manifest (no frontier, no cpu_variant, no held-out set counts) still validates."""
    raw = json.loads((tiny_artifacts / "manifest.json").read_text())
    for key in ("frontier", "cpu_variant"):
        raw.pop(key)
    raw["corpus"].pop("heldout_sets")
    old = Manifest.model_validate(raw)
    assert old.cpu_variant is None and old.frontier == [] and old.corpus.heldout_sets == {}


def test_onnx_parity_pruned_torch_vs_onnx_fp32(tiny_artifacts, tmp_path):
    model = load_encoder(tiny_artifacts / "pruned")
    path = export_onnx(model, tmp_path / "p.onnx")
    tok = TextTokenizer(tiny_artifacts / "tokenizer.json", 64)
    b = tok(["hello there", "the cat sat on the mat while it rained", "x"])
    onnx_out = run_session(make_session(path, 1), b.input_ids, b.attention_mask)
    with torch.no_grad():
        torch_out, _ = model(torch.from_numpy(b.input_ids), torch.from_numpy(b.attention_mask))
    cos = (onnx_out * torch_out.numpy()).sum(1)
    assert cos.min() > 0.9999


def test_tampered_onnx_is_refused(tiny_artifacts, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_artifacts, copy)
    data = bytearray((copy / "pruned.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "pruned.onnx").write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError, match="pruned.onnx has sha256"):
        verify_artifacts(copy)
    (copy / "dense.onnx").unlink()
    with pytest.raises(ArtifactIntegrityError, match="missing"):
        verify_artifacts(copy, only=["dense.onnx"])


def test_rerun_reuses_and_crash_leaves_last_good_artifacts(tmp_path, tiny_model_dir, monkeypatch):
    out = tmp_path / "arts" / "tiny"
    first = job_module.run_prune(tiny_model_dir, out, TINY_PRUNE)
    assert not first.reused and out.is_symlink()
    again = job_module.run_prune(tiny_model_dir, out, TINY_PRUNE)
    assert again.reused and again.manifest.fingerprint == first.manifest.fingerprint
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def crash(*args, **kwargs):
        (tmp,) = [a for a in args if isinstance(a, Path) and ".tmp-" in a.name]  # the build directory
        (tmp / "half-written.onnx").write_bytes(b"\0" * 100)
        raise RuntimeError("simulated crash in the middle of the build")

    monkeypatch.setattr(job_module, "_build", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        job_module.run_prune(tiny_model_dir, out, TINY_PRUNE.model_copy(update={"seed": 7}))
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    verify_artifacts(out)
    assert not [p for p in out.parent.iterdir() if ".tmp-" in p.name]  # no half-built sibling left


def test_sigkill_mid_build_leaves_the_published_artifacts_intact_and_servable(tmp_path, tiny_model_dir):
    """A real SIGKILL (no handler, no finally) of `twinserve prune` halfway through distillation."""
    from service.model.backends import OnnxBackend

    out = tmp_path / "tiny"
    job_module.run_prune(tiny_model_dir, out, TINY_PRUNE)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # Long enough to be caught in the middle: thousands of distillation steps on the tiny model.
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "prune", "--model", str(tiny_model_dir), "--out", str(out),
         "--preset", "fast", "--heldout-texts", "64", "--final-distill-steps", "100000", "--force"],
        cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while not (started := [p for p in out.parent.glob(f".{out.name}.tmp-*") if (p / "tokenizer.json").is_file()]):
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]  # the build has started writing
        assert time.monotonic() < deadline, "the build never started"
        time.sleep(0.2)
    (building,) = started
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL and building.is_dir()  # killed mid-build, debris left

    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    verify_artifacts(out)
    backend = OnnxBackend(out, variant="pruned", threads=1)
    backend.load()
    assert backend.embed(["still servable"]).shape[0] == 1
    # The next run clears the dead job's debris and reuses what is published.
    assert job_module.run_prune(tiny_model_dir, out, TINY_PRUNE).reused
    assert not building.exists()


def test_rebuild_publishes_a_new_version_and_keeps_the_last_k(tmp_path, tiny_model_dir):
    out = tmp_path / "tiny"
    job_module.run_prune(tiny_model_dir, out, TINY_PRUNE)
    first_target = out.resolve()
    job_module.run_prune(tiny_model_dir, out, TINY_PRUNE, force=True)
    assert out.resolve() != first_target and first_target.is_dir()  # the previous version is kept (K = 3)
    verify_artifacts(out)
    verify_artifacts(first_target)
    job_module.run_prune(tiny_model_dir, out, TINY_PRUNE, force=True, keep_versions=1)
    assert not first_target.exists()
    assert [p.resolve() for p in tmp_path.iterdir() if p.name.startswith(".tiny-")] == [out.resolve()]
    weights = out / "pruned" / "model.safetensors"
    assert weights.stat().st_mode & 0o777 == 0o644  # world-readable: the container runs as UID 10001
    assert out.resolve().stat().st_mode & 0o777 == 0o755
    verify_artifacts(out)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], check=False, capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], timeout=300)


@pytest.mark.parametrize("case", ["missing", "not-bert", "no-weights"])
def test_cli_bad_model_dir_is_a_clear_error(case, tmp_path):
    model = tmp_path / "model"
    if case != "missing":
        model.mkdir()
        cfg = {"model_type": "gpt2" if case == "not-bert" else "bert", "hidden_size": 32,
               "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 8,
               "vocab_size": 10, "max_position_embeddings": 8}
        (model / "config.json").write_text(json.dumps(cfg))
    r = run_cli("prune", "--model", str(model), "--out", str(tmp_path / "out"), "--preset", "fast")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    expected = {"missing": "does not exist", "not-bert": "BERT-family", "no-weights": "model.safetensors"}[case]
    assert expected in r.stderr


@pytest.mark.parametrize("content, message", [("", "distinct texts"), ("only one line\n" * 50, "distinct texts")])
def test_cli_small_corpus_is_a_clear_error(content, message, tmp_path, tiny_model_dir):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(content)
    r = run_cli("prune", "--model", str(tiny_model_dir), "--corpus", str(corpus), "--out", str(tmp_path / "o"),
                "--preset", "fast")
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_cli_missing_corpus_ratio_and_output_errors(tmp_path, tiny_model_dir):
    r = run_cli("prune", "--model", str(tiny_model_dir), "--corpus", str(tmp_path / "nope.txt"), "--preset", "fast",
                "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = run_cli("prune", "--head-sparsity", "1.0")
    assert r.returncode == 2 and "[0, 1)" in r.stderr and "Traceback" not in r.stderr
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    r = run_cli("prune", "--model", str(tiny_model_dir), "--out", str(blocker / "sub" / "out"), "--preset", "fast")
    assert r.returncode == 2 and "cannot write the output directory" in r.stderr


def test_bench_writes_interleaved_json(tiny_artifacts, tmp_path):
    from service.bench import BenchResult, run_bench

    out = tmp_path / "bench.json"
    run_bench(tiny_artifacts, batches=(1, 8), lengths=(16, 32), runs=2, threads=1, with_torch=True, out=out)
    result = BenchResult.model_validate_json(out.read_text())
    cv = load_manifest(tiny_artifacts).cpu_variant
    extra = () if cv.file == "pruned.onnx" else (f"cpu-variant-{cv.runtime}-{cv.precision}",)
    assert {(c.variant, c.batch, c.seq_len) for c in result.cells} == {
        (v, b, s) for v in ("dense", "pruned", "dense-torch-cpu", *extra) for b in (1, 8) for s in (16, 32)}
    assert all(c.median_ms > 0 and c.runs == 2 * 3 for c in result.cells)  # 2 repetitions x blocks of 3
    assert all(c.speedup_vs_dense == pytest.approx(1.0) for c in result.cells if c.variant == "dense")


def test_frontier_measures_points_side_by_side_and_plots(tiny_artifacts, tmp_path):
    from PIL import Image

    from service.pruning.frontier import FrontierPoint, measure_frontier, render_frontier

    (point,) = measure_frontier([tiny_artifacts], runs=2, threads=1)
    m = load_manifest(tiny_artifacts)
    assert point.mean_cosine == m.pruned.fidelity.mean_cosine
    assert point.heads == sum(x.heads for x in m.pruned.layers)
    assert point.speedup_b1_t128 > 0 and point.speedup_b32_t128 > 0
    js, md, png = render_frontier([point], tmp_path)
    assert [FrontierPoint.model_validate(p) for p in json.loads(js.read_text())] == [point]
    assert point.label in md.read_text()
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size[0] > 100
    with pytest.raises(ValueError, match="distinct names"):
        measure_frontier([tiny_artifacts, tiny_artifacts], runs=1)


class _Payload:
    """A pickle that runs code when loaded: what a hostile pytorch_model.bin carries."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_pickled_checkpoint_that_runs_code_is_refused(tmp_path, tiny_model_dir):
    from service.model.encoder import ModelLoadError, load_encoder

    bad = tmp_path / "hostile"
    bad.mkdir()
    shutil.copy2(tiny_model_dir / "config.json", bad / "config.json")
    marker = tmp_path / "pwned"
    torch.save({"embeddings.word_embeddings.weight": _Payload(marker)}, bad / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="holds more than tensors"):
        load_encoder(bad)
    assert not marker.exists()


def test_export_fuses_attention_and_keeps_the_plain_graphs_outputs(tiny_artifacts, tmp_path):
    model = load_encoder(tiny_artifacts / "pruned")
    fused = export_onnx(model, tmp_path / "fused.onnx")
    plain = export_onnx(model, tmp_path / "plain.onnx", fuse=False)
    n_layers = len(model.config.layers)
    assert fused_ops(fused) == {"Attention": n_layers, "BiasGelu": n_layers}
    assert fused_ops(plain) == {"Attention": 0, "BiasGelu": 0}
    assert not any(n.op_type == "SkipLayerNormalization" for n in onnx.load(str(fused)).graph.node)
    tok = TextTokenizer(tiny_artifacts / "tokenizer.json", 64)
    b = tok(["hello there", "the cat sat on the mat while it rained", "x"])
    out = [run_session(make_session(p, 1), b.input_ids, b.attention_mask) for p in (fused, plain)]
    np.testing.assert_allclose(out[0], out[1], atol=1e-5)
    q = quantize_int8(fused, tmp_path / "q.onnx")
    assert sum(n.op_type == "QAttention" for n in onnx.load(str(q)).graph.node) == n_layers


def test_sessions_keep_residual_and_layernorm_apart(tiny_artifacts, tmp_path, monkeypatch):
    """ORT would fuse Add + LayerNormalization into its slower SkipLayerNormalization kernel;
    make_session must stop it, and the optimiser name it disables must exist in this ORT."""
    dump = tmp_path / "optimised.onnx"
    session_options = onnx_runtime._session_options

    def dumping_options(threads):
        opts = session_options(threads)
        opts.optimized_model_filepath = str(dump)
        return opts

    monkeypatch.setattr(onnx_runtime, "_session_options", dumping_options)

    def optimised_ops() -> set[str]:
        make_session(tiny_artifacts / "pruned.onnx", 1)
        return {n.op_type for n in onnx.load(str(dump)).graph.node}

    ops = optimised_ops()
    assert "LayerNormalization" in ops and "SkipLayerNormalization" not in ops
    monkeypatch.setattr(onnx_runtime, "DISABLED_OPTIMIZERS", ())
    assert "SkipLayerNormalization" in optimised_ops()  # what ORT does unless told otherwise


def test_fusion_that_changes_the_outputs_falls_back_to_the_plain_graph(tiny_artifacts, tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "FUSION_TOLERANCE", -1.0)  # no graph can pass: every fusion is refused
    path = export_onnx(load_encoder(tiny_artifacts / "pruned"), tmp_path / "p.onnx")
    assert fused_ops(path) == {"Attention": 0, "BiasGelu": 0}
