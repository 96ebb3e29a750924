"""Capacity carried to other instance families: which CPU features differ, and no projection across
architectures. Measurements and /proc/cpuinfo texts are made here; the catalog is the shipped one."""

from __future__ import annotations

from pathlib import Path

import pytest

from service._platform import cpu_flags, parse_cpu_flags
from service.cost.capacity import Measurement, capacity_cells, normalise_arch
from service.cost.prices import CPU_FEATURES, load_prices

PRICES = load_prices(Path(__file__).resolve().parents[2] / "deploy" / "prices.yaml")
ZEN4 = ["avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16"]  # this workplace's AMD EPYC


def _m(arch: str = "x86_64", flags: list[str] | None = ZEN4, x: float = 100.0) -> Measurement:
    return Measurement(variant="pruned", x_slo_rps=x, slo_p99_ms=100, hardware="test box", cpu_count=2,
                       cpu_arch=arch, gpu_model=None, instance_type=None, cpu_flags=flags,
                       shares_machine_with_generator=True, source="lt.json", method="test")


def _cells(m: Measurement) -> dict:
    return {c.instance: c for c in capacity_cells([m], PRICES.instances, ["pruned"], 0.7)}


def test_cpuinfo_flags_x86_and_arm():
    x86 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni amx_tile amx_int8 amx_bf16 avx512_bf16\n"
    assert parse_cpu_flags(x86) == ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8",
                                    "amx_bf16"]
    arm = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes asimddp sve i8mm bf16 sb\nCPU part\t: 0xd40\n"
    assert parse_cpu_flags(arm) == ["asimd", "asimddp", "sve", "i8mm", "bf16"]  # catalog order
    assert parse_cpu_flags("processor\t: 0\nmodel name\t: ?\n") is None  # unknown, not "has none"
    assert parse_cpu_flags("flags\t: fpu sse2\n") == []
    here = cpu_flags()
    assert here is None or set(here) <= set(CPU_FEATURES)


def test_every_priced_instance_lists_its_cpu_and_features_with_a_source():
    for p in PRICES.instances:
        assert p.cpu is not None and p.cpu.source and p.cpu.model, p.instance_type
        x86 = {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"}
        assert set(p.cpu.features) <= (x86 if p.cpu_arch == "x86_64" else set(CPU_FEATURES) - x86), p.instance_type
    by = {p.instance_type: set(p.cpu.features) for p in PRICES.instances}
    assert "amx_int8" in by["c7i.xlarge"] and "amx_int8" not in by["c6i.xlarge"]
    assert "avx512_vnni" in by["c6i.xlarge"] and "avx512f" not in by["g5.xlarge"]
    assert "i8mm" in by["c7g.xlarge"] and "i8mm" not in by["t4g.xlarge"]


def test_projection_names_the_features_that_differ():
    cells = _cells(_m())
    c7i = cells["c7i.xlarge"]
    assert c7i.status == "projected" and c7i.capacity_rps == pytest.approx(100 * 4 / 2)
    assert c7i.features_only_on_instance == ["amx_tile", "amx_int8", "amx_bf16"] and c7i.features_only_measured == []
    assert "AMX-INT8" in c7i.note and "faster there than projected" in c7i.note
    c6i = cells["c6i.xlarge"]  # Ice Lake: VNNI, but neither AVX-VNNI nor BF16
    assert c6i.features_only_on_instance == [] and c6i.features_only_measured == ["avx_vnni", "avx512_bf16"]
    assert "lacks AVX-VNNI, AVX-512 BF16" in c6i.note and "overstate" in c6i.note
    assert c6i.measured_cpu_flags == ZEN4 and c6i.instance_cpu_features == ["avx2", "avx512f", "avx512_vnni"]


def test_no_projection_across_architectures():
    cells = _cells(_m())
    for arm in ("c7g.xlarge", "t4g.xlarge"):
        c = cells[arm]
        assert c.status == "not_comparable" and c.cross_arch and not c.projected
        assert c.capacity_rps is None and c.usd_per_million_at_u is None and c.usd_per_million_at_u1 is None
        assert c.note.startswith("measured on x86_64, ") and "(not comparable)" in c.note and "Graviton" in c.note
    # measured on Linux arm64 (which calls itself aarch64): carried to Graviton, not to x86
    arm_cells = _cells(_m(arch="aarch64", flags=["asimd", "asimddp", "sve", "i8mm", "bf16"]))
    assert normalise_arch("aarch64") == "arm64"
    assert arm_cells["c7g.xlarge"].status == "projected" and arm_cells["c7g.xlarge"].features_only_measured == []
    assert arm_cells["t4g.xlarge"].features_only_measured == ["sve", "i8mm", "bf16"]
    assert arm_cells["c7i.xlarge"].status == "not_comparable"


def test_unrecorded_flags_are_said_not_guessed():
    c = _cells(_m(flags=None))["c7i.xlarge"]
    assert c.status == "projected" and c.measured_cpu_flags is None and c.features_only_on_instance is None
    assert "features were not recorded" in c.note and "AMX" in c.note


def test_a_capacity_file_records_this_machines_flags():
    from service.capacity_search import capacity_run  # twinserve capacity, loadtest and the demo write it

    run = capacity_run("http://127.0.0.1:8000/v1/embeddings", {}, headers={}, variant=None)
    assert run.cpu_flags == (cpu_flags() or [])
