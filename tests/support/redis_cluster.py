"""A real Redis Cluster on loopback for the tests: three masters and three replicas of Debian's
``redis-server`` (7.0) in cluster mode, created with ``redis-cli --cluster create`` exactly as an
operator creates one, plus the operations the tests put it through: ``kill -9`` of a master
(its replica is promoted), restarting a node (it rejoins as a replica), pausing a node
(``SIGSTOP``), and moving one slot to another master while clients run (the steps
``redis-cli --cluster reshard`` takes for each slot it moves).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class Node:
    """One line of ``CLUSTER NODES``."""

    id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    slots: frozenset[int]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags and "fail" not in self.flags


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _free_cluster_port(taken: set[int]) -> int:
    """A free port whose cluster bus port (``port + 10000``) is free too, both below the
    kernel's ephemeral range (a port in it can be taken at any moment as the source port of
    an outgoing connection, the cluster's own among them)."""
    high = _ephemeral_low() - 10000
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(max(1024, high - 8000), high)
        if {port, port + 10000} & taken:
            continue
        free = True
        for candidate in (port, port + 10000):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind((HOST, candidate))
                except OSError:
                    free = False
                    break
        if free:
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _parse_slots(fields: list[str]) -> frozenset[int]:
    slots: set[int] = set()
    for item in fields:
        if item.startswith("["):  # a slot being migrated/imported: "[42->-id]"
            continue
        first, _, last = item.partition("-")
        slots.update(range(int(first), int(last or first) + 1))
    return frozenset(slots)


class LocalRedisCluster:
    """Six ``redis-server`` processes in cluster mode under ``base_dir`` (one folder each, with
    its ``nodes.conf``), ``node_timeout_ms`` short so that a failover takes about two seconds.
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        ports: list[int] | None = None,
        node_timeout_ms: int = 1500,
        replicas: int = 1,
    ) -> None:
        self.base_dir = base_dir
        if ports is None:
            ports = []
            for _ in range(3 * (1 + replicas)):
                ports.append(_free_cluster_port(set(ports)))
        self.ports = ports
        self.node_timeout_ms = node_timeout_ms
        self.replicas = replicas
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.binary = shutil.which("redis-server") or "redis-server"
        self.cli = shutil.which("redis-cli") or "redis-cli"

    @property
    def url(self) -> str:
        """``redis+cluster://`` with every node as a seed (any one that is up will do)."""
        return "redis+cluster://" + ",".join(f"{HOST}:{p}" for p in self.ports)

    # -- processes -----------------------------------------------------------------------

    def start_node(self, port: int) -> None:
        folder = self.base_dir / str(port)
        folder.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "--port", str(port),
            "--bind", HOST,
            "--dir", str(folder),
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(folder / "nodes.conf"),
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--appendonly", "no",
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--logfile", str(folder / "server.log"),
        ]  # fmt: skip
        self.procs[port] = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.procs[port].poll() is not None:
                log = (folder / "server.log").read_text(errors="replace")[-1500:]
                raise RuntimeError(f"redis-server on {port} exited: {log}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.2):
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server on {port} did not accept connections")

    def start(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        for port in self.ports:
            self.start_node(port)
        done = subprocess.run(
            [
                self.cli,
                "--cluster",
                "create",
                *(f"{HOST}:{p}" for p in self.ports),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout}{done.stderr}")
        self.wait_healthy()

    def stop(self) -> None:
        for port in list(self.procs):
            self._signal(port, signal.SIGCONT)
            proc = self.procs.pop(port)
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)

    def _signal(self, port: int, sig: int) -> None:
        proc = self.procs.get(port)
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)

    def kill(self, port: int) -> None:
        """``kill -9`` one node."""
        proc = self.procs.pop(port)
        proc.kill()
        proc.wait(timeout=10)

    def pause(self, port: int) -> None:
        self._signal(port, signal.SIGSTOP)

    def resume(self, port: int) -> None:
        self._signal(port, signal.SIGCONT)

    # -- inspection ----------------------------------------------------------------------

    def cli_call(self, port: int, *args: str, timeout_s: float = 30) -> str:
        done = subprocess.run(
            [self.cli, "-h", HOST, "-p", str(port), *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if done.returncode != 0 or done.stdout.startswith(("ERR", "(error)")):
            raise RuntimeError(f"redis-cli -p {port} {' '.join(args)}: {done.stdout}{done.stderr}")
        return done.stdout

    def alive(self) -> list[int]:
        return [p for p, proc in self.procs.items() if proc.poll() is None]

    def nodes(self, via: int | None = None) -> list[Node]:
        """``CLUSTER NODES`` as seen by ``via`` (default: the first live node)."""
        port = via if via is not None else self.alive()[0]
        out: list[Node] = []
        for line in self.cli_call(port, "cluster", "nodes").splitlines():
            parts = line.split()
            if len(parts) < 8:
                continue
            node_port = int(parts[1].split("@", 1)[0].rsplit(":", 1)[1])
            master = None if parts[3] == "-" else parts[3]
            flags = frozenset(parts[2].replace("myself,", "").split(","))
            out.append(Node(parts[0], node_port, flags, master, _parse_slots(parts[8:])))
        return out

    def masters(self) -> list[Node]:
        return sorted((n for n in self.nodes() if n.is_master), key=lambda n: n.port)

    def master_of_slot(self, slot: int) -> Node:
        for node in self.masters():
            if slot in node.slots:
                return node
        raise LookupError(f"no master serves slot {slot}")

    def replica_of(self, master: Node) -> Node:
        for node in self.nodes():
            if node.master_id == master.id and "fail" not in node.flags:
                return node
        raise LookupError(f"master {master.port} has no live replica")

    def info(self, port: int, section: str) -> dict[str, str]:
        pairs = (line.split(":", 1) for line in self.cli_call(port, "info", section).splitlines())
        return {k: v.strip() for k, v in (p for p in pairs if len(p) == 2)}

    def wait_healthy(self, timeout_s: float = 60) -> None:
        """Every live node sees ``cluster_state:ok``, three masters each with a live replica
        whose link is up, and no node flagged as failing."""
        deadline = time.monotonic() + timeout_s
        problem = ""
        while time.monotonic() < deadline:
            try:
                problem = self._health_problem()
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                problem = str(exc)
            if not problem:
                return
            time.sleep(0.1)
        raise RuntimeError(f"the cluster did not become healthy in {timeout_s}s: {problem}")

    def _health_problem(self) -> str:
        for port in self.alive():
            if self.info(port, "cluster").get("cluster_enabled") != "1":
                return f"{port}: cluster not enabled"
            state = self.cli_call(port, "cluster", "info")
            if "cluster_state:ok" not in state:
                return f"{port}: cluster_state not ok"
        nodes = self.nodes()
        if any(n.flags & {"fail", "fail?", "handshake", "noaddr"} for n in nodes):
            return f"flags: {[sorted(n.flags) for n in nodes]}"
        masters = [n for n in nodes if n.is_master and n.slots]
        if len(masters) != 3:
            return f"{len(masters)} masters with slots"
        for master in masters:
            replicas = [n for n in nodes if n.master_id == master.id]
            if len(replicas) < self.replicas:
                return f"master {master.port} has {len(replicas)} replicas"
            for replica in replicas:
                link = self.info(replica.port, "replication").get("master_link_status")
                if link != "up":
                    return f"replica {replica.port}: master link {link}"
        return ""

    # -- operations ----------------------------------------------------------------------

    def fail_over_by_kill(self, master: Node, timeout_s: float = 30) -> Node:
        """``kill -9`` ``master`` and wait until its replica has taken its slots; returns the
        promoted node. The killed node stays down (see :meth:`rejoin`)."""
        replica = self.replica_of(master)
        self.kill(master.port)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                promoted = next((n for n in self.nodes() if n.id == replica.id), None)
                if (
                    promoted is not None
                    and promoted.is_master
                    and promoted.slots == master.slots
                    and "cluster_state:ok" in self.cli_call(replica.port, "cluster", "info")
                ):
                    return promoted
            time.sleep(0.05)
        raise RuntimeError(f"replica {replica.port} was not promoted in {timeout_s}s")

    def heal(self) -> None:
        """Resume paused nodes, start killed ones again, and wait until healthy."""
        for port in self.ports:
            if port in self.procs:
                self.resume(port)
            else:
                self.start_node(port)
        self.wait_healthy()

    def rejoin(self, port: int) -> None:
        """Start a killed node again from its ``nodes.conf``: it rejoins as a replica of the
        master that took over its slots; wait until the cluster is healthy again."""
        self.start_node(port)
        self.wait_healthy()

    def move_slot(self, slot: int, target: Node, *, pause_s: float = 0.0) -> None:
        """Move ``slot`` to the master ``target`` while clients run, as
        ``redis-cli --cluster reshard`` moves each slot: ``SETSLOT IMPORTING`` on the target,
        ``SETSLOT MIGRATING`` on the source, ``MIGRATE`` of its keys (one at a time here,
        ``pause_s`` apart, so that clients meet ``ASK`` redirections), then ``SETSLOT NODE``
        on the target, the source and the other masters (clients then meet ``MOVED``)."""
        source = self.master_of_slot(slot)
        if source.id == target.id:
            return
        self.cli_call(target.port, "cluster", "setslot", str(slot), "importing", source.id)
        self.cli_call(source.port, "cluster", "setslot", str(slot), "migrating", target.id)
        while True:
            keys = self.cli_call(source.port, "cluster", "getkeysinslot", str(slot), "1").split()
            if not keys:
                break
            self.cli_call(
                source.port, "migrate", HOST, str(target.port), "", "0", "10000", "keys", keys[0]
            )
            time.sleep(pause_s)
        # the target first, then the source: a source that says MOVED while the target still
        # only imports sends clients back and forth (redis-py gives up after 16 redirections,
        # "TTL exhausted", seen here when the source came first)
        others = [m for m in self.masters() if m.id not in (source.id, target.id)]
        for node in (target, source, *others):
            self.cli_call(node.port, "cluster", "setslot", str(slot), "node", target.id)
        self.check()

    def check(self) -> str:
        """``redis-cli --cluster check``: every slot covered, no open slot; raises otherwise."""
        port = self.alive()[0]
        deadline = time.monotonic() + 30
        while True:
            done = subprocess.run(
                [self.cli, "--cluster", "check", f"{HOST}:{port}"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            if done.returncode == 0 and "[ERR]" not in done.stdout:
                return done.stdout
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-cli --cluster check: {done.stdout}{done.stderr}")
            time.sleep(0.1)


def _die_with_parent() -> None:
    """Own process group, and SIGKILL when the test process dies (no server left behind)."""
    import ctypes

    os.setpgrp()
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
