"""No Docker engine runs on our build machines, so check the compose files, the images' Dockerfiles,
.dockerignore and constraints.txt against the code instead.

Two configurations: docker-compose.yml alone (any machine: CPU workers) and docker-compose.gpu.yml merged
over it (NVIDIA GPUs), merged here as compose merges them for the keys the GPU file sets (mappings key by
key, anything else replaced).
"""

import ast
import importlib
import importlib.util
import os
import re
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from shared.settings import Settings
from tests.conftest import REPO

GPU_FILE = REPO / "docker-compose.gpu.yml"


def merged(base: dict, override: dict) -> dict:
    result = dict(base)
    for key, value in override.items():
        both_mappings = isinstance(value, dict) and isinstance(result.get(key), dict)
        result[key] = merged(result[key], value) if both_mappings else value
    return result


def compose_config(*names: str) -> dict:
    config: dict = {}
    for name in names:
        config = merged(config, yaml.safe_load((REPO / name).read_text()))
    return config


CONFIGS = {"cpu": compose_config("docker-compose.yml"),
           "gpu": compose_config("docker-compose.yml", "docker-compose.gpu.yml")}
COMPOSE = CONFIGS["cpu"]
SERVICES = COMPOSE["services"]
GPU_SERVICES = CONFIGS["gpu"]["services"]
APP_SERVICES = {name: spec for name, spec in SERVICES.items() if "build" in spec}
SETTING_NAMES = {f"LOOKALIKE_{name.upper()}" for name in Settings.model_fields}
WORKER_COMMAND = ["python", "-m", "worker"]
EVERY_APP_SERVICE = [(config, name) for config in CONFIGS for name in sorted(APP_SERVICES)]
EVERY_SERVICE = [(config, name) for config in CONFIGS for name in sorted(SERVICES)]


def gpu_devices(spec: dict) -> list[dict]:
    return spec.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comment lines dropped."""
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(match[1].upper(), match[2].strip()) for match in re.finditer(r"(?m)^\s*([A-Za-z]+)\s+(.*)$", text)]


def dockerfile_env(path: Path) -> dict[str, str]:
    env = {}
    for instruction, arguments in dockerfile_instructions(path):
        if instruction == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", arguments)))
    return env


def modules_named_by(command: list[str]) -> list[str]:
    """The Python modules (and module:attribute targets) a service command runs."""
    if command[:2] == ["python", "-m"]:
        return [command[2]]
    if command[0] == "gunicorn":
        configs = [arg.removeprefix("python:") for arg in command if arg.startswith("python:")]
        return configs + [command[-1]]
    raise AssertionError(f"unrecognised command {command}")


@pytest.mark.parametrize("config,name", EVERY_APP_SERVICE)
def test_service_command_names_real_code(config, name):
    spec = CONFIGS[config]["services"][name]
    targets = modules_named_by(spec["command"])
    assert targets
    for target in targets:
        module_name, _, attribute = target.partition(":")
        assert importlib.util.find_spec(module_name) is not None, f"{name}: no module {module_name}"
        if attribute:
            assert hasattr(importlib.import_module(module_name), attribute), f"{name}: {module_name} has no {attribute}"


@pytest.mark.parametrize("config,name", EVERY_APP_SERVICE)
def test_service_builds_from_a_dockerfile_whose_cmd_matches(config, name):
    """The service runs its image's CMD, perhaps with arguments added (`--role webhooks`)."""
    spec = CONFIGS[config]["services"][name]
    dockerfile = REPO / spec["build"]["context"] / spec["build"]["dockerfile"]
    assert dockerfile.is_file()
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile.read_text(), re.MULTILINE)
    assert cmd
    image_command = yaml.safe_load(cmd.group(1))
    assert spec["command"][:len(image_command)] == image_command


@pytest.mark.parametrize("config,name", EVERY_APP_SERVICE)
def test_service_sets_only_real_settings(config, name):
    variables = {key for key in CONFIGS[config]["services"][name].get("environment", {})
                 if key.startswith("LOOKALIKE_")}
    assert variables, f"{name} sets no LOOKALIKE_ variable"
    assert variables <= SETTING_NAMES, f"{name}: unknown settings {sorted(variables - SETTING_NAMES)}"


# --- CPU by default, GPUs by the override file ---------------------------------------------------

def worker_build_arg(path: Path) -> tuple[str, str]:
    """The worker Dockerfile's WORKER_EXTRA argument and its default."""
    [(name, default)] = [arguments.partition("=")[::2] for instruction, arguments in dockerfile_instructions(path)
                         if instruction == "ARG"]
    return name, default


def test_docker_compose_yml_alone_runs_on_the_cpu():
    """A laptop without an NVIDIA GPU: nothing started by default reserves one or builds TensorFlow's CUDA build."""
    dockerfile = REPO / "worker" / "Dockerfile"
    name, default = worker_build_arg(dockerfile)
    assert (name, default) == ("WORKER_EXTRA", "worker-cpu")
    [install] = [arguments for instruction, arguments in dockerfile_instructions(dockerfile)
                 if instruction == "RUN" and '".[$WORKER_EXTRA]"' in arguments]
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(Requirement(text).name == "tensorflow-cpu" for text in extras["worker-cpu"])
    started = {name: spec for name, spec in SERVICES.items() if not spec.get("profiles")}
    assert {"redis", "proxy", "api", "worker", "webhooks", "flower"} <= set(started)
    for name, spec in started.items():
        assert not gpu_devices(spec), f"{name} reserves a GPU by default"
        assert "CUDA_VISIBLE_DEVICES" not in spec.get("environment", {}), name
        if "build" in spec and spec["build"]["dockerfile"] == "worker/Dockerfile":
            assert spec["build"]["args"]["WORKER_EXTRA"] == "worker-cpu", name
            assert spec["build"]["args"]["WORKER_EXTRA"] in extras


def test_the_gpu_file_only_changes_services_of_docker_compose_yml():
    override = yaml.safe_load(GPU_FILE.read_text())
    assert set(override) <= {"services"} | {key for key in override if key.startswith("x-")}
    assert set(override["services"]) <= set(SERVICES)


def test_workers_are_pinned_one_per_gpu():
    workers = {name: spec for name, spec in GPU_SERVICES.items() if spec.get("command") == WORKER_COMMAND}
    assert {"worker", "worker-gpu1"} <= set(workers)
    reserved = []
    for spec in workers.values():
        devices = gpu_devices(spec)
        assert len(devices) == 1 and devices[0]["capabilities"] == ["gpu"] and devices[0]["driver"] == "nvidia"
        reserved += devices[0]["device_ids"]
        assert spec["environment"]["CUDA_VISIBLE_DEVICES"] == "0"
        assert spec["build"]["args"]["WORKER_EXTRA"] == "worker-gpu"
    assert len(reserved) == len(set(reserved)), "two workers reserve the same GPU"
    assert SERVICES["worker-gpu1"]["profiles"] == ["two-gpus"]  # a second GPU only when asked for


def test_the_roles_profile_runs_an_embed_worker_per_gpu_and_search_workers_without_one():
    for services in (SERVICES, GPU_SERVICES):
        embed, search = services["embed"], services["search"]
        assert embed["profiles"] == search["profiles"] == ["roles"]
        assert embed["command"] == [*WORKER_COMMAND, "--role", "embed"]
        assert search["command"] == [*WORKER_COMMAND, "--role", "search"]
        assert "deploy" not in search  # no GPU: search processes never load the model
        assert search["build"]["args"]["WORKER_EXTRA"] == "worker-cpu"
        groups = {spec["environment"]["LOOKALIKE_SEARCH_GROUPS"] for name, spec in services.items()
                  if name in ("api", "worker", "embed", "search")}
        assert len(groups) == 1, "every process must list the same search groups"
    assert not gpu_devices(SERVICES["embed"])
    assert gpu_devices(GPU_SERVICES["embed"])[0]["capabilities"] == ["gpu"]
    assert GPU_SERVICES["embed"]["build"]["args"]["WORKER_EXTRA"] == "worker-gpu"


# --- Redis ------------------------------------------------------------------------------------------

def redis_bytes(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(b|kb|mb|gb)?", value.lower()).groups()
    return int(number) * {None: 1, "b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}[unit]


def test_redis_persists_and_never_evicts():
    redis = SERVICES["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command
    assert any(volume.endswith(":/data") for volume in redis["volumes"])


def test_redis_has_a_maxmemory_the_operator_sets():
    """store_full (shared/store.py) compares used_memory with maxmemory: without one it never fires."""
    command = SERVICES["redis"]["command"]
    value = command[command.index("--maxmemory") + 1]
    variable, default = re.fullmatch(r"\$\{(\w+):-(\w+)\}", value).groups()
    assert variable == "LOOKALIKE_REDIS_MAXMEMORY" and variable not in SETTING_NAMES  # compose's, not the service's
    assert redis_bytes(default) >= 512 * 1024**2
    assert variable in (REPO / "docs" / "deployment.md").read_text()
    assert '"maxmemory"' in (REPO / "shared" / "store.py").read_text()


# --- Flower -----------------------------------------------------------------------------------------

def test_flower_watches_the_workers_broker():
    flower = SERVICES["flower"]
    broker = next(arg.split("=", 1)[1] for arg in flower["command"] if arg.startswith("--broker="))
    assert broker == SERVICES["worker"]["environment"]["LOOKALIKE_REDIS_URL"]
    assert flower["command"][:1] == ["celery"] and "flower" in flower["command"]


def flower_entrypoint() -> Path:
    flower = SERVICES["flower"]
    [mount] = [volume for volume in flower["volumes"]
               if volume.endswith(":ro") and volume.split(":")[1] == flower["entrypoint"][-1]]
    return REPO / mount.split(":")[0]


def test_flower_is_on_loopback_behind_a_password():
    flower = SERVICES["flower"]
    assert flower["ports"] and all(port.startswith("127.0.0.1:") for port in flower["ports"])
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == "${LOOKALIKE_FLOWER_BASIC_AUTH:-}"
    assert flower["entrypoint"][0] == "python" and flower_entrypoint().is_file()
    assert "LOOKALIKE_FLOWER_BASIC_AUTH" in (REPO / "docs" / "deployment.md").read_text()


def run_flower_entrypoint(auth: str | None) -> subprocess.CompletedProcess:
    """deploy/flower/entrypoint.py with FLOWER_BASIC_AUTH as compose passes it, running a command that prints
    the FLOWER_BASIC_AUTH it was given (in place of Flower)."""
    env = {key: value for key, value in os.environ.items() if key != "FLOWER_BASIC_AUTH"}
    if auth is not None:
        env["FLOWER_BASIC_AUTH"] = auth
    show = [sys.executable, "-c", "import os; print('ran with', os.environ['FLOWER_BASIC_AUTH'])"]
    return subprocess.run([sys.executable, str(flower_entrypoint()), *show], env=env, capture_output=True, text=True,
                          timeout=30)


def test_flower_never_starts_without_a_password():
    """Unset (compose passes an empty value): a random one, logged. Flower compares the decoded Authorization
    header with each entry as it is, and `Basic ==` decodes to an empty string: no empty entry may reach it."""
    for unset in ("", None):
        result = run_flower_entrypoint(unset)
        assert result.returncode == 0, result.stderr
        user, _, password = result.stdout.strip().removeprefix("ran with ").partition(":")
        assert user == "lookalike" and len(password) >= 20
        assert f"{user}:{password}" in result.stderr  # in the container's log, for the operator
    assert run_flower_entrypoint("").stdout != run_flower_entrypoint("").stdout
    chosen = run_flower_entrypoint("ops:s3cret,admin:other")
    assert chosen.returncode == 0 and chosen.stdout.strip() == "ran with ops:s3cret,admin:other" and not chosen.stderr
    for malformed in ("ops:s3cret,", "ops", "ops:", ":s3cret", "ops:s3cret,,admin:x"):
        result = run_flower_entrypoint(malformed)
        assert result.returncode != 0 and "ran with" not in result.stdout, malformed
        assert "LOOKALIKE_FLOWER_BASIC_AUTH" in result.stderr


# --- Workers ------------------------------------------------------------------------------------------

def worker_roles() -> set[str]:
    """The roles `python -m worker --role` accepts (worker/runtime.py's ROLES), read without importing TensorFlow."""
    tree = ast.parse((REPO / "worker" / "runtime.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(target, "id", None) == "ROLES" for target in node.targets):
            return {element.value for element in node.value.elts}
    raise AssertionError("worker/runtime.py defines no ROLES")


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_webhook_deliveries_run_in_a_service_of_their_own(config):
    """Slow receivers must not hold model threads: webhooks in their own process, same image and settings, no GPU."""
    services = CONFIGS[config]["services"]
    [webhooks] = [spec for spec in services.values() if spec.get("command") == [*WORKER_COMMAND, "--role", "webhooks"]]
    assert "webhooks" in worker_roles()
    worker = services["worker"]
    assert worker["command"] == WORKER_COMMAND  # the default role: index and query tasks
    assert webhooks["build"] == SERVICES["worker"]["build"]  # the CPU build: no model
    assert webhooks["environment"] == {k: v for k, v in worker["environment"].items() if k != "CUDA_VISIBLE_DEVICES"}
    assert "deploy" not in webhooks and "ports" not in webhooks


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_worker_metrics_are_served_inside_the_network_only(config):
    services = CONFIGS[config]["services"]
    workers = {name: spec for name, spec in services.items()
               if "build" in spec and spec["command"][:3] == WORKER_COMMAND}
    assert {"worker", "worker-gpu1", "webhooks"} <= set(workers)
    for name, spec in workers.items():
        assert spec["environment"]["LOOKALIKE_WORKER_METRICS_HOST"] == "0.0.0.0", name
        assert "ports" not in spec, name
    assert Settings.model_fields["worker_metrics_host"].default == "127.0.0.1"  # outside compose: loopback


def test_the_worker_metrics_port_is_no_exporters():
    """Not node_exporter's 9100, nor any in the block Prometheus allocates to exporters (9100-9999, full; its
    docs ask applications' own metrics to stay out of it), nor OpenTelemetry's 9464 or the API's; below
    Linux's ephemeral ports. scripts/run_local.py gives the webhooks process the next port."""
    port = Settings.model_fields["worker_metrics_port"].default
    for each in (port, port + 1):
        assert not 9090 <= each <= 9999 and each not in (8000, 8080, 5555, 6379, 9464) and 1024 < each < 32768


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_only_the_proxy_is_published_on_every_interface(config):
    services = CONFIGS[config]["services"]
    published = {name: spec["ports"] for name, spec in services.items() if spec.get("ports")}
    assert published == {"proxy": ["8000:8000"], "flower": ["127.0.0.1:5555:5555"]}
    assert services["api"]["expose"] == [services["api"]["environment"]["LOOKALIKE_PORT"]]


# --- Health checks -------------------------------------------------------------------------------------

@pytest.mark.parametrize("config,name", EVERY_SERVICE)
def test_every_service_has_a_health_check(config, name):
    check = CONFIGS[config]["services"][name].get("healthcheck")
    assert check, f"{name} has no health check"
    assert not check.get("disable") and check["test"][0] in ("CMD", "CMD-SHELL") and len(check["test"]) > 1
    assert check["interval"] and check["timeout"] and check["retries"] >= 1


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_services_wait_for_what_they_need_to_be_healthy(config):
    services = CONFIGS[config]["services"]
    for name, spec in services.items():
        for dependency, condition in spec.get("depends_on", {}).items():
            assert condition == {"condition": "service_healthy"}, f"{name} -> {dependency}"
            assert services[dependency].get("healthcheck"), f"{name} waits for {dependency}, which has no health check"
        if name != "redis" and name != "proxy":
            assert "redis" in spec["depends_on"], name
    assert "api" in services["proxy"]["depends_on"]


def url_in(check: list[str]) -> tuple[int, str]:
    port, path = re.search(r"http://127\.0\.0\.1:(\d+)(/[\w/-]*)", " ".join(check)).groups()
    return int(port), path


def test_health_checks_ask_what_each_service_serves():
    assert SERVICES["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    api = SERVICES["api"]
    port, path = url_in(api["healthcheck"]["test"])
    assert port == int(api["environment"]["LOOKALIKE_PORT"])
    assert f'@blueprint.get("{path}")' in (REPO / "api" / "routes" / "health.py").read_text()
    port, path = url_in(SERVICES["proxy"]["healthcheck"]["test"])
    assert [str(port)] == nginx_directives()["listen"]
    assert re.search(r"location = %s \{[^}]*return 200" % re.escape(path), proxy_config().read_text())
    flower = SERVICES["flower"]
    port, path = url_in(flower["healthcheck"]["test"])
    assert f"--port={port}" in flower["command"] and path == "/healthcheck"  # Flower's own, without login


def test_a_worker_is_healthy_while_its_celery_node_answers_a_ping(monkeypatch):
    """The workers' health check, run against a fake broker: it pings only the worker of its own container
    (Celery node names end in @<hostname>, worker/__main__.py), and fails when that one does not answer."""
    import kombu.matcher
    from celery.utils.nodenames import host_format

    import shared.queue

    check = SERVICES["worker"]["healthcheck"]["test"]
    assert check[:3] == ["CMD", "python", "-c"]
    for services in (SERVICES, GPU_SERVICES):
        assert all(spec["healthcheck"] == SERVICES["worker"]["healthcheck"] for spec in services.values()
                   if spec.get("build", {}).get("dockerfile") == "worker/Dockerfile")
    hostname = re.search(r'--hostname=([^"]+)"', (REPO / "worker" / "__main__.py").read_text()).group(1)
    assert hostname.endswith("@%h")
    ours = host_format("lookalike-all-x-1@%h")
    theirs = host_format("lookalike-all-x-1@other-container")
    answers: list = []

    class Control:
        def ping(self, timeout, pattern, matcher, limit):
            assert 0 < timeout and limit == 1
            return [{node: {"ok": "pong"}} for node in answers if kombu.matcher.match(node, pattern, matcher)]

    class App:
        control = Control()

    monkeypatch.setattr(shared.queue, "make_celery", lambda settings: App())

    def status() -> int:
        try:
            exec(check[3], {})
        except SystemExit as stop:
            return stop.code
        raise AssertionError("the health check did not exit")

    assert status() == 1  # nobody answers
    answers[:] = [theirs]
    assert status() == 1  # another container's worker answers: not ours
    answers[:] = [ours, theirs]
    assert status() == 0
    assert ours.endswith("@" + socket.gethostname())


# --- Images -----------------------------------------------------------------------------------------

def test_the_api_image_listens_on_every_interface_of_its_container(monkeypatch):
    dockerfile = REPO / "api" / "Dockerfile"
    env = dockerfile_env(dockerfile)
    assert env["LOOKALIKE_HOST"] == "0.0.0.0"
    exposed = [arguments for instruction, arguments in dockerfile_instructions(dockerfile) if instruction == "EXPOSE"]
    assert exposed == [env["LOOKALIKE_PORT"]]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert (settings.host, settings.port) == ("0.0.0.0", int(env["LOOKALIKE_PORT"]))
    # gunicorn binds where the settings say (api/gunicorn_conf.py), so the image's ENV decides.
    tree = ast.parse((REPO / "api" / "gunicorn_conf.py").read_text())
    [bind] = [node.value for node in tree.body if isinstance(node, ast.Assign) and node.targets[0].id == "bind"]
    assert {"host", "port"} <= {node.attr for node in ast.walk(bind) if isinstance(node, ast.Attribute)}


def test_the_worker_image_serves_metrics_where_a_container_should():
    dockerfile = REPO / "worker" / "Dockerfile"
    assert dockerfile_env(dockerfile)["LOOKALIKE_WORKER_METRICS_HOST"] == "0.0.0.0"
    exposed = [arguments for instruction, arguments in dockerfile_instructions(dockerfile) if instruction == "EXPOSE"]
    assert exposed == [str(Settings.model_fields["worker_metrics_port"].default)]


IMAGES = [REPO / "api" / "Dockerfile", REPO / "worker" / "Dockerfile"]


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps a path (relative, with /) out of the build context: Docker's rules, for the
    patterns this file uses (the last matching pattern decides; a pattern matching a folder matches inside it)."""
    excluded = False
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        parts = path.split("/")
        if any(re.fullmatch(regex, "/".join(parts[:end])) for end in range(1, len(parts) + 1)):
            excluded = not exception
    return excluded


def test_the_build_context_holds_what_the_images_copy_and_nothing_else():
    for dockerfile in IMAGES:
        for instruction, arguments in dockerfile_instructions(dockerfile):
            if instruction == "COPY" and "--from" not in arguments:
                for source in arguments.split()[:-1]:
                    assert not dockerignore_excludes(source), f"{dockerfile}: COPY {source} is not in the build context"
                    assert not dockerignore_excludes(f"{source}/x.py") or source.endswith((".toml", ".md", ".txt"))
    for left_out in (".venv/lib/python3.11/site-packages/x.py", ".git/HEAD", ".env", ".data/redis/dump.rdb",
                     "tests/test_compose.py", "bench/throughput.py", "api/__pycache__/app.cpython-311.pyc",
                     "docker-compose.yml", "lookalike.egg-info/PKG-INFO"):
        assert dockerignore_excludes(left_out), left_out
    assert not dockerignore_excludes("api/static/index.html")  # the web page (package data)


# --- Pinned versions ------------------------------------------------------------------------------------

def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line.strip()).groups()
            assert canonical(name) not in pins, f"{name} is pinned twice"
            pins[canonical(name)] = version
    return pins


def test_images_install_with_the_constraints_file():
    for dockerfile in IMAGES:
        instructions = dockerfile_instructions(dockerfile)
        installs = [index for index, (instruction, arguments) in enumerate(instructions)
                    if instruction == "RUN" and "pip install" in arguments]
        assert installs, dockerfile
        copied = next(index for index, (instruction, arguments) in enumerate(instructions)
                      if instruction == "COPY" and "constraints.txt" in arguments.split()[:-1])
        for index in installs:
            assert copied < index, dockerfile
            assert re.search(r"pip install [^&]*-c constraints\.txt", instructions[index][1]), dockerfile


def test_constraints_pin_every_dependency_of_the_images_within_pyproject_bounds():
    """constraints.txt comes from deploy/constraints.py (docs/deployment.md): exact versions, each one that
    pyproject.toml allows, for the server's dependencies and the extras the images install."""
    pins = constraints()
    assert "lookalike" not in pins
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(text) for text in project["dependencies"]]
    for extra in ("api", "worker-cpu", "worker-gpu"):
        requirements += [Requirement(text) for text in project["optional-dependencies"][extra]]
    for requirement in requirements:
        name = canonical(requirement.name)
        assert name in pins, (f"{requirement.name} is not pinned: "
                              ".venv/bin/python deploy/constraints.py > constraints.txt")
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{requirement.name}=={pins[name]} is not {requirement}")
    assert pins["tensorflow"] == pins["tensorflow-cpu"]  # the GPU build: the version the CPU build was tested at
    # Transitive dependencies too (a sample that every build needs).
    assert {"kombu", "werkzeug", "keras", "pydantic-core"} <= set(pins)


# --- The reverse proxy ----------------------------------------------------------------------

def proxy_config() -> Path:
    """The nginx config file the proxy service mounts over nginx's default server."""
    [mount] = [volume for volume in SERVICES["proxy"]["volumes"]
               if volume.endswith(":/etc/nginx/conf.d/default.conf:ro")]
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
