"""No Docker engine runs on our build machines, so check docker-compose.yml against the code instead."""

import ast
import importlib
import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from shared.settings import Settings
from tests.conftest import REPO

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
APP_SERVICES = {name: spec for name, spec in SERVICES.items() if "build" in spec}
SETTING_NAMES = {f"LOOKALIKE_{name.upper()}" for name in Settings.model_fields}
WORKER_COMMAND = ["python", "-m", "worker"]


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
    """The service runs its image's CMD, perhaps with arguments added (`--role webhooks`)."""
    spec = APP_SERVICES[name]
    dockerfile = REPO / spec["build"]["context"] / spec["build"]["dockerfile"]
    assert dockerfile.is_file()
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile.read_text(), re.MULTILINE)
    assert cmd
    image_command = yaml.safe_load(cmd.group(1))
    assert spec["command"][:len(image_command)] == image_command


@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_service_sets_only_real_settings(name):
    variables = {key for key in SERVICES[name].get("environment", {}) if key.startswith("LOOKALIKE_")}
    assert variables, f"{name} sets no LOOKALIKE_ variable"
    assert variables <= SETTING_NAMES, f"{name}: unknown settings {sorted(variables - SETTING_NAMES)}"


def test_workers_are_pinned_one_per_gpu():
    workers = {name: spec for name, spec in APP_SERVICES.items() if spec["command"] == WORKER_COMMAND}
    assert len(workers) >= 2
    reserved = []
    for spec in workers.values():
        devices = spec["deploy"]["resources"]["reservations"]["devices"]
        assert len(devices) == 1 and devices[0]["capabilities"] == ["gpu"]
        reserved += devices[0]["device_ids"]
        assert spec["environment"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert len(reserved) == len(set(reserved)), "two workers reserve the same GPU"


def test_the_roles_profile_runs_an_embed_worker_per_gpu_and_search_workers_without_one():
    embed, search = SERVICES["embed"], SERVICES["search"]
    assert embed["profiles"] == search["profiles"] == ["roles"]
    assert embed["command"] == [*WORKER_COMMAND, "--role", "embed"] and search["command"] == [*WORKER_COMMAND, "--role", "search"]
    assert embed["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "deploy" not in search  # no GPU: search processes never load the model
    groups = {spec["environment"]["LOOKALIKE_SEARCH_GROUPS"] for name, spec in APP_SERVICES.items()
              if name in ("api", "worker", "embed", "search")}
    assert len(groups) == 1, "every process must list the same search groups"


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


def worker_roles() -> set[str]:
    """The roles `python -m worker --role` accepts (worker/runtime.py's ROLES), read without importing TensorFlow."""
    tree = ast.parse((REPO / "worker" / "runtime.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(target, "id", None) == "ROLES" for target in node.targets):
            return {element.value for element in node.value.elts}
    raise AssertionError("worker/runtime.py defines no ROLES")


def test_webhook_deliveries_run_in_a_service_of_their_own():
    """Slow receivers must not hold model threads: webhooks in their own process, same image and settings, no GPU."""
    [webhooks] = [spec for spec in APP_SERVICES.values() if spec["command"] == [*WORKER_COMMAND, "--role", "webhooks"]]
    assert "webhooks" in worker_roles()
    worker = SERVICES["worker"]
    assert worker["command"] == WORKER_COMMAND  # the default role: index and query tasks
    assert webhooks["build"] == worker["build"]
    assert webhooks["environment"] == {k: v for k, v in worker["environment"].items() if k != "CUDA_VISIBLE_DEVICES"}
    assert "deploy" not in webhooks and "ports" not in webhooks


def test_worker_metrics_are_served_inside_the_network_only():
    workers = {name: spec for name, spec in APP_SERVICES.items() if spec["command"][:3] == WORKER_COMMAND}
    assert {"worker", "worker-gpu1", "webhooks"} <= set(workers)
    for name, spec in workers.items():
        assert spec["environment"]["LOOKALIKE_WORKER_METRICS_HOST"] == "0.0.0.0", name
        assert "ports" not in spec, name
    assert Settings.model_fields["worker_metrics_host"].default == "127.0.0.1"  # outside compose: loopback


def test_only_the_proxy_is_published_on_every_interface():
    published = {name: spec["ports"] for name, spec in SERVICES.items() if spec.get("ports")}
    assert published == {"proxy": ["8000:8000"], "flower": ["127.0.0.1:5555:5555"]}
    assert SERVICES["api"]["expose"] == [SERVICES["api"]["environment"]["LOOKALIKE_PORT"]]


# --- The reverse proxy ----------------------------------------------------------------------

def proxy_config() -> Path:
    """The nginx config file the proxy service mounts over nginx's default server."""
    [mount] = [volume for volume in SERVICES["proxy"]["volumes"] if volume.endswith(":/etc/nginx/conf.d/default.conf:ro")]
    return REPO / mount.split(":")[0]


def nginx_directives() -> dict[str, list[str]]:
    """Every directive of the proxy's config file: name -> its values, in order (comments dropped)."""
    text = re.sub(r"#.*", "", proxy_config().read_text())
    found: dict[str, list[str]] = {}
    for name, value in re.findall(r"(?m)^\s*([a-z_]+)\s+([^;{]+);", text):
        found.setdefault(name, []).append(value.strip())
    return found


def nginx_seconds(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(ms|s|m|h)?", value).groups()
    return int(number) * {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[unit]


def nginx_bytes(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kKmMgG])?", value).groups()
    return int(number) * {None: 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit and unit.lower()]


def test_the_proxy_buffers_whole_requests_with_header_and_body_timeouts():
    proxy = SERVICES["proxy"]
    assert proxy["image"].startswith("nginx:") and proxy_config().is_file()
    assert "build" not in proxy
    directives = nginx_directives()
    assert directives["proxy_request_buffering"] == ["on"]
    assert 0 < nginx_seconds(directives["client_header_timeout"][0]) <= 30
    assert 0 < nginx_seconds(directives["client_body_timeout"][0]) <= 30
    # As large as the largest request the API takes (a bulk upload), no larger.
    assert nginx_bytes(directives["client_max_body_size"][0]) == Settings.model_fields["max_batch_bytes"].default
    # Long polls are answered within LOOKALIKE_MAX_WAIT_SECONDS: nginx waits longer than that for gunicorn.
    assert nginx_seconds(directives["proxy_read_timeout"][0]) > Settings.model_fields["max_wait_seconds"].default + 5
    assert nginx_seconds(directives["proxy_send_timeout"][0]) > 0


def test_the_proxy_fronts_the_api_and_the_api_trusts_it_for_client_addresses():
    directives = nginx_directives()
    api, proxy = SERVICES["api"], SERVICES["proxy"]
    assert directives["server"] == [f"api:{api['environment']['LOOKALIKE_PORT']}"]
    assert directives["listen"] == [proxy["ports"][0].split(":")[-1]]
    assert "X-Forwarded-For $proxy_add_x_forwarded_for" in directives["proxy_set_header"]
    assert api["environment"]["LOOKALIKE_TRUSTED_PROXIES"] == "1"  # exactly one proxy: nginx
    assert Settings.model_fields["trusted_proxies"].default == 0  # without a proxy, X-Forwarded-For is the client's own
    assert proxy["depends_on"]["api"]["condition"] == "service_healthy"
    assert "/healthz" in " ".join(api["healthcheck"]["test"])
