"""The HA topology of ``deploy/ha/`` as real processes on loopback, for the failover tests: a Redis primary
and its replicas (``deploy/ha/redis.conf``), Redis Sentinels (``deploy/ha/sentinel.sh``), and HAProxy
(``deploy/ha/haproxy.cfg``) in front of service replicas. Every process is the test's child, on a free port,
killed by its PID; each dies with the test process (``PR_SET_PDEATHSIG``)."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

from index.redis_server import RedisServer, free_port
from tests.support.faults_service import ROOT

HA = ROOT / "deploy" / "ha"
MASTER_NAME = "xmhash"
_SETTLE_SECONDS = 30  # for a replica to sync, a sentinel to answer, HAProxy to see a replica


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def _until(condition, what: str, timeout: float = _SETTLE_SECONDS, step: float = 0.05):
    """Poll ``condition`` until it returns something true; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = condition()
        except (redis.RedisError, OSError):
            found = None
        if found:
            return found
        time.sleep(step)
    raise AssertionError(f"not within {timeout} s: {what}")


def _kill(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGKILL)
        process.wait(10)


class ReplicatedRedis:
    """A primary, ``replicas`` replicas and ``sentinels`` sentinels watching them (quorum 2)."""

    def __init__(self, directory: Path, replicas: int = 2, sentinels: int = 3, down_after_ms: int = 2000) -> None:
        self.directory, self.down_after_ms = directory, down_after_ms
        self.nodes = [RedisServer(directory / f"redis-{n}", HA / "redis.conf") for n in range(1 + replicas)]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.sentinels: list[subprocess.Popen] = []

    @property
    def sentinel_addresses(self) -> str:
        """The service's ``XMHASH_REDIS_SENTINELS``."""
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def start(self) -> ReplicatedRedis:
        primary, *replicas = self.nodes
        primary.start()
        for replica in replicas:
            replica.options = ["--replicaof", "127.0.0.1", str(primary.port)]
            replica.start()
        for replica in replicas:
            self.wait_synced(replica)
        for n, port in enumerate(self.sentinel_ports):
            command = [str(HA / "sentinel.sh"), str(port), "127.0.0.1", str(primary.port),
                       str(self.directory / f"sentinel-{n}"), str(self.down_after_ms), "127.0.0.1"]  # fmt: skip
            log = open(self.directory / f"sentinel-{n}.log", "ab")  # noqa: SIM115 - the child keeps it
            self.sentinels.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                                   preexec_fn=_die_with_parent))  # fmt: skip
        for port in self.sentinel_ports:  # each sentinel knows every replica and the other sentinels
            _until(lambda port=port: self._sentinel_sees_all(port), f"sentinel {port} sees the topology")
        return self

    def _sentinel_sees_all(self, port: int) -> bool:
        state = redis.Redis(port=port).sentinel_master(MASTER_NAME)
        others = len(self.sentinel_ports) - 1
        return state["num-slaves"] == len(self.nodes) - 1 and state["num-other-sentinels"] == others

    def primary_port(self) -> int:
        """The primary's port as the sentinels name it."""
        return int(redis.Redis(port=self.sentinel_ports[0]).sentinel_get_master_addr_by_name(MASTER_NAME)[1])

    def node(self, port: int) -> RedisServer:
        return next(node for node in self.nodes if node.port == port)

    def kill_primary(self) -> RedisServer:
        """SIGKILL the primary (no shutdown, no final write); returns it, dead."""
        node = self.node(self.primary_port())
        _kill(node.process)
        node.process = None
        return node

    def wait_promoted(self, old: RedisServer, timeout: float = 30) -> RedisServer:
        """The replica the sentinels promoted instead of ``old``, once it says it is the primary."""
        port = _until(lambda: (p := self.primary_port()) != old.port and p, "a replica promoted", timeout)
        node = self.node(port)
        _until(lambda: node.client().info("replication")["role"] == "master", "the promoted one is primary", timeout)
        return node

    def restart(self, node: RedisServer, replica_of: RedisServer) -> None:
        """Start a killed node again on its port and data, as a replica of the primary (as docs/ha.md says to:
        started as a primary, it would take writes until the sentinels turn it into a replica)."""
        node.options = ["--replicaof", "127.0.0.1", str(replica_of.port)]
        node.start()

    def wait_synced(self, replica: RedisServer) -> None:
        """Until ``replica`` replicates the current primary with its link up."""

        def synced() -> bool:
            info = replica.client().info("replication")
            return info["role"] == "slave" and info["master_link_status"] == "up"

        _until(synced, f"replica {replica.port} synced")

    def wait_settled(self) -> None:
        """Until every sentinel names the same primary with no failover under way, and every other node
        replicates it with its link up: the state a next failure should find (a primary killed before the
        sentinels finished the last failover waits out their failover-timeout)."""

        def settled() -> bool:
            states = [redis.Redis(port=port).sentinel_master(MASTER_NAME) for port in self.sentinel_ports]
            ports = {int(state["port"]) for state in states}
            if len(ports) != 1 or any(state["flags"] != "master" for state in states):
                return False
            primary = ports.pop()
            for node in self.nodes:
                if node.port != primary:
                    info = node.client().info("replication")
                    if info["role"] != "slave" or info["master_port"] != primary or info["master_link_status"] != "up":
                        return False
            return True

        _until(settled, "the sentinels agree on the primary and every replica follows it")

    def stop(self) -> None:
        for process in self.sentinels:
            _kill(process)
        for node in self.nodes:
            _kill(node.process)
            node.process = None


class HAProxy:
    """``haproxy -f deploy/ha/haproxy.cfg`` in the foreground, in front of two service replicas."""

    def __init__(self, directory: Path, services: tuple[int, int]) -> None:
        assert shutil.which("haproxy"), "haproxy missing: `make bootstrap` installs the Debian package"
        self.port, self.admin = free_port(), free_port()
        self.env = os.environ | {
            "XMHASH_LB_BIND": f"127.0.0.1:{self.port}",
            "XMHASH_LB_ADMIN": f"127.0.0.1:{self.admin}",
            "XMHASH_SERVICE_1": f"127.0.0.1:{services[0]}",
            "XMHASH_SERVICE_2": f"127.0.0.1:{services[1]}",
        }
        self.log = directory / "haproxy.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> HAProxy:
        with open(self.log, "ab") as log:
            command = ["haproxy", "-db", "-f", str(HA / "haproxy.cfg")]
            self.process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            preexec_fn=_die_with_parent)  # fmt: skip
        self.wait_up({"s1", "s2"})
        return self

    def wait_up(self, servers: set[str]) -> None:
        """Until HAProxy sends requests to exactly these replicas."""
        _until(lambda: self.up() == servers, f"HAProxy sends requests to {sorted(servers)} only")

    def command(self, line: str) -> str:
        """One command of HAProxy's runtime API (``show stat``, ``set server services/s1 state drain``)."""
        with socket.create_connection(("127.0.0.1", self.admin), timeout=5) as connection:
            connection.sendall(line.encode() + b"\n")
            return b"".join(iter(lambda: connection.recv(65536), b"")).decode()

    def _servers(self) -> dict[str, list[str]]:
        """``show stat``'s row of each service replica, by name (s1, s2)."""
        rows = [row.split(",") for row in self.command("show stat").splitlines() if row.startswith("services,s")]
        return {row[1]: row for row in rows}

    def up(self) -> set[str]:
        """The replicas HAProxy sends requests to now."""
        return {name for name, row in self._servers().items() if row[17] == "UP"}

    def wait_idle(self, server: str) -> None:
        """Until no request is in flight on ``server`` (its current sessions, ``scur``, are 0)."""
        _until(lambda: self._servers()[server][4] == "0", f"{server} has no request in flight")

    def stop(self) -> None:
        _kill(self.process)
