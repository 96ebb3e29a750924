"""Serving config, API schemas and the shipped serve_config.yaml, without Ray running."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from service.serving.config import (
    CpuVariantConfig,
    LimitsConfig,
    RouterConfig,
    RoutingConfig,
    ServingConfig,
    VariantConfig,
    Weights,
)
from service.serving.schemas import (
    EmbeddingRequest,
    InferRequest,
    InputError,
    decode_v2_texts,
    describe_validation_error,
    embedding_response,
    infer_response,
)
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_weights_must_sum_to_one_with_a_message_naming_both():
    with pytest.raises(ValidationError, match=r"weights must sum to 1.0, got dense=0.3 pruned=0.6"):
        Weights(dense=0.3, pruned=0.6)
    with pytest.raises(ValidationError):
        Weights(dense=-0.1, pruned=1.1)


def test_unknown_keys_are_rejected_everywhere():
    for model, data in [(RoutingConfig, {"weight": {}}), (VariantConfig, {"batch_size": 8}),
                        (CpuVariantConfig, {"num_threads": 2}), (RouterConfig, {"health_misses": 3}),
                        (LimitsConfig, {"max_inputs": 3}), (ServingConfig, {"artifacts": "x"})]:
        with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
            model.model_validate(data)


def test_a_request_must_fit_in_one_batch():
    with pytest.raises(ValidationError, match=r"pruned.max_batch_size \(8\) is smaller than "
                                              r"limits.max_inputs_per_request \(32\)"):
        ServingConfig(artifact_dir="a", pruned=CpuVariantConfig(max_batch_size=8))


@pytest.mark.parametrize("key", ["num_cpus", "num_replicas", "resources", "max_replicas", "max_ongoing_requests"])
def test_replica_settings_under_pruned_say_they_moved_to_the_router(key):
    """The CPU variant runs in the ingress replicas: an old config's pruned.num_cpus names the new place."""
    with pytest.raises(ValidationError, match=rf"pruned.{key}: the CPU variant runs inside the ingress replicas"
                                              rf".*set router.{key} instead"):
        ServingConfig.model_validate({"artifact_dir": "a", "pruned": {key: 2}})


def test_shadow_fraction_is_a_fraction():
    with pytest.raises(ValidationError):
        RoutingConfig(shadow_fraction=1.5)
    assert RoutingConfig.model_validate({"weights": {"dense": 1, "pruned": 0}}).weights.dense == 1.0


def test_shipped_serve_config_is_valid_for_ray_and_for_us():
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load((ROOT / "deploy" / "serve_config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(raw)
    (app,) = schema.applications
    assert app.import_path == "service.serving.app:build_app"
    cfg = ServingConfig.model_validate(app.args)
    assert cfg.limits.over_token_limit in ("reject", "truncate")
    (router,) = [d for d in app.deployments if d.name == "Router"]
    RoutingConfig.model_validate(router.user_config)


def test_admin_token_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("TWINSERVE_ADMIN_TOKEN", raising=False)
    assert Settings().admin_token is None
    monkeypatch.setenv("TWINSERVE_ADMIN_TOKEN", "t0ken")
    token = Settings().admin_token
    assert token.get_secret_value() == "t0ken" and "t0ken" not in repr(token)


@pytest.mark.parametrize(("body", "words"), [
    (b"{not json", "request body is not valid JSON"),
    (b'{"input": 3}', "input must be a string or a list of strings"),
    (b'{"input": [[1, 2]]}', "input must be a string or a list of strings"),
    (b'{"input": "a", "encoding_format": "hex"}', "encoding_format: Input should be 'float' or 'base64'"),
    (b'{"input": "a", "temperature": 1}', "temperature: Extra inputs are not permitted"),
    (b'{}', "input: Field required"),
])
def test_openai_request_errors_read_as_sentences(body, words):
    with pytest.raises(ValidationError) as e:
        EmbeddingRequest.model_validate_json(body)
    assert words in describe_validation_error(e.value)


def test_openai_response_float_and_base64_carry_the_same_numbers():
    emb = np.random.default_rng(0).standard_normal((2, 5)).astype(np.float32)
    as_float = json.loads(embedding_response(emb, "twinserve-pruned", 7, "float"))
    as_b64 = json.loads(embedding_response(emb, "twinserve-pruned", 7, "base64"))
    assert as_float["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    assert np.array([d["embedding"] for d in as_float["data"]], dtype=np.float32).tolist() == emb.tolist()
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in as_b64["data"]])
    assert np.array_equal(decoded, emb)


def _v2(data=None, binary_size=None, datatype="BYTES", shape=(2,)):
    t = {"name": "text", "shape": list(shape), "datatype": datatype}
    if data is not None:
        t["data"] = data
    if binary_size is not None:
        t["parameters"] = {"binary_data_size": binary_size}
    return InferRequest.model_validate({"inputs": [t]})


def test_v2_texts_from_json_and_from_the_binary_extension():
    assert decode_v2_texts(_v2(["a", "bé"]), None) == ["a", "bé"]
    raw = b"".join(struct.pack("<I", len(s)) + s for s in ("a".encode(), "bé".encode()))
    assert decode_v2_texts(_v2(binary_size=len(raw)), raw) == ["a", "bé"]


@pytest.mark.parametrize(("req", "binary", "words"), [
    (_v2([1, 2]), None, "element 0 must be a string"),
    (_v2(["a"]), None, "has shape [2] but carries 1 elements"),
    (_v2(["a", "b"], datatype="FP32"), None, "must have datatype BYTES"),
    (_v2(binary_size=9), b"\x05\x00\x00\x00abc", "announces 9 binary bytes"),
    (_v2(binary_size=7), b"\x05\x00\x00\x00abc", "truncated binary BYTES data"),
])
def test_v2_bad_inputs_are_input_errors(req, binary, words):
    with pytest.raises(InputError, match=words.replace("[", r"\[").replace("]", r"\]")):
        decode_v2_texts(req, binary)


def test_v2_response_json_and_binary():
    emb = np.arange(6, dtype=np.float32).reshape(2, 3)
    body, n = infer_response(emb, "twinserve", "r1", "embedding", binary=False)
    assert n is None
    out = json.loads(body)["outputs"][0]
    assert (out["datatype"], out["shape"], out["data"]) == ("FP32", [2, 3], [0, 1, 2, 3, 4, 5])
    body, n = infer_response(emb, "twinserve", None, "embedding", binary=True)
    head = json.loads(body[:n])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == 24
    assert np.array_equal(np.frombuffer(body[n:], dtype="<f4").reshape(2, 3), emb)


def test_placement_resources_and_autoscaling_reach_the_deployment_options():
    from service.serving.app import _replica_options

    fixed = _replica_options(RouterConfig(num_replicas=1, num_cpus=2, resources={"pruned_pool": 0.01}))
    assert fixed["num_replicas"] == 1 and "autoscaling_config" not in fixed
    assert fixed["ray_actor_options"] == {"num_cpus": 2.0, "num_gpus": 0.0, "resources": {"pruned_pool": 0.01}}
    gpu = _replica_options(VariantConfig(num_gpus=1, resources={"dense_pool": 0.01}))
    assert gpu["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 1.0, "resources": {"dense_pool": 0.01}}
    scaled = _replica_options(VariantConfig(num_replicas=2, max_replicas=8, target_ongoing_requests=4))
    assert "num_replicas" not in scaled and "resources" not in scaled["ray_actor_options"]
    assert scaled["autoscaling_config"] == {"min_replicas": 2, "initial_replicas": 2, "max_replicas": 8,
                                            "target_ongoing_requests": 4.0}


def test_the_ingress_runs_two_replicas_by_default():
    """Two processes host the CPU variant, so that killing one costs no request (the proxy retries)."""
    assert ServingConfig(artifact_dir="a").router.num_replicas == 2


def test_replica_range_and_resources_are_checked_in_words():
    with pytest.raises(ValidationError, match=r"max_replicas \(1\) is below num_replicas \(2\)"):
        VariantConfig(num_replicas=2, max_replicas=1)
    with pytest.raises(ValidationError):
        VariantConfig(resources={"dense_pool": 0})


def test_the_pruned_variant_batches_without_a_window_unless_told_otherwise():
    assert ServingConfig(artifact_dir="a").pruned.batch_wait_timeout_s == 0.0
    partial = ServingConfig.model_validate({"artifact_dir": "a", "pruned": {"max_queued_requests": 2}})
    assert (partial.pruned.max_queued_requests, partial.pruned.batch_wait_timeout_s) == (2, 0.0)
    told = ServingConfig.model_validate({"artifact_dir": "a", "pruned": {"batch_wait_timeout_s": 0.005}})
    assert told.pruned.batch_wait_timeout_s == 0.005
    assert ServingConfig.model_validate({"artifact_dir": "a", "dense": {}}).dense.batch_wait_timeout_s == 0.005


def test_a_pruned_section_of_the_wrong_type_is_a_validation_error_not_a_crash():
    with pytest.raises(ValidationError, match="pruned"):
        ServingConfig.model_validate({"artifact_dir": "a", "pruned": "fast"})
