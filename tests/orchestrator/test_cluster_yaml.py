"""cluster.yaml passes Ray's own validator; copies with a mistake do not."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _validate(cfg: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cfg)))


@pytest.mark.parametrize("path", ["cluster.yaml", "docs/cluster-local.yaml"])
def test_shipped_cluster_configs_are_valid(path):
    cfg = yaml.safe_load((ROOT / path).read_text())
    _validate(cfg)


def test_aws_config_has_what_a_sweep_needs():
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    nodes = cfg["available_node_types"]
    assert cfg["provider"]["type"] == "aws" and nodes[cfg["head_node_type"]]["resources"] == {"CPU": 0}
    assert nodes["gpu_spot"]["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert "InstanceMarketOptions" not in nodes["gpu_ondemand"]["node_config"]  # the fall-back
    assert any("--shm-size" in o for o in cfg["docker"]["run_options"])
    assert any("mlflow server --host 127.0.0.1" in c for c in cfg["head_setup_commands"])
    assert any("scripts/install.sh" in c for c in cfg["setup_commands"])


MISTAKES = {
    "unknown key": lambda c: c.update(colour="blue"),
    "bad head node type": lambda c: c.update(head_node_type="gpu_head"),
    "unknown node-type key": lambda c: c["available_node_types"]["gpu_spot"].update(gpus=4),
    "node type without node_config": lambda c: c["available_node_types"]["gpu_spot"].pop("node_config"),
    "min workers above max": lambda c: c.update(max_workers=1) or c["available_node_types"]["gpu_spot"].update(min_workers=4),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_a_copy_with_a_mistake_fails(mistake):
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    MISTAKES[mistake](cfg)
    with pytest.raises(Exception):
        _validate(cfg)
