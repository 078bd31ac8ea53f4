"""The thread policy (threads.py): the CPU count from fabricated affinity and cgroup files, the
split between the main process and its workers, `--threads` and RESAIL_THREADS, and the
per-worker count inside data-loader and stage workers. Nothing here measures time."""

import os
import types
from pathlib import Path

import cv2
import pytest
import torch
from click.testing import CliRunner

from resail import threads
from resail.cli import cli
from resail.errors import InputError
from resail.pipeline.runner import execute
from resail.synth.distributed import Dist
from resail.synth.train import _loader

SAVED_ENV = (*threads.LIBRARY_ENV, threads.WORKER_ENV, threads.ENV, "LOCAL_WORLD_SIZE")


@pytest.fixture
def clean_policy(monkeypatch):
    """No policy in the environment at the start; the process's threads and variables as they were at the end."""
    env = {v: os.environ.get(v) for v in SAVED_ENV}
    for v in SAVED_ENV:
        os.environ.pop(v, None)
    counts = torch.get_num_threads(), cv2.getNumThreads()
    monkeypatch.setitem(threads._logged, "policy", None)
    yield
    for v, value in env.items():
        os.environ.pop(v, None)
        if value is not None:
            os.environ[v] = value
    torch.set_num_threads(counts[0])
    cv2.setNumThreads(counts[1])


def fake_root(tmp_path: Path, cgroup: str, mounts: list[str], files: dict[str, str]) -> Path:
    """A filesystem root holding /proc/self/{cgroup,mountinfo} and the given cgroup files."""
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text(cgroup)
    (tmp_path / "proc/self/mountinfo").write_text("".join(m + "\n" for m in mounts))
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


ROOT_FS = "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw"
V2 = "30 22 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate"
V1_CPU = "32 31 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct"
V1_MEM = "35 31 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory"


@pytest.fixture
def eight_cpus(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)


def test_cgroup_v2_takes_the_tightest_quota_on_the_path(tmp_path, eight_cpus):
    root = fake_root(tmp_path, "0::/slurm/job_7/step_0\n", [ROOT_FS, V2], {
        "sys/fs/cgroup/cpu.max": "max 100000\n",
        "sys/fs/cgroup/slurm/job_7/cpu.max": "150000 100000\n",       # 1.5 CPUs on the job
        "sys/fs/cgroup/slurm/job_7/step_0/cpu.max": "max 100000\n",   # nothing more on the step
    })
    assert threads.cgroup_quota(root) == (1.5, "/sys/fs/cgroup/slurm/job_7/cpu.max")
    assert threads.available_cpus(root) == (2, "cgroup quota 1.5 CPUs in /sys/fs/cgroup/slurm/job_7/cpu.max")


def test_cgroup_v1_quota_of_the_cpu_controller(tmp_path, eight_cpus):
    root = fake_root(tmp_path, "5:memory:/job\n4:cpu,cpuacct:/job\n", [ROOT_FS, V1_MEM, V1_CPU], {
        "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
        "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        "sys/fs/cgroup/cpu,cpuacct/job/cpu.cfs_quota_us": "240000\n",
        "sys/fs/cgroup/cpu,cpuacct/job/cpu.cfs_period_us": "100000\n",
        "sys/fs/cgroup/memory/job/cpu.cfs_quota_us": "50000\n",       # not the cpu controller: ignored
    })
    assert threads.available_cpus(root) == (2, "cgroup quota 2.4 CPUs in /sys/fs/cgroup/cpu,cpuacct/job/cpu.cfs_quota_us")


def test_container_sees_its_own_cgroup_as_the_mount(tmp_path, eight_cpus):
    """In a cgroup namespace the process's path is "/" (or one outside the mount's root): the mount itself."""
    mount = "30 22 0:26 /docker/abc /sys/fs/cgroup ro - cgroup2 cgroup2 rw"
    root = fake_root(tmp_path, "0::/\n", [ROOT_FS, mount], {"sys/fs/cgroup/cpu.max": "300000 100000\n"})
    assert threads.available_cpus(root)[0] == 3


def test_no_quota_leaves_the_affinity_mask(tmp_path, monkeypatch):
    """A hybrid host (v1 cpu controller unlimited, v2 without cpu.max) and a quota above the mask change nothing."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3}, raising=False)
    unified = "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw"
    root = fake_root(tmp_path / "a", "1:cpu,cpuacct:/\n0::/\n", [ROOT_FS, V1_CPU, unified], {
        "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    assert threads.cgroup_quota(root) is None
    assert threads.available_cpus(root) == (2, "CPU affinity")
    wide = fake_root(tmp_path / "b", "0::/\n", [ROOT_FS, V2], {"sys/fs/cgroup/cpu.max": "400000 100000\n"})
    assert threads.available_cpus(wide) == (2, "CPU affinity")
    assert threads.available_cpus(tmp_path / "nothing") == (2, "CPU affinity")  # no /proc at all


def test_rounding_to_the_nearest_cpu_and_at_least_one():
    assert [threads.round_cpus(q) for q in (0.1, 0.5, 1.49, 1.5, 2.4, 15.7)] == [1, 1, 1, 2, 2, 16]


def test_split_between_the_main_process_and_its_workers():
    assert threads.split(8, 0, True) == threads.split(8, 0, False) == (8, 8)   # no workers: all of them
    assert threads.split(8, 2, True) == (6, 1)    # data loaders beside the trainer: one thread each
    assert threads.split(2, 2, True) == (1, 1)    # the main process keeps one
    assert threads.split(8, 3, False) == (8, 2)   # stage parts while the main process waits
    assert threads.split(2, 4, False) == (2, 1)


def test_local_ranks_share_the_cpus(clean_policy, eight_cpus, monkeypatch, tmp_path):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    p = threads.plan(1, root=tmp_path)
    assert (p.cpus, p.main, p.per_worker) == (2, 1, 1)
    assert p.source == "CPU affinity, shared by 4 local ranks"


def test_resail_threads_variable(clean_policy, monkeypatch):
    assert threads.requested() is None
    monkeypatch.setenv(threads.ENV, "3")
    assert threads.requested() == 3
    assert threads.requested(5) == 5            # --threads wins
    monkeypatch.setenv(threads.ENV, "OFF")
    assert threads.requested() == "off"
    monkeypatch.setenv(threads.ENV, "many")
    with pytest.raises(InputError, match="RESAIL_THREADS='many'"):
        threads.requested()


def _toy_args(out: Path) -> list[str]:
    return ["data", "toy", str(out), "--n-train", "1", "--n-val", "1", "--size", "64x64"]


def test_threads_option_overrides_the_count(clean_policy, tmp_path):
    res = CliRunner().invoke(cli, ["--threads", "3", *_toy_args(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    assert "threads: 3 CPUs (--threads); main process 3" in res.output
    assert (torch.get_num_threads(), cv2.getNumThreads(), os.environ["OMP_NUM_THREADS"]) == (3, 3, "3")
    res = CliRunner().invoke(cli, [*_toy_args(tmp_path / "b"), "--jobs", "2", "--threads", "4"])  # after the command
    assert res.exit_code == 0, res.output
    assert "threads: 4 CPUs (--threads); main process 4, 2 workers × 2" in res.output
    assert os.environ[threads.WORKER_ENV] == "2"


def test_resail_threads_off_changes_nothing(clean_policy, tmp_path):
    torch.set_num_threads(1)
    res = CliRunner().invoke(cli, _toy_args(tmp_path), env={threads.ENV: "off"})
    assert res.exit_code == 0, res.output
    assert "threads: policy off" in res.output
    assert torch.get_num_threads() == 1 and "OMP_NUM_THREADS" not in os.environ


class ThreadCounts(torch.utils.data.Dataset):
    """Each item: the torch and OpenCV thread counts of the process that loads it."""

    def __len__(self):
        return 4

    def __getitem__(self, key):
        return torch.tensor([torch.get_num_threads(), cv2.getNumThreads()])


def test_data_loader_workers_take_the_per_worker_count(clean_policy):
    """torch sets one thread in its workers; the trainer's loader gives them the policy's count instead."""
    threads.apply(threads.ThreadPolicy(cpus=3, source="test", workers=1, main=3, per_worker=2))
    cfg = types.SimpleNamespace(batch_size=2, seed=0, workers=1)
    batches = list(_loader(ThreadCounts(), cfg, Dist(), torch.device("cpu"), 0, 2))
    assert torch.cat(batches).tolist() == [[2, 2]] * 4
    assert torch.get_num_threads() == 3


def _worker_counts(i):
    return os.environ["OMP_NUM_THREADS"], cv2.getNumThreads()


def test_stage_workers_take_the_per_worker_count(clean_policy):
    threads.apply(threads.ThreadPolicy(cpus=4, source="test", workers=2, main=4, per_worker=2))
    assert list(execute(_worker_counts, [(0,), (1,)], jobs=2)) == [("2", 2)] * 2
    assert list(execute(_worker_counts, [(0,)], jobs=1)) == [("4", 4)]  # inline: the main process's count
