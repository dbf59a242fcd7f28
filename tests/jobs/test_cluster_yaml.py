"""cluster.yaml: valid for the installed Ray's cluster launcher, GPU workers, token auth on."""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[2]
SCHEMA_PATH = Path(ray.autoscaler.__file__).parent / "ray-schema.json"


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def _gpu_types(cluster: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: spec
        for name, spec in cluster["available_node_types"].items()
        if spec.get("resources", {}).get("GPU", 0) > 0
    }


def test_cluster_yaml_matches_the_schema_shipped_with_ray(cluster: dict[str, Any], schema: dict[str, Any]) -> None:
    jsonschema.validate(cluster, schema)
    validate_config(cluster)  # the launcher's own checks on top of the schema (head type exists, min <= max)
    validate_config(prepare_config(cluster))  # and after merging the AWS defaults, as `ray up` does


def test_schema_check_is_not_vacuous(cluster: dict[str, Any], schema: dict[str, Any]) -> None:
    """The same validation rejects a misspelled node-type key and a fractional GPU count."""
    broken = copy.deepcopy(cluster)
    broken["available_node_types"]["gpu_worker"]["min_worker"] = 1
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        jsonschema.validate(broken, schema)
    broken = copy.deepcopy(cluster)
    broken["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 0.5
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_head_has_no_gpu_and_a_worker_type_has_one_gpu_per_node(cluster: dict[str, Any]) -> None:
    head = cluster["available_node_types"][cluster["head_node_type"]]
    assert head["resources"].get("GPU") == 0, "the head must advertise GPU: 0 so no model actor lands on it"
    gpu_types = _gpu_types(cluster)
    assert gpu_types, "no worker type requests GPUs"
    for name, spec in gpu_types.items():
        assert name != cluster["head_node_type"]
        assert spec["resources"]["GPU"] == 1, f"{name}: one GPU per node (one model per GPU)"
        assert 0 <= spec["min_workers"] <= spec["max_workers"] <= cluster["max_workers"]
        assert spec["max_workers"] >= 1
        assert spec["node_config"]["InstanceType"].startswith(("g", "p")), "a GPU instance family"
    assert cluster["provider"]["type"] == "aws"
    assert cluster["idle_timeout_minutes"] > 0


def test_nodes_install_this_project_with_a_cuda_torch(cluster: dict[str, Any]) -> None:
    setup = cluster["setup_commands"]
    torch_cmds = [c for c in setup if "torch==" in c]
    assert torch_cmds and "download.pytorch.org/whl/cu" in torch_cmds[0], "torch must come from a CUDA wheel index"
    project = [i for i, c in enumerate(setup) if "-e ~/lazyllm" in c]
    assert project and setup.index(torch_cmds[0]) < project[0], "install CUDA torch before the project's deps"
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    mounted = {remote: local for remote, local in cluster["file_mounts"].items()}
    for needed in ["pyproject.toml", "README.md", *packages]:
        assert mounted.get(f"~/lazyllm/{needed}") == f"./{needed}", f"{needed} must be mounted for pip install -e"
        assert (REPO / needed).exists()
    assert "gpu" in cluster["docker"]["image"]


def test_token_authentication_stays_on(cluster: dict[str, Any]) -> None:
    for cmd in cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]:
        if "ray start" in cmd:
            assert "RAY_AUTH_MODE=token" in cmd
    assert "~/.ray/auth_token" in cluster["file_mounts"], "every node needs the cluster's token"
