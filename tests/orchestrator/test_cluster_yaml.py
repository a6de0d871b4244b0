"""cluster.yaml passes Ray's own validator; copies with a mistake do not."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _validate(cfg: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cfg)))


@pytest.mark.parametrize("path", ["cluster.yaml", "cluster-s3.yaml", "docs/cluster-local.yaml"])
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


def _commands(cfg: dict) -> str:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    return "\n".join(c for k in keys for c in cfg.get(k) or [])


def test_s3_config_shares_no_file_system_and_names_the_store():
    text = (ROOT / "cluster-s3.yaml").read_text()
    cfg = yaml.safe_load(text)
    nodes = cfg["available_node_types"]
    commands = _commands(cfg)
    assert cfg["provider"]["type"] == "aws" and nodes[cfg["head_node_type"]]["resources"] == {"CPU": 0}
    assert nodes["gpu_spot"]["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert "InstanceMarketOptions" not in nodes["gpu_ondemand"]["node_config"]
    assert not any(word in commands.lower() for word in ("efs", "nfs", "mount -t"))  # no shared file system
    assert not any("/mnt/lnsub" in o for o in cfg["docker"]["run_options"])
    assert "lnsub sweep --grid full" in text and "--storage s3://YOUR-BUCKET/lnsub" in text
    assert any("mlflow server --host 127.0.0.1" in c and "--artifacts-destination s3://" in c
               for c in cfg["head_setup_commands"])
    assert any("scripts/install.sh" in c for c in cfg["setup_commands"])


def test_s3_config_sets_each_nodes_scratch_and_uses_instance_profiles():
    cfg = yaml.safe_load((ROOT / "cluster-s3.yaml").read_text())
    assert any("LNSUB_SCRATCH=/mnt/scratch/lnsub" in o for o in cfg["docker"]["run_options"])
    assert any("-v /mnt/scratch:/mnt/scratch" in o for o in cfg["docker"]["run_options"])
    assert "/mnt/scratch/lnsub" in _commands(cfg)  # created on the host before the container starts
    for node in cfg["available_node_types"].values():
        assert node["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::")


@pytest.mark.parametrize("path", ["cluster.yaml", "cluster-s3.yaml"])
def test_cluster_configs_hold_no_secrets(path):
    text = (ROOT / path).read_text()
    for word in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "aws_access_key_id",
                 "aws_secret_access_key", "ssh_private_key", "KeyName", "password"):
        assert word not in text, word
    assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text)  # an access key id


CONFIGS = ["cluster.yaml", "cluster-s3.yaml", "docs/cluster-local.yaml"]


@pytest.mark.parametrize("path", CONFIGS)
def test_every_node_runs_ray_from_lnsubs_environment_with_token_auth(path):
    cfg = yaml.safe_load((ROOT / path).read_text())
    starts = cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
    for command in starts:
        assert "~/lnsub/.venv/bin/ray start" in command and command.startswith("RAY_AUTH_MODE=token "), command
    assert "ray stop" not in _commands(cfg)  # it would end every Ray on the machine, other users' too
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.lnsub/ray_auth_token"
    assert cfg["file_mounts"]["~/lnsub"] == "."
    assert any("chmod 600 ~/.ray/auth_token" in c for c in cfg["setup_commands"])
    mlflow = next(c for c in cfg["head_setup_commands"] if "mlflow server" in c)
    assert "~/lnsub/.venv/bin/mlflow server" in mlflow and "MLFLOW_BACKEND_STORE_URI=" in mlflow  # a database server
    assert "sqlite" not in mlflow and "--backend-store-uri" not in mlflow  # no password on a command line


@pytest.mark.parametrize("path", ["cluster.yaml", "cluster-s3.yaml"])
def test_aws_nodes_sit_in_your_security_group_never_open_to_the_world(path):
    text = (ROOT / path).read_text()
    cfg = yaml.safe_load(text)
    assert "0.0.0.0/0" not in text and "::/0" not in text
    assert "security_group" not in cfg["provider"]  # Ray would make a group with SSH open to 0.0.0.0/0
    for name, node in cfg["available_node_types"].items():
        assert node["node_config"]["SecurityGroupIds"] == ["REPLACE_ME_SECURITY_GROUP"], name


@pytest.mark.parametrize("path", ["cluster.yaml", "cluster-s3.yaml"])
def test_rays_aws_setup_creates_no_security_group_for_our_configs(path, monkeypatch):
    """Ray's own AWS set-up step, run on the config: it creates (and opens SSH to 0.0.0.0/0 in) a group only for
    node types that name none; ours all name yours. A copy without them would get Ray's group."""
    from ray.autoscaler._private.aws import config as aws

    created = []
    monkeypatch.setattr(aws, "_upsert_security_groups", lambda cfg, types: created.extend(types) or {
        t: type("SG", (), {"id": "sg-ray-default"})() for t in types})
    cfg = yaml.safe_load((ROOT / path).read_text())
    aws._configure_security_group(copy.deepcopy(cfg))
    assert created == []
    del cfg["available_node_types"]["gpu_spot"]["node_config"]["SecurityGroupIds"]
    aws._configure_security_group(cfg)
    assert created == ["gpu_spot"]  # the check can fail: a node type without a group gets Ray's


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


@pytest.mark.parametrize("path", CONFIGS)
def test_no_command_looks_for_itself(path):
    """`pgrep -f PATTERN` in a command also finds the shell that runs the command, whose text holds PATTERN: a
    guard such as `pgrep -f X || start X` would never start X."""
    cfg = yaml.safe_load((ROOT / path).read_text())
    for command in _commands(cfg).splitlines():
        for pattern in re.findall(r"pgrep\s+(?:-\w+\s+)*-f\s+[\"']([^\"']+)[\"']", command):
            assert not re.search(pattern, command), command
    mlflow = next(c for c in cfg["head_setup_commands"] if "mlflow server" in c)
    assert mlflow.startswith("(exec 3<>/dev/tcp/127.0.0.1/5000) 2>/dev/null ||")  # by its port, not its name
