"""Rendering: ``report.md``, the self-contained ``report.html``, ``report.json`` and the PNGs."""

from __future__ import annotations

import json
from pathlib import Path

from service._platform import feature_names
from service._schema import VARIANTS
from service.capacity_search import SearchResult, plot_searches
from service.cost import _plots
from service.cost._doc import Doc
from service.cost.report.schema import Report


def _f(x: float | None, fmt: str = ".3g", none: str = "n/a") -> str:
    return none if x is None else format(x, fmt)


def _usd(x: float | None, status: str = "not_measured") -> str:
    if x is None:
        return {"not_applicable": "n/a", "no_capacity": "no capacity within SLO",
                "not_comparable": "not comparable"}.get(status, "not measured")
    return f"${x:.4g}" if x < 1 else f"${x:,.2f}"


def _plots_for(report: Report, data: dict, out_dir: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    panels: dict[str, dict[str, SearchResult]] = {}
    rows = []
    for _, r in data["results"]:
        label = f"{r.variant or 'routed'} @ {r.instance_type or r.hardware[:32]}"
        for k, search in r.searches.items():
            panels.setdefault(r.shapes.get(k, k), {})[label] = search
            rows.append((r.variant or "routed", f"{label}, {k} ({'costed' if k == report.cost_shape else 'shape'})",
                         search.x_slo_rps))
    files["latency"] = plot_searches(panels, out_dir / "latency_vs_load.png",
                                     title="capacity searches: latency from the scheduled send vs offered load")
    files["x_slo"] = _plots.x_slo_bars(rows, report.slo_p99_ms, out_dir / "x_slo.png")
    instances = [p.key for p in report.prices]
    vs = sorted({c.variant for c in report.cells})
    cells = {(c.variant, c.instance): (c.usd_per_million_at_u, c.projected, c.status) for c in report.cells}
    files["usd_per_million"] = _plots.usd_per_million_bars(instances, vs, cells, report.utilisation,
                                                           out_dir / "usd_per_million.png")
    if report.fleet is not None:
        ch = report.fleet.choices
        labels = {v: f"{v} only on {ch[v].instance}" + (" (projected)" if ch[v].projected else "") for v in VARIANTS}
        labels["split"] = f"A/B split, {report.fleet.dense_share:.0%} dense"
        files["fleet"] = _plots.fleet_cost(data["grid"], data["curves"], labels,
                                           report.fleet.crossover.rate_rps if report.fleet.crossover else None,
                                           out_dir / "fleet_cost.png")
        points = []
        for v in VARIANTS:
            fid = report.variants[v].fidelity
            if fid is not None:
                points.append((v, ch[v].usd_per_million_at_u, fid.mean_cosine,
                               f"{v} on {ch[v].instance}: {_usd(ch[v].usd_per_million_at_u)}, "
                               f"cos {fid.mean_cosine:.3f}"))
        if points:
            files["fidelity"] = _plots.fidelity_vs_cost(points, out_dir / "fidelity_vs_cost.png")
    return files


def _document(report: Report, files: dict[str, Path]) -> Doc:
    u = report.utilisation
    doc = Doc("twinserve cost report")
    cr = report.criteria
    swept = any(sc.status == "swept" for v in report.variants.values() for sc in v.shapes.values())
    doc.p(f"Generated {report.created_at:%Y-%m-%d %H:%M} UTC. Criteria every capacity was found with (as the "
          f"capacity searches recorded them): p99 <= {cr.slo_p99_ms:g} ms timed from the scheduled send (open "
          f"loop), errors < {cr.max_error_ratio:.2%}, answered rate >= {cr.min_achieved_ratio:.0%} of offered, and "
          f"confirmed by a repeat{' (searches; a sweep runs each step once)' if swept else ''}. The costs use X_slo "
          f"at request shape **{report.cost_shape}** "
          f"({report.cost_shape_description}). Cost: `$/1M = price_usd_per_hour x 10^6 / (3600 x u x X_slo)`, "
          f"u = {u:g} (u = 1 beside it). `report.json` holds every number shown here.")

    doc.h("Capacity within the SLO (X_slo)")
    doc.p("Each variant pinned with `X-Variant`, each request shape searched on its own: exponential ramp, binary "
          "search, the winner and the failure above it repeated. X_slo is the highest offered rate that passed "
          "twice; a rate that passed once and failed once is **noisy** and both runs are listed below."
          + (" Status **swept**: `twinserve loadtest`'s fixed-step sweep instead, the given rates offered once each; "
             "X_slo is the highest step that passed, not repeated." if swept else ""))
    shape_rows = []
    for v in report.variants.values():
        for sc in v.shapes.values():
            x = _f(sc.x_slo_rps, ".4g", "none confirmed") + (" (lower bound)" if sc.lower_bound else "")
            flags = [f"noisy at {', '.join(f'{r:.4g}' for r in sc.noisy_rps)} req/s"] if sc.noisy_rps else []
            flags += ["non-monotone"] if sc.non_monotone else []
            shape_rows.append([v.variant, sc.description, x + (" **(costed)**" if sc.costed else ""),
                               sc.status, _f(sc.best_single_pass_rps, ".4g", "-"), f"{sc.max_answered_rps:.1f}",
                               f"{sc.probes} probes, {sc.elapsed_s:.0f} s", "; ".join(flags) or "-"])
    doc.table(["variant", "request shape (traffic mix)", "X_slo req/s", "search", "best single pass",
               "most answered req/s", "effort", "flags"], shape_rows)
    doc.table(["variant", f"X_slo req/s at {report.cost_shape}", "measured on", "CPUs", "CPU features",
               "generator CPU at X_slo", "source"],
              [[v.variant, _f(v.x_slo_rps, ".4g", "no rate met the SLO twice"), v.hardware + (
                  f" ({v.instance_type})" if v.instance_type else "") + (f", GPU {v.gpu_model}" if v.gpu_model else ""),
                str(v.cpu_count), "not recorded" if v.cpu_flags is None else (feature_names(v.cpu_flags) or "none"),
                "n/a" if v.generator_cpu_cores_at_x_slo is None else
                f"{v.generator_cpu_cores_at_x_slo:.2f} cores" + (" (sent late!)" if v.generator_late_at_x_slo
                                                                  else ""), f"`{v.source}`"]
               for v in report.variants.values()])
    doc.img(files["x_slo"], "X_slo per variant and request shape, with the hardware it was measured on")
    doc.h("Latency vs offered load", 3)
    doc.img(files["latency"], "Latency percentiles from the scheduled send vs offered load, one panel per request "
                              "shape; every probe is a point, repeats hollow")
    for v in report.variants.values():
        doc.p(f"**{v.variant}** at {v.shape} ({v.shape_description}), every probe in the order run:")
        doc.table([f"{v.variant}: phase", "offered req/s", "answered req/s", "p50 ms", "p99 ms", "errors",
                   "generator cores", "counts?"],
                  [[s.phase, f"{s.offered_rps:.4g}", f"{s.achieved_rps:.1f}", _f(s.p50_ms, ".1f"), _f(s.p99_ms, ".1f"),
                    f"{s.error_ratio:.2%}", f"{s.generator_cpu_cores:.2f}" + (" (late)" if s.generator_late else ""),
                    "yes" if s.passed else "no: " + "; ".join(s.reasons)] for s in v.steps])
        doc.ul([f"{k}: {n}" for k, sc in v.shapes.items() for n in sc.notes])
        doc.p(f"Method: {v.shapes[v.shape].method}.")

    doc.h("Cost per million requests, variant x instance")
    doc.p(f"At u = {u:g} and at u = 1. **projected** figures were measured on other hardware and carried over by "
          "the rule shown, with the CPU features (AMX, AVX-512 VNNI, ...) that differ between the two; **not "
          "comparable** means the figure was measured on another CPU architecture (x86_64 vs arm64) and is not "
          "carried over; **not measured** means no capacity measurement covers that hardware, so there is no figure.")
    doc.table(["variant", "instance", "$/h", "X_slo req/s", f"$/1M at u={u:g}", "$/1M at u=1", "status",
               "measured on"],
              [[c.variant, c.instance, f"{c.price_usd_per_hour:g}", _f(c.capacity_rps, ".4g", "-"),
                _usd(c.usd_per_million_at_u, c.status), _usd(c.usd_per_million_at_u1, c.status),
                c.status.replace("_", " ") + (f": {c.projection_rule}" if c.projection_rule else "")
                + (f". {c.note}" if c.note else ""), c.measured_on or "-"] for c in report.cells])
    doc.img(files["usd_per_million"], f"$ per 1M requests at u = {u:g}; hatched bars are projections")

    doc.h("GPU break-even (a requirement, not a measurement)")
    if not report.break_even:
        doc.p("The price catalog lists no GPU instance.")
    else:
        ref = report.break_even[0]
        if ref.required_x_slo_rps is None:
            doc.p(ref.verdict + ".")
        else:
            doc.p(f"The dense variant's X_slo that each GPU instance needs, within the same criteria, to cost per request "
                  f"what the pruned variant costs on {ref.reference_instance} "
                  f"({_f(ref.reference_capacity_rps, '.4g')} req/s"
                  f"{', projected' if ref.reference_projected else ''}, {_usd(ref.reference_usd_per_million_at_u)} "
                  f"per 1M at u = {u:g}): `{ref.formula}`. A dense X_slo above the requirement makes the GPU "
                  "cheaper per request; below it, dearer. Where a GPU capacity file (`make gpu-bench`) measured the "
                  "dense variant on that GPU model, the measured figure and its hardware stand beside it.")
        doc.table(["GPU instance", "GPU", "$/h", "required dense X_slo req/s", "measured dense X_slo req/s",
                   "measured on", "verdict"],
                  [[b.gpu_instance, f"{b.gpu_count}x {b.gpu_model}", f"{b.price_usd_per_hour:g}",
                    _f(b.required_x_slo_rps, ".4g") + (" (requirement)" if b.required_x_slo_rps else ""),
                    _f(b.measured_x_slo_rps, ".4g", "not measured"), b.measured_on or "-", b.verdict]
                   for b in report.break_even])

    doc.h("Fleet cost vs traffic")
    if report.fleet is None:
        doc.p("Not computed: both variants need a capacity figure on some priced instance.")
    else:
        fl = report.fleet
        doc.p("Instances = ceil(R / (u x X_slo)), at least one per variant. Chosen instances (cheapest $/1M among "
              "non-burstable instances of the measured CPU architecture, unless named with --dense-instance / "
              "--pruned-instance): " + "; ".join(f"{v}: {c.instance} ({_f(c.capacity_rps, '.4g')} req/s"
                                     f"{', projected' if c.projected else ''}, {_usd(c.usd_per_million_at_u)}/1M)"
                                     for v, c in fl.choices.items()) + ".")
        if fl.crossover is not None:
            doc.p(f"**Crossover:** {fl.crossover.note}.")
        doc.p(f"**Blended cost of the A/B split** ({fl.dense_share:.0%} dense, {1 - fl.dense_share:.0%} pruned) at "
              f"steady state: {_usd(fl.blended_usd_per_million_at_u)} per 1M at u = {u:g} "
              f"({_usd(fl.blended_usd_per_million_at_u1)} at u = 1); at low traffic the floor dominates (table).")
        doc.img(files["fleet"], "Fleet cost vs traffic, with the crossover")
        doc.table(["R req/s", "dense only: inst, $/h", "pruned only: inst, $/h", "split: dense+pruned inst, $/h",
                   "split $/1M"],
                  [[f"{r.rate_rps:g}", f"{r.instances['dense']}, ${r.usd_per_hour['dense']:.3f}",
                    f"{r.instances['pruned']}, ${r.usd_per_hour['pruned']:.3f}",
                    f"{r.instances['split_dense']}+{r.instances['split_pruned']}, ${r.usd_per_hour['split']:.3f}",
                    "-" if r.rate_rps == 0 else _usd(r.usd_per_hour["split"] * 1e6 / (3600 * r.rate_rps))]
                   for r in fl.table])

    doc.h("Fidelity beside cost")
    rows = []
    for v in report.variants.values():
        choice = report.fleet.choices.get(v.variant) if report.fleet else None
        # the fleet's choice; without a fleet (the other variant has no capacity), the cheapest cell
        cost = (choice.usd_per_million_at_u, choice.instance) if choice else min(
            ((c.usd_per_million_at_u, i) for i, c in report.usd_per_million.get(v.variant, {}).items()
             if c.usd_per_million_at_u is not None), default=None)
        live = v.live_shadow
        rows.append([v.variant, _f(v.fidelity.mean_cosine, ".4f") if v.fidelity else "no manifest",
                     _f(v.fidelity.p5_cosine, ".4f") if v.fidelity else "-",
                     _f(v.fidelity.recall_at_10, ".3f") if v.fidelity else "-",
                     "not queried" if live is None else (live.note or f"{_f(live.mean_cosine, '.4f')} "
                                                         f"({_f(live.samples, '.0f')} samples)"),
                     _usd(cost[0]) + f" on {cost[1]}" if cost else "-"])
    doc.table(["variant", "mean cosine to dense", "p5 cosine", "recall@10", "live shadow cosine",
               f"$/1M at u={u:g}"], rows)
    if "fidelity" in files:
        doc.img(files["fidelity"], "Fidelity (manifest, held-out text) vs cost per million requests")

    if report.bench is not None:
        b = report.bench
        doc.h("Model-level latency (no HTTP)")
        doc.p(f"From `{b.source}`: {b.hardware}, device {b.device}, {b.threads} threads. Medians.")
        doc.table(["variant", "batch", "tokens", "median ms", "texts/s", "vs dense"],
                  [[r.variant, str(r.batch), str(r.seq_len), f"{r.median_ms:.2f}", f"{r.texts_per_s:.1f}",
                    _f(r.speedup_vs_dense, ".2f") + ("x" if r.speedup_vs_dense else "")] for r in b.rows])

    doc.h("Prices")
    doc.table(["instance", "$/h", "vCPU", "memory GiB", "GPU", "arch", "region", "date", "basis", "source"],
              [[p.key, f"{p.price_usd_per_hour:g}", str(p.vcpus), f"{p.memory_gib:g}",
                f"{p.gpu.count}x {p.gpu.model}" if p.gpu else "-", p.cpu_arch, p.region, p.date.isoformat(), p.basis,
                p.source + (f" NOTE: {p.note}" if p.note else "")] for p in report.prices])
    doc.h("Notes")
    doc.ul(report.notes)
    doc.h("Inputs")
    doc.ul([f"{i.kind}: `{i.path}` (sha256 {i.sha256[:12]}…)" for i in report.inputs])
    return doc


def write_report(report: Report, plot_data: dict, out_dir: Path) -> dict[str, Path]:
    """Write PNGs, report.md, report.html (self-contained) and report.json into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = _plots_for(report, plot_data, out_dir)
    doc = _document(report, files)
    (out_dir / "report.md").write_text(doc.markdown(), encoding="utf-8")
    (out_dir / "report.html").write_text(doc.html(), encoding="utf-8")
    written = {**files, "markdown": out_dir / "report.md", "html": out_dir / "report.html",
               "json": out_dir / "report.json"}
    report.files = {k: p.name for k, p in written.items()}
    (out_dir / "report.json").write_text(json.dumps(report.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
    return written
