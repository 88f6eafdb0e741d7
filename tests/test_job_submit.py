"""`ray job submit` end to end: scripts/cluster.sh starts a token-authenticated head, jobs.train runs as a job
in an uploaded copy of the repository, scripts/cluster.sh down stops that head (and only it).

Its own head, beside the session cluster of the other Ray tests (``ray_session``): distinct ports, its own
temp dir and auth token file, no ``ray.init`` in this process. Only `ray` CLI subprocesses.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from kdtrack.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "cluster.sh"
VENV_BIN = REPO / ".venv" / "bin"
JOB_TIMEOUT_S = 300
# A smaller student than the tiny preset (as tests/test_train_job.py) so the job's fit stays short on 2 cores.
FAST = ["model.input_width=160", "model.input_height=96", "model.width=16", "model.head_conv=32",
        "model.deformable=false", "loss.queue_size=256", "train.batch_size_per_worker=2"]

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _ray_cli() -> str:
    """The ray CLI scripts/cluster.sh uses: the venv's, else the one on PATH."""
    ray = VENV_BIN / "ray"
    if ray.exists():
        return str(ray)
    found = shutil.which("ray")
    if found is None:
        pytest.fail("no ray CLI (.venv/bin/ray or on PATH)")
    return found


def _python() -> str:
    """The job's interpreter, absolute (a bare `python` resolves on the cluster's PATH)."""
    python = VENV_BIN / "python"
    return str(python) if python.exists() else sys.executable


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on every interface now (ephemeral range: clear of Ray's worker ports 10002-19999)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _pids_naming(*paths: str) -> list[int]:
    """Live processes whose command line names one of ``paths`` (this head's gcs_server, raylet, dashboard, the
    job's driver, ...)."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
            with open(f"/proc/{name}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if any(path in cmdline for path in paths) and state not in ("Z", "X"):
            pids.append(int(name))
    return pids


def _run(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _job_status(ray: str, url: str, job_id: str, env: dict[str, str]) -> tuple[str, str]:
    """(SUCCEEDED | FAILED | STOPPED | PENDING | RUNNING | ?, the CLI's output) from `ray job status`."""
    proc = _run([ray, "job", "status", "--address", url, job_id], env, timeout=60)
    text = proc.stdout + proc.stderr
    if f"Job '{job_id}' succeeded" in text:
        return "SUCCEEDED", text
    if f"Job '{job_id}' failed" in text:
        return "FAILED", text
    if f"Job '{job_id}' was stopped" in text:
        return "STOPPED", text
    match = re.search(rf"Status for job '{re.escape(job_id)}': (\w+)", text)
    return (match.group(1) if match else "?"), text


@pytest.mark.timeout(JOB_TIMEOUT_S + 240)
def test_ray_job_submit_trains_tiny_on_a_cluster_sh_head(tiny_world, tmp_path):
    ray, python = _ray_cli(), _python()
    gcs_port, dash_port, client_port, agent_port = _free_ports(4)
    url = f"http://127.0.0.1:{dash_port}"
    # Ray's unix sockets live under the temp dir: keep it short (/tmp/kdrXXXXXXXX), not under tmp_path.
    temp_dir = tempfile.mkdtemp(prefix="kdr")
    token_path = Path(temp_dir) / "auth_token"
    token_path.write_text(secrets.token_hex(32))
    token_path.chmod(0o600)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path))
    out = tmp_path / "out"
    job_id = f"kdtrack-submit-{secrets.token_hex(4)}"
    leftover: list[int] = []
    started = time.monotonic()
    up_s = job_s = float("nan")
    logs = ""
    try:
        up = _run(["bash", str(SCRIPT), "up", "--num-cpus", "2", "--port", str(gcs_port),
                   "--dashboard-port", str(dash_port), "--temp-dir", temp_dir,
                   "--", "--ray-client-server-port", str(client_port),
                   "--dashboard-agent-listen-port", str(agent_port)], env, timeout=180)
        if up.returncode != 0 and "Cannot include dashboard with missing packages" in up.stdout + up.stderr:
            pytest.skip("ray start cannot run the dashboard / job server (install ray[default])")
        assert up.returncode == 0, f"cluster.sh up failed:\n{up.stdout}\n{up.stderr}"
        up_s = time.monotonic() - started
        assert "export RAY_AUTH_MODE=token" in up.stdout, up.stdout
        assert f"job submit --address {url} --working-dir ." in up.stdout, up.stdout

        submit = _run([ray, "job", "submit", "--address", url, "--working-dir", str(REPO),
                       "--submission-id", job_id, "--no-wait", "--",
                       python, "-m", "jobs.train", "--config", "tiny", "--data-root", str(tiny_world),
                       "--out", str(out), "--smoke-test", "--set", "train.run_name=submit",
                       *[arg for item in FAST for arg in ("--set", item)]], env, timeout=120)
        assert submit.returncode == 0, f"ray job submit failed:\n{submit.stdout}\n{submit.stderr}"
        submitted = time.monotonic()

        # `ray job logs --follow` returns once the job has ended; then one status query.
        deadline = time.monotonic() + JOB_TIMEOUT_S
        try:
            follow = _run([ray, "job", "logs", "--address", url, "--follow", job_id], env, timeout=JOB_TIMEOUT_S)
            logs = follow.stdout + follow.stderr
        except subprocess.TimeoutExpired as exc:
            logs = f"(ray job logs --follow still running after {JOB_TIMEOUT_S} s)\n{exc.stdout or ''}"
        status, status_text = _job_status(ray, url, job_id, env)
        while status not in ("SUCCEEDED", "FAILED", "STOPPED") and time.monotonic() < deadline:
            time.sleep(3)
            status, status_text = _job_status(ray, url, job_id, env)
        if status != "SUCCEEDED":
            logs = _run([ray, "job", "logs", "--address", url, job_id], env, timeout=60).stdout or logs
        assert status == "SUCCEEDED", f"job {job_id}: {status}\n{status_text}\n--- job logs ---\n{logs[-20000:]}"
        job_s = time.monotonic() - submitted
        # cluster.sh points Ray's in-cluster clients at this head (RAY_API_SERVER_ADDRESS): with the test
        # session's cluster also on this machine, Train's placement-group cleaner must not lose its way.
        assert "Found multiple active Ray instances" not in logs, logs[-20000:]

        # The uploaded working dir honours .gitignore (no .venv, runs/, mlflow.db): a few MiB at most.
        packages = list(Path(temp_dir).glob("session_latest/runtime_resources/working_dir_files/_ray_pkg_*/"))
        assert len(packages) == 1, packages
        assert (packages[0] / "jobs" / "train.py").is_file()
        assert not {".venv", ".git", "runs"} & {p.name for p in packages[0].iterdir()}
        upload_bytes = sum(f.stat().st_size for f in packages[0].rglob("*") if f.is_file())
        assert upload_bytes < 20 * 2**20, f"working dir upload of {upload_bytes / 2**20:.1f} MiB"

        ckpt = out / "checkpoint.pt"
        assert ckpt.is_file(), f"no {ckpt}\n--- job logs ---\n{logs[-20000:]}"
        state = load_checkpoint(ckpt)

        client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(experiment_ids)
        assert [r.info.status for r in runs] == ["FINISHED"], f"{runs}\n--- job logs ---\n{logs[-20000:]}"
        assert state["mlflow_run_id"] == runs[0].info.run_id
    finally:
        try:
            down = _run(["bash", str(SCRIPT), "down", "--port", str(gcs_port)], env, timeout=120)
        except subprocess.TimeoutExpired as exc:
            down = subprocess.CompletedProcess(exc.cmd, -1, str(exc.stdout or ""), "cluster.sh down timed out")
        for _ in range(50):  # processes SIGKILLed by `down` may take a moment to go
            leftover = _pids_naming(temp_dir, str(out))
            if not leftover:
                break
            time.sleep(0.1)
        for pid in leftover:  # clean up after a failed `down`; reported below
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        shutil.rmtree(temp_dir, ignore_errors=True)
        fit = re.search(r"\(fit [\d.]+ s\)", logs)
        print(f"test_job_submit: head up in {up_s:.0f} s, job {job_s:.0f} s {fit.group(0) if fit else ''}, "
              f"{time.monotonic() - started:.0f} s in all\n{down.stdout}{down.stderr}")
    assert down.returncode == 0, f"cluster.sh down failed:\n{down.stdout}\n{down.stderr}"
    assert not leftover, f"cluster.sh down left processes of the head running: {leftover}\n{down.stdout}"
