"""`ray job submit` of jobs/summarize.py against a real local Ray cluster with token authentication on (issue 5).

The head is started the way a deployment starts it: `ray start --head` with ``RAY_AUTH_MODE=token`` and a generated
token, the client (`ray job submit`) given the same token. Every node gets its own temp dir and ports, and is stopped
in teardown by the pids of its own processes (never a global `ray stop`, which would kill other clusters on the
machine).
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
RAY = str(VENV_BIN / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker_port_range(size: int = 200) -> tuple[int, int]:
    """A block of worker ports for one node, away from other local Ray clusters' default 10002-19999."""
    for _ in range(50):
        start = random.randrange(30000, 60000 - size)
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("", start))
                b.bind(("", start + size - 1))
            except OSError:
                continue
        return start, start + size - 1
    raise RuntimeError("no free block of worker ports found")


@dataclass
class RayNode:
    """One `ray start` node. Its processes are those whose command line names its own temp dir (and, for the head,
    its GCS address: the Ray client server names only that), with their children."""

    temp_dir: Path
    head: bool
    gcs_address: str = ""

    def processes(self) -> list[psutil.Process]:
        markers = [str(self.temp_dir)] + ([f"--address={self.gcs_address}"] if self.head and self.gcs_address else [])
        found: dict[int, psutil.Process] = {}
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if any(m in arg for arg in proc.info["cmdline"] or [] for m in markers):
                    found[proc.pid] = proc
                    for child in proc.children(recursive=True):
                        found[child.pid] = child
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return list(found.values())

    def kill(self, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` to every process of this node; SIGTERM waits for them and then kills what is left."""
        procs = self.processes()
        for proc in procs:
            try:
                proc.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=15 if sig == signal.SIGTERM else 5)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        return len(procs)


@dataclass
class LocalRayCluster:
    """A head started with `ray start --head` plus optional extra nodes, all with token authentication on."""

    root: Path
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    nodes: list[RayNode] = field(default_factory=list)
    gcs_address: str = ""
    dashboard_url: str = ""

    @property
    def env(self) -> dict[str, str]:
        """The environment of every node and client: the venv first on PATH (the job's `python`), token auth on."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(
            PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=self.token,
            RAY_USAGE_STATS_ENABLED="0",
            HF_HUB_OFFLINE="1",
        )
        return env

    def _start(self, args: list[str], head: bool) -> RayNode:
        # Short path: Ray's unix sockets live under the temp dir and must stay under 107 characters.
        temp_dir = Path(tempfile.mkdtemp(prefix="rj", dir=self.root))
        node = RayNode(temp_dir=temp_dir, head=head)
        self.nodes.append(node)
        low, high = _worker_port_range()
        ports = {
            "node-manager-port": _free_port(),
            "object-manager-port": _free_port(),
            "metrics-export-port": _free_port(),
            "dashboard-agent-listen-port": _free_port(),
            "dashboard-agent-grpc-port": _free_port(),
            "runtime-env-agent-port": _free_port(),
            "min-worker-port": low,
            "max-worker-port": high,
        }
        cmd = [RAY, "start", f"--temp-dir={temp_dir}", "--disable-usage-stats", *args]
        cmd += [f"--{k}={v}" for k, v in ports.items()]
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return node

    def start_head(self, num_cpus: int = 2) -> RayNode:
        gcs_port, dashboard_port = _free_port(), _free_port()
        node = self._start(
            [
                "--head",
                f"--num-cpus={num_cpus}",
                "--num-gpus=0",
                f"--port={gcs_port}",
                f"--ray-client-server-port={_free_port()}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard_port}",
            ],
            head=True,
        )
        # Ray resolves a loopback node address to the machine's own IP; the GCS address is read back from Ray.
        self.gcs_address = (node.temp_dir / "ray_current_cluster").read_text().strip()
        node.gcs_address = self.gcs_address
        self.dashboard_url = f"http://127.0.0.1:{dashboard_port}"
        return node

    def add_node(self, num_cpus: int, resources: str = "{}") -> RayNode:
        return self._start(
            [f"--address={self.gcs_address}", f"--num-cpus={num_cpus}", "--num-gpus=0", f"--resources={resources}"],
            head=False,
        )

    def stop(self) -> None:
        """Worker nodes first, then the head; each by its own processes."""
        for node in sorted(self.nodes, key=lambda n: n.head):
            node.kill(signal.SIGTERM)
        self.nodes.clear()

    def job(self, *args: str, timeout: float = 240, token: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `ray job <args>` against this cluster as a client with (or without) the cluster's token."""
        env = self.env
        if not token:
            env.pop("RAY_AUTH_TOKEN")
            env.pop("RAY_AUTH_MODE")
        return subprocess.run(
            [RAY, "job", args[0], f"--address={self.dashboard_url}", *args[1:]],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
        )


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[LocalRayCluster]:
    root = Path(tempfile.mkdtemp(prefix="rjob", dir="/tmp"))
    cluster = LocalRayCluster(root=root)
    try:
        cluster.start_head(num_cpus=2)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_a_client_without_the_token_is_refused(ray_cluster: LocalRayCluster) -> None:
    proc = ray_cluster.job("list", token=False, timeout=60)
    assert proc.returncode != 0
    assert "Missing authentication token" in proc.stdout + proc.stderr
    ok = ray_cluster.job("list", timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
