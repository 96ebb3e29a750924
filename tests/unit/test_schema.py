"""service._schema: the strict base model and the one typed-JSON loader every result file goes through."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service._schema import VARIANTS, Strict, load_json


class _Point(Strict):
    x: int


class _PointError(ValueError):
    pass


def test_strict_rejects_unknown_keys():
    with pytest.raises(ValidationError, match="y"):
        _Point.model_validate({"x": 1, "y": 2})


def test_load_json_reads_the_model(tmp_path):
    (tmp_path / "p.json").write_text('{"x": 3}')
    assert load_json(tmp_path / "p.json", _Point, what="point file") == _Point(x=3)


def test_load_json_missing_file_names_what_writes_one(tmp_path):
    with pytest.raises(_PointError, match=r"^point file .*nope.json not found: `make point` writes one$"):
        load_json(tmp_path / "nope.json", _Point, what="point file", missing="`make point` writes one",
                  error=_PointError)


@pytest.mark.parametrize("text", ['{"x": 1, "y": 2}', "{not json", '{"x": "many"}'])
def test_load_json_bad_file_says_what_it_is_not(tmp_path, text):
    (tmp_path / "p.json").write_text(text)
    with pytest.raises(_PointError, match=r"p.json is not a point file: "):
        load_json(tmp_path / "p.json", _Point, what="point file", error=_PointError)


def test_a_directory_is_not_a_file(tmp_path):
    with pytest.raises(ValueError, match="is not a point file"):
        load_json(tmp_path, _Point, what="point file")


def test_variants_are_the_serving_configs():
    from service.serving.config import VARIANTS as SERVING

    assert VARIANTS == SERVING == ("dense", "pruned")
