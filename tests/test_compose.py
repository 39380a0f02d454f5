"""No Docker engine runs on our build machines, so check docker-compose.yml against the code instead."""

import importlib
import importlib.util
import re

import pytest
import yaml

from shared.settings import Settings
from tests.conftest import REPO

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
APP_SERVICES = {name: spec for name, spec in SERVICES.items() if "build" in spec}
SETTING_NAMES = {f"LOOKALIKE_{name.upper()}" for name in Settings.model_fields}


def modules_named_by(command: list[str]) -> list[str]:
    """The Python modules (and module:attribute targets) a service command runs."""
    if command[:2] == ["python", "-m"]:
        return [command[2]]
    if command[0] == "gunicorn":
        configs = [arg.removeprefix("python:") for arg in command if arg.startswith("python:")]
        return configs + [command[-1]]
    raise AssertionError(f"unrecognised command {command}")


@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_service_command_names_real_code(name):
    spec = APP_SERVICES[name]
    targets = modules_named_by(spec["command"])
    assert targets
    for target in targets:
        module_name, _, attribute = target.partition(":")
        assert importlib.util.find_spec(module_name) is not None, f"{name}: no module {module_name}"
        if attribute:
            assert hasattr(importlib.import_module(module_name), attribute), f"{name}: {module_name} has no {attribute}"


@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_service_builds_from_a_dockerfile_whose_cmd_matches(name):
    spec = APP_SERVICES[name]
    dockerfile = REPO / spec["build"]["context"] / spec["build"]["dockerfile"]
    assert dockerfile.is_file()
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile.read_text(), re.MULTILINE)
    assert cmd and yaml.safe_load(cmd.group(1)) == spec["command"]


@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_service_sets_only_real_settings(name):
    variables = {key for key in SERVICES[name].get("environment", {}) if key.startswith("LOOKALIKE_")}
    assert variables, f"{name} sets no LOOKALIKE_ variable"
    assert variables <= SETTING_NAMES, f"{name}: unknown settings {sorted(variables - SETTING_NAMES)}"


def test_workers_are_pinned_one_per_gpu():
    workers = {name: spec for name, spec in APP_SERVICES.items() if spec["command"] == ["python", "-m", "worker"]}
    assert len(workers) >= 2
    reserved = []
    for spec in workers.values():
        devices = spec["deploy"]["resources"]["reservations"]["devices"]
        assert len(devices) == 1 and devices[0]["capabilities"] == ["gpu"]
        reserved += devices[0]["device_ids"]
        assert spec["environment"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert len(reserved) == len(set(reserved)), "two workers reserve the same GPU"


def test_redis_persists_and_never_evicts():
    redis = SERVICES["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command
    assert any(volume.endswith(":/data") for volume in redis["volumes"])


def test_flower_watches_the_workers_broker():
    flower = SERVICES["flower"]
    broker = next(arg.split("=", 1)[1] for arg in flower["command"] if arg.startswith("--broker="))
    assert broker == SERVICES["worker"]["environment"]["LOOKALIKE_REDIS_URL"]
    assert flower["command"][:1] == ["celery"] and "flower" in flower["command"]
