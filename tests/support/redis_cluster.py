"""A real Redis Cluster on loopback for tests and benchmarks: 3 masters + 3 replicas by default, each a
redis-server child (AOF, ``appendfsync always``, as the deploy config), joined by ``redis-cli --cluster``."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

from index.redis_connection import ClusterClient, RedisTarget, connect
from index.redis_server import _die_with_parent, free_port

_START_SECONDS = 30
_BUS_OFFSET = 10000  # a node's cluster bus listens on its port + 10000
_NODE_TIMEOUT_MS = 2000  # a master silent this long is failed over to its replica


class RedisClusterServer:
    """``masters`` masters with ``replicas`` replicas each; ``url`` is the service's ``redis+cluster://``."""

    def __init__(self, directory: Path, masters: int = 3, replicas: int = 1) -> None:
        if shutil.which("redis-cli") is None:
            raise RuntimeError("redis-cli not installed (Debian package redis-tools)")
        self.directory, self.masters, self.replicas = directory, masters, replicas
        self.ports = [_cluster_port() for _ in range(masters * (1 + replicas))]
        self.processes: dict[int, subprocess.Popen] = {}

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports[: self.masters])

    def client(self) -> ClusterClient:
        return connect(RedisTarget(self.url))

    def start_node(self, port: int) -> None:
        node = self.directory / str(port)
        node.mkdir(parents=True, exist_ok=True)
        command = [
            "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node),
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(_NODE_TIMEOUT_MS), "--appendonly", "yes", "--appendfsync", "always",
            "--save", "", "--daemonize", "no", "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip
        self.processes[port] = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
        )

    def start(self) -> RedisClusterServer:
        for port in self.ports:
            self.start_node(port)
        for port in self.ports:
            _wait(lambda port=port: redis.Redis(port=port).ping())
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        create = ["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas", str(self.replicas), "--cluster-yes"]
        subprocess.run(create, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        _wait(self._settled)
        return self

    def _settled(self) -> bool:
        """Every node says the cluster is ok and knows every node (gossip done), and every replica is in sync
        with its master (a write waiting for a replica, ``WAIT``, can be confirmed)."""
        for port in self.ports:
            if self.processes[port].poll() is not None:
                continue
            node = redis.Redis(port=port)
            info = node.cluster("info")
            if info["cluster_state"] != "ok" or int(info["cluster_known_nodes"]) < len(self.processes):
                return False
            replication = node.info("replication")
            if replication["role"] == "master" and replication["connected_slaves"] < self.replicas:
                return False
            if replication["role"] == "slave" and replication["master_link_status"] != "up":
                return False
        return True

    def master_ports(self) -> list[int]:
        """Ports of the live masters, as the cluster sees them now."""
        client = self.client()
        try:
            return [node.port for node in client.get_primaries()]
        finally:
            client.close()

    def kill(self, port: int) -> None:
        """SIGKILL a node: no clean shutdown."""
        os.kill(self.processes[port].pid, signal.SIGKILL)
        self.processes[port].wait()

    def wait_ok(self) -> None:
        _wait(lambda: redis.Redis(port=next(p for p, q in self.processes.items() if q.poll() is None))
              .cluster("info")["cluster_state"] == "ok")  # fmt: skip

    def slot_ranges(self) -> list[tuple[tuple[int, int], int]]:
        """((first, last) slot, master port) of every range, as a live node sees them now."""
        port = next(port for port, process in self.processes.items() if process.poll() is None)
        return _ranges(redis.Redis(port=port).cluster("slots"))

    def reshard(self, source_port: int, target_port: int, slots: int) -> subprocess.CompletedProcess:
        """Move ``slots`` slots from one master to another with ``redis-cli --cluster reshard``."""
        ids = {port: redis.Redis(port=port).cluster("myid") for port in (source_port, target_port)}
        ids = {port: value.decode() if isinstance(value, bytes) else value for port, value in ids.items()}
        command = [
            "redis-cli", "--cluster", "reshard", f"127.0.0.1:{source_port}", "--cluster-from", ids[source_port],
            "--cluster-to", ids[target_port], "--cluster-slots", str(slots), "--cluster-yes",
            "--cluster-pipeline", "100",
        ]  # fmt: skip
        return subprocess.run(command, check=True, capture_output=True, text=True)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            process.wait(10)
        self.processes.clear()


def _ranges(reply: list) -> list[tuple[tuple[int, int], int]]:
    """CLUSTER SLOTS ([start, end, [host, port, id, …], replicas…] per range) → ((start, end), port)."""
    return [((start, end), primary[1]) for start, end, primary, *_ in reply]


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too, so below 55536."""
    while True:
        port = free_port()
        if port + _BUS_OFFSET > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + _BUS_OFFSET))
            except OSError:
                continue
        return port


def _wait(ready, seconds: float = _START_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except redis.RedisError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the Redis Cluster did not settle")
