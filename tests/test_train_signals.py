"""Stopping `resail train` from outside: SIGTERM (what clusters send before they preempt a job)
stops it after the current step with a checkpoint and exit code 128 + 15; SIGKILL leaves the last
periodic checkpoint. Either way `--resume` ends on the weights of an uninterrupted run. SIGUSR1
(SLURM's advance warning) stops it the same way; a second Ctrl-C aborts at once. Two gloo
processes stop after the same step when only one is signalled.

The SIGTERM and SIGKILL runs are real `resail train` processes on a 6-image toy work dir with
minimal widths; the uninterrupted reference and the resumes run in this process (one thread
each, so the arithmetic is the same)."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from builders.work import baked_work
from resail.errors import BusyError
from resail.synth.checkpoint import list_checkpoints, load_snapshot, read_state
from resail.synth.config import resolve_config
from resail.synth.train import train
from resail.workdir import WorkDir

SIZE, STEPS = 96, 8
TOML = f"""
batch_size = 2
load_size = [104, 104]
workers = 0
log_every = 1
sample_every = 1000
checkpoint_every = 3
seed = 1
tensorboard = false

[network]
ngf = 4
norm_hidden = 4
ndf = 4
width = {SIZE}
height = {SIZE}
segnet_channels = [4, 4, 4, 4, 4]
"""

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = baked_work(tmp_path_factory.mktemp("signals"), n_train=6, n_val=2, size=SIZE, seed=5, splits=("train",),
                      k=3)
    (work / "tiny.toml").write_text(TOML)
    return work


def config(work, name, steps=STEPS):
    return resolve_config("toy", n_train=6, toml=work / "tiny.toml", overrides={"name": name, "steps": steps})


@pytest.fixture(scope="module")
def reference(work, one_thread):
    """The final full state of the uninterrupted run."""
    summary = train(config(work, "reference"), work, progress=False)
    return read_state(list_checkpoints(summary["run_dir"], "state")[-1])[0]


def start_training(work, name, *flags: str) -> subprocess.Popen:
    env = {**os.environ, "RESAIL_THREADS": "1"}  # one thread, as the reference (the thread policy, threads.py)
    return subprocess.Popen([sys.executable, "-m", "resail.cli", "train", str(work), "--preset", "toy", "--name", name,
                             "--config", str(work / "tiny.toml"), "--steps", str(STEPS), "-q", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for(condition, proc=None, timeout=120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"resail train ended early ({proc.returncode}): {proc.stderr.read()}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def stats_steps(run_dir: Path) -> list[int]:
    path = run_dir / "stats.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


def last_state_step(run_dir: Path) -> int:
    return int(list_checkpoints(run_dir, "state")[-1].stem.split("-")[1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_same_state(a: dict, b: dict) -> None:
    assert a["step"] == b["step"] == STEPS
    for net in ("G", "D", "G_ema"):
        for k, v in a[net].items():
            torch.testing.assert_close(b[net][k], v, atol=1e-6, rtol=0, msg=f"{net}.{k}")


def resume_to_the_end(work, name) -> dict:
    summary = train(config(work, name), work, progress=False, resume=True)
    assert summary["complete"] and summary["stopped_by"] is None
    assert stats_steps(Path(summary["run_dir"])) == list(range(1, STEPS + 1))
    return read_state(list_checkpoints(summary["run_dir"], "state")[-1])[0]


def test_sigterm_writes_a_checkpoint_and_resume_ends_as_an_uninterrupted_run(work, reference):
    run_dir = work / "runs" / "sigterm"
    proc = start_training(work, "sigterm")
    wait_for(lambda: stats_steps(run_dir), proc)  # the first step is done
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    stopped = last_state_step(run_dir)
    assert 1 <= stopped < STEPS
    assert f"stopped by SIGTERM at step {stopped}: checkpoint written" in err
    assert load_snapshot(list_checkpoints(run_dir, "snapshot")[-1]).step == stopped
    assert_same_state(reference, resume_to_the_end(work, "sigterm"))


def signal_after_a_step(stats: Path, sig: int) -> threading.Thread:
    """Send `sig` to this process once `stats` holds a row (Python runs the handler in the main thread)."""

    def send():
        while not (stats.exists() and stats.read_text().strip()):
            time.sleep(0.02)
        os.kill(os.getpid(), sig)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def test_sigusr1_stops_in_process_and_a_second_ctrl_c_aborts(work):
    from resail.synth.distributed import StopSignals

    signal_after_a_step(work / "runs" / "usr1" / "stats.jsonl", signal.SIGUSR1)
    summary = train(config(work, "usr1"), work, progress=False)
    assert summary["stopped_by"] == "SIGUSR1" and not summary["complete"] and 1 <= summary["steps"] < STEPS
    assert last_state_step(work / "runs" / "usr1") == summary["steps"]
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # the handlers are gone again
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_sigkill_resumes_from_the_last_periodic_checkpoint(work, reference):
    run_dir = work / "runs" / "killed"
    proc = start_training(work, "killed")
    wait_for(lambda: list_checkpoints(run_dir, "state"), proc)
    proc.kill()
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    last = last_state_step(run_dir)
    assert last % 3 == 0 and last < STEPS  # a periodic checkpoint (checkpoint_every = 3)
    assert_same_state(reference, resume_to_the_end(work, "killed"))


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name: state, parent pid, …; None once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def _children(pid: int) -> list[int]:
    """The running processes whose parent is `pid`."""
    pids = (int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit())
    return [c for c in pids if (_stat(c) or ["Z", "0"])[1] == str(pid) and _alive(c)]


def test_sigkill_with_data_loader_workers_frees_the_run_at_once(work):
    """The OOM killer's SIGKILL to a training with 2 data-loader workers: the orphaned workers live
    on for seconds, yet `--resume` is accepted at once (they never held the run's lock), while a
    live training refuses a second writer."""
    name, wd = "killed-workers", WorkDir(work)
    run_dir = wd.run(name)
    proc = start_training(work, name, "--workers", "2", "--steps", "1000")  # runs until killed
    try:
        wait_for(lambda: list_checkpoints(run_dir, "state"), proc)
        workers = _children(proc.pid)
        with pytest.raises(BusyError, match=f"run '{name}' .* another process \\(pid {proc.pid} on "):
            wd.claim_run(name, resuming=True)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert len(workers) >= 2
    wd.claim_run(name, resuming=True).release()  # at once: the lock is free ...
    assert any(_alive(p) for p in workers), "the workers exited before the run was claimed: nothing was tested"  # ... while they live
    last = last_state_step(run_dir)
    summary = train(config(work, name, steps=last + 1), work, progress=False, resume=True)
    assert summary["steps"] == last + 1 and summary["stopped_by"] is None


def _signalled_worker(rank, world, port, work, out):
    """Rank 1 signals itself once rank 0 has logged a step; both train the same run."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    if rank == 1:
        signal_after_a_step(Path(work) / "runs" / "ddp-stop" / "stats.jsonl", signal.SIGTERM)
    summary = train(config(work, "ddp-stop"), work, progress=False)
    Path(out, f"rank{rank}.json").write_text(json.dumps(summary))


def test_two_processes_stop_after_the_same_step_when_one_is_signalled(work, tmp_path):
    mp.spawn(_signalled_worker, args=(2, _free_port(), work, tmp_path), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["steps"] == ranks[1]["steps"] < STEPS
    assert [r["stopped_by"] for r in ranks] == ["SIGTERM", "SIGTERM"]
    assert last_state_step(work / "runs" / "ddp-stop") == ranks[0]["steps"]
