"""The CPU variant: backends per runtime against the dense model, the pure selection rule, and the
backend the server loads equals the one the manifest names. Tiny random BERTs, no Ray."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from service._platform import parse_cpu_flags
from service.artifacts.manifest import CandidateMeasurement, Fidelity, hash_directory, load_manifest, write_manifest
from service.model.backends import OnnxBackend, OpenVinoBackend, TorchBackend, cpu_variant_backend
from service.model.openvino_runtime import precision_hint
from service.pruning.select import meets_floor, select_cpu_variant, speed_score

TEXTS = ["a short one", "the cat sat on the mat while it rained outside", "how do I reset my password?",
         "x", "Could I borrow a cup of sugar?", "what time does the shop close on sundays"]


# --- backends against the dense model -------------------------------------------------------------

def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1)


def test_every_runtime_of_the_dense_model_agrees_with_torch(tiny_artifacts, tmp_path):
    """dense.onnx on ONNX Runtime and the same model's plain graph on OpenVINO (fp32, then NNCF INT8)
    embed a fixed set like the torch model; the tiny random model is not the point, agreement is."""
    from service.model.encoder import load_encoder
    from service.model.openvino_runtime import OpenVinoModel
    from service.pruning.export import export_onnx, export_openvino

    torch_be = TorchBackend(tiny_artifacts, threads=1)
    torch_be.load()
    want = torch_be.embed(TEXTS)
    ort = OnnxBackend(tiny_artifacts, variant="dense", threads=1)
    ort.load()
    assert (ort.runtime, torch_be.runtime) == ("onnxruntime", "torch")
    assert _cos(want, ort.embed(TEXTS)).min() > 0.9999

    plain = export_onnx(load_encoder(tiny_artifacts / "dense"), tmp_path / "plain.onnx", fuse=False)
    batch = torch_be.tokenizer(TEXTS)
    fp32 = OpenVinoModel(export_openvino(plain, tmp_path / "fp32.xml"), threads=1, hint="f32")
    assert _cos(want, fp32(batch.input_ids, batch.attention_mask)).min() > 0.9999
    # the replica's threads, f32 where asked, threads not pinned to cores shared with Ray
    assert fp32.property("INFERENCE_NUM_THREADS") == 1 and fp32.property("ENABLE_CPU_PINNING") is False
    assert str(fp32.property("INFERENCE_PRECISION_HINT")) in ("f32", "<Type: 'float32'>")
    cal = [(batch.input_ids, batch.attention_mask)] * 4
    int8 = OpenVinoModel(export_openvino(plain, tmp_path / "int8.xml", cal), threads=1, hint="f32")
    got = int8(batch.input_ids, batch.attention_mask)
    assert _cos(want, got).min() > 0.9 and not np.allclose(got, want, atol=1e-6)  # quantised, and close


def test_cpu_variant_backend_loads_the_runtime_the_manifest_names(tiny_artifacts):
    m = load_manifest(tiny_artifacts)
    be = cpu_variant_backend(tiny_artifacts, threads=1)
    assert be.runtime == m.cpu_variant.runtime
    be.load()
    assert be.precision == m.cpu_variant.precision and be.variant == "pruned" and be.threads == 1
    out = be.embed(TEXTS)
    assert out.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-3)
    be.check_health()
    # the published variant embeds like the pruned model's fp32 ONNX graph (same weights)
    ref = OnnxBackend(tiny_artifacts, variant="pruned", threads=1)
    ref.load()
    assert _cos(ref.embed(TEXTS), out).min() > 0.9


def _with_cpu_variant(src, dst, **changes):
    shutil.copytree(src, dst, symlinks=False)
    m = load_manifest(dst)
    if changes.get("drop"):
        m = m.model_copy(update={"cpu_variant": None, "frontier": []})
    else:
        m = m.model_copy(update={"cpu_variant": m.cpu_variant.model_copy(update=changes)})
    write_manifest(m, dst)
    return dst


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_each_runtime_named_in_the_manifest_is_the_one_loaded(tiny_artifacts, tmp_path, runtime):
    """Rewrite cpu_variant to each runtime (files that exist in the artifacts) and load it."""
    from service.model.openvino_runtime import OpenVinoModel  # noqa: F401 - OpenVINO must be installed here
    from service.pruning.export import export_openvino

    d = tmp_path / "a"
    shutil.copytree(tiny_artifacts, d)
    m = load_manifest(d)
    if runtime == "openvino" and m.cpu_variant.runtime != "openvino":
        from service.model.encoder import load_encoder
        from service.pruning.export import export_onnx

        plain = export_onnx(load_encoder(d / "pruned"), tmp_path / "plain.onnx", fuse=False)
        export_openvino(plain, d / "pruned-openvino.xml")
    files = ["pruned.onnx"] if runtime == "onnxruntime" else ["pruned-openvino.xml", "pruned-openvino.bin"]
    cv = m.cpu_variant.model_copy(update={"runtime": runtime, "file": files[0], "files": files,
                                          "precision": m.pruned.precision if runtime == "onnxruntime" else "fp32"})
    write_manifest(m.model_copy(update={"cpu_variant": cv, "files": hash_directory(d)}), d)
    be = cpu_variant_backend(d, threads=1)
    assert be.runtime == runtime
    assert isinstance(be, OnnxBackend if runtime == "onnxruntime" else OpenVinoBackend)
    be.load()
    assert be.embed(["hello"]).shape == (1, 32)


def test_old_manifest_without_cpu_variant_serves_pruned_onnx_on_onnxruntime(tiny_artifacts, tmp_path):
    d = tmp_path / "old"
    shutil.copytree(tiny_artifacts, d)
    raw = json.loads((d / "manifest.json").read_text())
    raw.pop("cpu_variant")
    raw.pop("frontier")
    (d / "manifest.json").write_text(json.dumps(raw))
    be = cpu_variant_backend(d, threads=1)
    assert isinstance(be, OnnxBackend) and be.runtime == "onnxruntime" and be.variant == "pruned"
    be.load()
    assert be.precision == raw["pruned"]["precision"]


def test_cpu_variant_below_the_floor_is_logged_at_load(tiny_artifacts, tmp_path, caplog):
    d = tmp_path / "below"
    shutil.copytree(tiny_artifacts, d)
    m = load_manifest(d)
    write_manifest(m.model_copy(update={"cpu_variant": m.cpu_variant.model_copy(
        update={"meets_floor": False, "summary": "closest of them all"})}), d)
    with caplog.at_level("WARNING"):
        cpu_variant_backend(d, threads=1)
    assert "does not meet the fidelity floor" in caplog.text and "closest of them all" in caplog.text


def test_a_cpu_unlike_the_one_measured_is_logged(tiny_artifacts, tmp_path, caplog):
    d = tmp_path / "amx"
    shutil.copytree(tiny_artifacts, d)
    m = load_manifest(d)
    write_manifest(m.model_copy(update={"cpu_variant": m.cpu_variant.model_copy(
        update={"cpu_flags": ["avx512f", "amx_tile", "amx_bf16", "amx_int8", "imaginary_flag"]})}), d)
    with caplog.at_level("WARNING"):
        cpu_variant_backend(d, threads=1)
    assert "was chosen on a CPU with flags" in caplog.text and "imaginary_flag" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        cpu_variant_backend(tiny_artifacts, threads=1)  # measured here: nothing to say
    assert "was chosen on a CPU" not in caplog.text


def test_openvino_backend_refuses_a_variant_without_its_ir():
    with pytest.raises(ValueError, match="IR .xml"):
        OpenVinoBackend("somewhere", files=["pruned.onnx"], precision="int8", threads=1)


def test_cpu_flags_and_the_bf16_hint_follow_amx_only():
    amx = "flags\t: fpu avx2 avx512f avx512_vnni avx512_bf16 amx_tile amx_bf16 amx_int8\n"
    zen = "flags\t: fpu avx2 avx512f avx512_vnni avx512_bf16\n"
    assert parse_cpu_flags(amx) == ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8",
                                    "amx_bf16"]
    assert precision_hint(parse_cpu_flags(amx)) == "bf16"
    assert precision_hint(parse_cpu_flags(zen)) == "f32"  # AVX-512 BF16 without AMX: f32
    assert parse_cpu_flags("no flags here") is None  # unknown, not "has none"
    assert precision_hint([]) == "f32"


# --- the selection rule, a pure function ----------------------------------------------------------

def _f(cos: float, r10: float) -> Fidelity:
    return Fidelity(mean_cosine=cos, p5_cosine=cos - 0.02, recall_at_10=r10, n_texts=100)


def cand(name: str, ms: float, *sets: tuple[float, float]) -> CandidateMeasurement:
    model, runtime, precision = name.split("-")
    fid = {f"set{i}": _f(*s) for i, s in enumerate(sets)}
    lat = {"1x16": ms / 4, "1x128": ms, "32x32": ms * 8}
    return CandidateMeasurement(name=name, model=model, runtime=runtime, precision=precision, fidelity=fid,
                                latency_ms=lat, speedup_vs_dense_fp32={k: 1.0 for k in lat},
                                meets_floor=meets_floor(fid, 0.97, 0.85))


FLOOR = dict(min_mean_cosine=0.97, min_recall_at_10=0.85)


def test_fastest_pruned_candidate_meeting_the_floor_on_every_set_is_chosen():
    cands = [
        cand("dense-onnxruntime-fp32", 10, (1, 1), (1, 1)),
        cand("dense-openvino-int8", 4, (0.998, 0.94), (0.997, 0.93)),
        cand("pruned-onnxruntime-int8", 3, (0.98, 0.9), (0.975, 0.86)),
        cand("pruned-openvino-int8", 2, (0.985, 0.9), (0.965, 0.9)),  # fastest, fails on the second set
        cand("pruned-openvino-fp32", 2.5, (0.99, 0.9), (0.99, 0.84)),  # fails recall on the second set
    ]
    sel = select_cpu_variant(cands, **FLOOR)
    assert sel.chosen.name == "pruned-onnxruntime-int8" and sel.meets_floor
    assert sel.best_quantised_dense.name == "dense-openvino-int8"
    assert sel.speedup_vs_best_quantised_dense["1x128"] == pytest.approx(4 / 3)
    assert sel.pruning_beats_quantised_dense and "did NOT beat" not in sel.summary
    assert "fastest pruned candidate meeting the floor" in sel.summary


def test_when_quantised_dense_is_faster_the_summary_says_so():
    cands = [cand("dense-openvino-int8", 2, (0.998, 0.94)), cand("pruned-onnxruntime-int8", 3, (0.98, 0.9))]
    sel = select_cpu_variant(cands, **FLOOR)
    assert sel.chosen.name == "pruned-onnxruntime-int8" and sel.meets_floor
    assert sel.pruning_beats_quantised_dense is False
    assert "pruning did NOT beat quantised dense" in sel.summary and "meets the floor" in sel.summary
    assert sel.speedup_vs_best_quantised_dense["32x32"] == pytest.approx(2 / 3)


def test_no_pruned_candidate_meets_the_floor_publishes_the_closest_marked():
    cands = [
        cand("dense-onnxruntime-int8", 5, (0.99, 0.88)),
        cand("pruned-onnxruntime-int8", 1, (0.90, 0.7), (0.93, 0.75)),
        cand("pruned-openvino-int8", 2, (0.95, 0.7), (0.94, 0.75)),  # highest worst-set cosine
        cand("pruned-openvino-fp32", 3, (0.96, 0.8), (0.93, 0.8)),
    ]
    sel = select_cpu_variant(cands, **FLOOR)
    assert sel.chosen.name == "pruned-openvino-int8" and not sel.meets_floor
    assert "NO pruned candidate meets the floor" in sel.summary and "meets_floor: false" in sel.summary
    # recall short everywhere but the cosine part met by two: the faster of those two
    cands += [cand("pruned-onnxruntime-fp32", 4, (0.99, 0.80), (0.98, 0.82)),
              cand("pruned-openvino-fp32", 3.5, (0.985, 0.79), (0.975, 0.80))]
    sel = select_cpu_variant(cands[:2] + cands[4:], **FLOOR)
    assert sel.chosen.name == "pruned-openvino-fp32" and not sel.meets_floor
    assert "the fastest meeting the mean-cosine part" in sel.summary


def test_best_quantised_dense_prefers_one_meeting_the_floor_and_dense_is_never_published():
    cands = [
        cand("dense-onnxruntime-int8", 1, (0.96, 0.8)),  # fastest dense INT8, below the floor
        cand("dense-openvino-int8", 3, (0.99, 0.9)),
        cand("dense-openvino-fp32", 0.5, (1, 1)),  # not quantised: never the quantised-dense baseline
        cand("pruned-openvino-int8", 2, (0.98, 0.9)),
    ]
    sel = select_cpu_variant(cands, **FLOOR)
    assert sel.chosen.model == "pruned"
    assert sel.best_quantised_dense.name == "dense-openvino-int8"
    with pytest.raises(ValueError, match="no pruned candidate"):
        select_cpu_variant([c for c in cands if c.model == "dense"], **FLOOR)


def test_speed_is_the_geometric_mean_over_cells():
    a = cand("pruned-onnxruntime-int8", 2, (1, 1))
    # b is 5x faster at 1x16 but slower at 1x128 and 32x32: the geometric mean ranks it slower
    b = a.model_copy(update={"name": "b", "latency_ms": {"1x16": 0.1, "1x128": 10, "32x32": 40}})
    assert speed_score(a) == pytest.approx((0.5 * 2 * 16) ** (1 / 3))
    assert speed_score(b) == pytest.approx(40 ** (1 / 3))
    assert speed_score(a) < speed_score(b)
