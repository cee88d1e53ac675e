"""A real Redis Cluster and a real Sentinel setup for tests, from ``redis-server``.

Managed Redis is usually a cluster or sits behind Sentinel (operations.md "Fleet mode"),
so the broker is tested against both, started here on free loopback ports:

- :func:`start_cluster`: three ``redis-server --cluster-enabled yes`` masters; the
  16384 slots are split between them and the nodes are introduced to each other with
  ``CLUSTER ADDSLOTS`` / ``CLUSTER MEET`` (what ``redis-cli --cluster create`` does),
  then the helper waits until every node reports ``cluster_state:ok``.
- :func:`start_sentinel`: a master, one replica, and three ``redis-server --sentinel``
  processes (quorum 2) watching the master under :data:`SERVICE`. A test may kill the
  master (:meth:`SentinelSetup.kill_master`) and wait for the promotion
  (:meth:`SentinelSetup.wait_for_failover`).

Every process is this module's own (never the developer's Redis), without persistence,
and is stopped at exit. A missing ``redis-server`` skips locally and fails under
``CI=true`` (:func:`tests.support.redis.redis_unavailable`).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from redis.crc import key_slot

from tests.support.eventually import eventually
from tests.support.redis import redis_server_executable, stop_process, wait_until_answering
from tests.support.redis_server import redis_server_args
from tests.support.servers import LOOPBACK, free_port

SLOTS = 16384
SERVICE = "tbmaster"
SENTINEL_DOWN_AFTER_MS = 1000
SENTINEL_FAILOVER_TIMEOUT_MS = 10000
READY_TIMEOUT_SECONDS = 30.0


@dataclass
class Node:
    """One ``redis-server`` process (a data node or a Sentinel) on a loopback port."""

    port: int
    args: Sequence[str]
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [redis_server_executable(), *self.args],
            cwd=self.directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until_answering(self.process, self.port)

    def stop(self, *, kill: bool = False) -> None:
        process, self.process = self.process, None
        stop_process(process, kill=kill)

    def client(self) -> redis.Redis:
        return redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=5)


def _wait(condition: Callable[[], bool], what: str, timeout: float = READY_TIMEOUT_SECONDS) -> None:
    """``eventually``, with a Redis error counting as "not yet" (a node still starting)."""

    def check() -> bool:
        with contextlib.suppress(redis.RedisError):
            return condition()
        return False

    eventually(check, timeout=timeout, what=what)


# --- Cluster --------------------------------------------------------------------------


@dataclass
class ClusterSetup:
    nodes: list[Node]

    @property
    def url(self) -> str:
        """The broker's ``redis+cluster://`` URL (every node as a start-up node)."""
        return "redis+cluster://" + ",".join(node.address for node in self.nodes)

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host=LOOPBACK, port=self.nodes[0].port, socket_timeout=5)

    def node_holding(self, key: str) -> Node:
        """The node that serves ``key``'s slot."""
        slot = key_slot(key.encode())
        for index, node in enumerate(self.nodes):
            low, high = _slot_range(index, len(self.nodes))
            if low <= slot <= high:
                return node
        raise AssertionError(f"no node serves slot {slot}")


def _slot_range(index: int, count: int) -> tuple[int, int]:
    size = SLOTS // count
    low = index * size
    high = SLOTS - 1 if index == count - 1 else low + size - 1
    return low, high


@contextlib.contextmanager
def start_cluster(masters: int = 3) -> Iterator[ClusterSetup]:
    directory = Path(tempfile.mkdtemp(prefix="tb-redis-cluster-"))
    nodes = []
    try:
        buses: dict[int, int] = {}
        for _ in range(masters):
            port = free_port()
            buses[port] = free_port()
            node_dir = directory / str(port)
            node_dir.mkdir()
            node = Node(
                port,
                redis_server_args(
                    port,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                    # The bus port defaults to port + 10000, which may not exist or be free.
                    "--cluster-port",
                    str(buses[port]),
                    "--dir",
                    str(node_dir),
                ),
                node_dir,
            )
            nodes.append(node)
            node.start()
        for index, node in enumerate(nodes):
            low, high = _slot_range(index, masters)
            with contextlib.closing(node.client()) as client:
                client.execute_command(  # type: ignore[no-untyped-call]
                    "CLUSTER ADDSLOTS", *range(low, high + 1)
                )
        with contextlib.closing(nodes[0].client()) as first:
            for node in nodes[1:]:
                first.execute_command(  # type: ignore[no-untyped-call]
                    "CLUSTER MEET", LOOPBACK, node.port, buses[node.port]
                )

        def ready() -> bool:
            for node in nodes:
                with contextlib.closing(node.client()) as client:
                    info = client.execute_command(  # type: ignore[no-untyped-call]
                        "CLUSTER INFO"
                    )  # parsed into a dict
                    if info.get("cluster_state") != "ok":
                        return False
                    if int(info.get("cluster_known_nodes", 0)) != masters:
                        return False
            return True

        _wait(ready, "every cluster node reports cluster_state:ok")
        yield ClusterSetup(nodes)
    finally:
        for node in nodes:
            node.stop()
        shutil.rmtree(directory, ignore_errors=True)


# --- Sentinel -------------------------------------------------------------------------


@dataclass
class SentinelSetup:
    master: Node
    replica: Node
    sentinels: list[Node]
    killed: list[Node] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The broker's ``redis+sentinel://`` URL (every Sentinel, then the service)."""
        hosts = ",".join(sentinel.address for sentinel in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}"

    def master_address(self) -> tuple[str, int]:
        """Where the Sentinels say the master is now."""
        for sentinel in self.sentinels:
            if not sentinel.running:
                continue
            with contextlib.suppress(redis.RedisError), contextlib.closing(sentinel.client()) as c:
                found: Any = c.sentinel_get_master_addr_by_name(SERVICE)
                if found:
                    host, port = found
                    return (host.decode() if isinstance(host, bytes) else str(host), int(port))
        raise RuntimeError("no Sentinel answers")

    def master_client(self) -> redis.Redis:
        host, port = self.master_address()
        return redis.Redis(host=host, port=port, socket_timeout=5)

    def kill_master(self) -> Node:
        """SIGKILL the current master (a crash); returns the node that was killed."""
        _, port = self.master_address()
        victim = self.master if self.master.port == port else self.replica
        victim.stop(kill=True)
        self.killed.append(victim)
        return victim

    def wait_for_failover(self, old_port: int) -> tuple[str, int]:
        """Until the Sentinels name a new, writable master; returns its address."""

        def promoted() -> bool:
            host, port = self.master_address()
            if port == old_port:
                return False
            with contextlib.closing(redis.Redis(host=host, port=port, socket_timeout=2)) as c:
                role = c.execute_command(  # type: ignore[no-untyped-call]
                    "ROLE"
                )
                return bool(role[0] == b"master")

        _wait(promoted, "the Sentinels promote the replica", timeout=60)
        return self.master_address()


@contextlib.contextmanager
def start_sentinel(sentinels: int = 3, quorum: int = 2) -> Iterator[SentinelSetup]:
    directory = Path(tempfile.mkdtemp(prefix="tb-redis-sentinel-"))
    started: list[Node] = []
    try:
        master_port, replica_port = free_port(), free_port()
        master = Node(
            master_port, redis_server_args(master_port, "--dir", str(directory)), directory
        )
        replica = Node(
            replica_port,
            redis_server_args(
                replica_port, "--dir", str(directory), "--replicaof", LOOPBACK, str(master_port)
            ),
            directory,
        )
        for node in (master, replica):
            started.append(node)
            node.start()

        def replicating() -> bool:
            with contextlib.closing(replica.client()) as client:
                info = client.info("replication")
                return bool(info.get("master_link_status") == "up")

        _wait(replicating, "the replica syncs with the master")
        watchers = []
        for index in range(sentinels):
            port = free_port()
            config = directory / f"sentinel-{index}.conf"
            # Sentinel rewrites its config file (known replicas, epochs): one each.
            config.write_text(
                f"port {port}\n"
                f"bind {LOOPBACK}\n"
                f"sentinel monitor {SERVICE} {LOOPBACK} {master_port} {quorum}\n"
                f"sentinel down-after-milliseconds {SERVICE} {SENTINEL_DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {SERVICE} {SENTINEL_FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
            node = Node(port, [str(config), "--sentinel"], directory)
            started.append(node)
            node.start()
            watchers.append(node)

        setup = SentinelSetup(master, replica, watchers)

        def watching() -> bool:
            for sentinel in watchers:
                with contextlib.closing(sentinel.client()) as client:
                    state: Any = client.sentinel_master(SERVICE)  # parsed into a dict
                    if int(state["num-other-sentinels"]) < sentinels - 1:
                        return False
                    if int(state["num-slaves"]) < 1:
                        return False
            return True

        _wait(watching, "the Sentinels discover each other and the replica")
        yield setup
    finally:
        for node in started:
            node.stop()
        shutil.rmtree(directory, ignore_errors=True)
