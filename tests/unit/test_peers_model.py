"""The folder the peer benchmark hands infinity-emb: same graph, one more output, HF layout."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from service._platform import cpu_flags
from service.peers import prepare_infinity_model


def test_last_hidden_state_is_the_sentence_embedding_unsqueezed(tiny_artifacts, tmp_path):
    out = prepare_infinity_model(tiny_artifacts, tmp_path / "infinity-model")
    assert {p.name for p in out.iterdir()} >= {"model.onnx", "config.json", "tokenizer.json"}
    assert json.loads((out / "config.json").read_text())["model_type"] == "bert"
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["sentence_embedding", "last_hidden_state"]
    ids = np.array([[101, 7592, 2088, 102, 0], [101, 2023, 2003, 1037, 102]], dtype=np.int64)
    mask = (ids != 0).astype(np.int64)
    feeds = {i.name: {"input_ids": ids, "attention_mask": mask}[i.name] for i in session.get_inputs()}
    sentence, hidden = session.run(None, feeds)
    assert hidden.shape == (2, 1, sentence.shape[1])
    np.testing.assert_array_equal(hidden[:, 0], sentence)  # cls pooling of it gives back the embedding
    # the original graph, untouched, gives the same embedding
    original = ort.InferenceSession(str(tiny_artifacts / "pruned.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(original.run(["sentence_embedding"], feeds)[0], sentence, rtol=0, atol=1e-6)


def test_the_folder_is_reused_until_the_graph_changes(tiny_artifacts, tmp_path):
    out = prepare_infinity_model(tiny_artifacts, tmp_path / "m")
    first = (out / "model.onnx").stat().st_mtime_ns
    prepare_infinity_model(tiny_artifacts, tmp_path / "m")
    assert (out / "model.onnx").stat().st_mtime_ns == first
    (out / "source.sha256").write_text("something else\n")
    prepare_infinity_model(tiny_artifacts, tmp_path / "m")
    assert (out / "source.sha256").read_text().strip() != "something else"


def test_missing_graph_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="pruned.onnx"):
        prepare_infinity_model(tmp_path, tmp_path / "out")


def test_cpu_flags_are_a_subset_of_the_named_features():
    from service.capacity_search import CPU_FEATURES

    assert set(cpu_flags() or []) <= set(CPU_FEATURES)
