"""The price catalog: the shipped file is valid and complete; the schema refuses prices it cannot trust."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from service.cost.prices import PriceError, load_prices

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "deploy" / "prices.yaml"

# The table: AWS us-east-1 Linux on-demand, 2026-07-20 (Karpenter's generated price table).
REQUIRED = {"g4dn.xlarge": 0.526, "g5.xlarge": 1.006, "g6.xlarge": 0.8048, "c7i.xlarge": 0.1785, "c7g.xlarge": 0.145,
            "c6i.xlarge": 0.17, "t4g.xlarge": 0.1344, "m7i.xlarge": 0.2016, "c7i.2xlarge": 0.357}


def _write(tmp_path: Path, doc) -> Path:
    p = tmp_path / "prices.yaml"
    p.write_text(yaml.safe_dump(doc) if not isinstance(doc, str) else doc)
    return p


def _base() -> dict:
    return yaml.safe_load(SHIPPED.read_text())


def test_shipped_catalog_has_the_required_dated_sourced_prices():
    cat = load_prices(SHIPPED)
    got = {p.instance_type: p for p in cat.instances}
    for name, price in REQUIRED.items():
        p = got[name]
        assert p.price_usd_per_hour == price
        assert (p.region, p.date.isoformat(), p.basis, p.os) == ("us-east-1", "2026-07-20", "on-demand", "linux")
        assert "Karpenter" in p.source
    assert {n for n, p in got.items() if p.gpu} == {"g4dn.xlarge", "g5.xlarge", "g6.xlarge"}
    t4g = got["t4g.xlarge"]
    assert t4g.burstable and "credit" in t4g.note.lower()


@pytest.mark.parametrize("field", ["date", "source", "region", "basis", "price_usd_per_hour"])
def test_missing_field_is_rejected_with_its_place(tmp_path, field):
    doc = _base()
    del doc["instances"][2][field]
    with pytest.raises(PriceError, match=rf"instances\[2\]\.{field}: Field required"):
        load_prices(_write(tmp_path, doc))


@pytest.mark.parametrize("price", [-0.1, 0])
def test_negative_or_zero_price_is_rejected(tmp_path, price):
    doc = _base()
    doc["instances"][0]["price_usd_per_hour"] = price
    with pytest.raises(PriceError, match=r"instances\[0\]\.price_usd_per_hour: Input should be greater than 0"):
        load_prices(_write(tmp_path, doc))


def test_empty_source_unknown_key_and_bad_basis_are_rejected(tmp_path):
    doc = _base()
    doc["instances"][0]["source"] = ""
    with pytest.raises(PriceError, match="source"):
        load_prices(_write(tmp_path, doc))
    doc = _base()
    doc["instances"][0]["price_usd_per_hr"] = 1.0
    with pytest.raises(PriceError, match="price_usd_per_hr: Extra inputs are not permitted"):
        load_prices(_write(tmp_path, doc))
    doc = _base()
    doc["instances"][0]["basis"] = "reserved"
    with pytest.raises(PriceError, match="basis"):
        load_prices(_write(tmp_path, doc))


def test_burstable_without_note_duplicates_and_mixed_regions_are_rejected(tmp_path):
    doc = _base()
    t4g = next(p for p in doc["instances"] if p["instance_type"] == "t4g.xlarge")
    t4g["note"] = ""
    with pytest.raises(PriceError, match="burstable.*credit"):
        load_prices(_write(tmp_path, doc))
    doc = _base()
    doc["instances"].append(copy.deepcopy(doc["instances"][0]))
    with pytest.raises(PriceError, match="listed twice"):
        load_prices(_write(tmp_path, doc))
    doc = _base()
    doc["instances"][1]["region"] = "eu-west-1"
    with pytest.raises(PriceError, match="several regions"):
        load_prices(_write(tmp_path, doc))


def test_unreadable_files_fail_in_words(tmp_path):
    with pytest.raises(PriceError, match="not found"):
        load_prices(tmp_path / "nope.yaml")
    with pytest.raises(PriceError, match="not valid YAML"):
        load_prices(_write(tmp_path, "instances: [\n"))
    with pytest.raises(PriceError, match="must be a mapping"):
        load_prices(_write(tmp_path, "- 1\n- 2\n"))
