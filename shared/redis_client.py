"""The store's Redis client, by ``LOOKALIKE_REDIS_MODE``: one server, a Redis Cluster, or a master found
through Sentinel. Everything that talks to the store makes its client here (Celery's broker is apart:
shared/queue.py).

``LOOKALIKE_REDIS_URL`` is read as ``redis[s]://[[user]:password@]host[:port][,host[:port]...][/db]``:

- ``single``: one server, exactly as ``redis.Redis.from_url`` takes it (query options included);
- ``cluster``: one or more of the cluster's nodes, where the client starts discovering it (database 0 only:
  a cluster has no other);
- ``sentinel``: the Sentinels (port 26379 unless given); the credentials and database are the master's,
  whose name is ``LOOKALIKE_REDIS_SENTINEL_MASTER``.
"""

from urllib.parse import unquote, urlsplit

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.sentinel import Sentinel

MODES = ("single", "cluster", "sentinel")
SENTINEL_PORT = 26379


def redis_client(settings, **options) -> redis.Redis | RedisCluster:
    """The store's client for these settings; ``options`` go to every connection (e.g. ``decode_responses``)."""
    return connect(settings.redis_url, settings.redis_mode, settings.redis_sentinel_master, **options)


def connect(url: str, mode: str = "single", sentinel_master: str | None = None,
            **options) -> redis.Redis | RedisCluster:
    if mode == "single":
        return redis.Redis.from_url(url, **options)
    if mode not in MODES:
        raise ValueError(f"unknown Redis mode {mode!r}; one of {', '.join(MODES)}")
    address = parse_url(url, default_port=SENTINEL_PORT if mode == "sentinel" else 6379)
    credentials = {name: address[name] for name in ("username", "password") if address[name] is not None}
    if address["ssl"]:
        credentials["ssl"] = True
    if mode == "cluster":
        if address["db"] != 0:
            raise ValueError(f"a Redis Cluster has only database 0; {url!r} names database {address['db']}")
        nodes = [ClusterNode(host, port) for host, port in address["hosts"]]
        return RedisCluster(startup_nodes=nodes, **credentials, **options)
    if not sentinel_master:
        raise ValueError("sentinel mode needs the master's name (LOOKALIKE_REDIS_SENTINEL_MASTER)")
    sentinels = Sentinel(address["hosts"], sentinel_kwargs={"ssl": True} if address["ssl"] else {},
                         **{name: value for name, value in options.items() if name.startswith("socket_")})
    return sentinels.master_for(sentinel_master, db=address["db"], **credentials, **options)


def parse_url(url: str, default_port: int = 6379) -> dict:
    """The parts of a URL that may list several ``host:port``: scheme-derived ``ssl``, ``username``,
    ``password``, ``hosts`` [(host, port)], ``db``."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"not a redis:// or rediss:// URL: {url!r}")
    credentials, _, hosts = parts.netloc.rpartition("@")
    username, _, password = credentials.partition(":") if credentials else ("", "", "")
    addresses = []
    for entry in hosts.split(","):
        entry = entry.strip()
        if not entry:
            continue
        if entry.startswith("["):  # [IPv6]:port
            host, _, rest = entry[1:].partition("]")
            port = rest.removeprefix(":")
        else:
            host, _, port = entry.rpartition(":") if ":" in entry else (entry, "", "")
        addresses.append((host, int(port) if port else default_port))
    if not addresses:
        raise ValueError(f"no host in {url!r}")
    path = parts.path.strip("/")
    return {
        "ssl": parts.scheme == "rediss",
        "username": unquote(username) or None,
        "password": unquote(password) or None,
        "hosts": addresses,
        "db": int(path) if path else 0,
    }


def is_cluster(client) -> bool:
    return isinstance(client, RedisCluster)


def limits_storage_uri(settings) -> str:
    """The store's Redis in the notation of the ``limits`` package (Flask-Limiter's storage of rate limits).
    (In sentinel mode the counts live in the master's database 0: the notation names no other.)"""
    if settings.redis_mode == "single":
        return settings.redis_url
    netloc = urlsplit(settings.redis_url).netloc  # "[[user]:password@]host:port,host:port": every node listed
    if settings.redis_mode == "cluster":
        return f"redis+cluster://{netloc}"
    return f"redis+sentinel://{netloc}/{settings.redis_sentinel_master}"
