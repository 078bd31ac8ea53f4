"""workdir.py: a run's lock and lineage. A run has one writer at a time and records the guidance it
trains on; resuming it on guidance that has since been baked again is refused."""

import json

import pytest

from builders.checks import SIDE, held_elsewhere
from resail.errors import BusyError, InputError, StageError
from resail.pipeline.bake import BakeConfig, bake
from resail.workdir import WorkDir, check_run_name


def test_a_run_has_one_writer_and_records_the_guidance_it_trains_on(baked_copy):
    work = baked_copy
    wd = WorkDir(work)
    with held_elsewhere(wd.locks, "run-toy") as pid:
        with pytest.raises(BusyError, match=f"run 'toy' of {work} is being written by another process \\(pid {pid}"):
            wd.claim_run("toy", resuming=False)
    lock = wd.claim_run("toy", resuming=False)  # free again once the holder is gone
    lineage = json.loads(wd.run_lineage("toy").read_text())
    assert lineage["guidance"]["fingerprint"] == wd.require_guidance("train")["fingerprint"]
    lock.release()


def test_resuming_a_run_on_other_guidance_is_refused(baked_copy):
    work = baked_copy
    wd = WorkDir(work)
    wd.claim_run("r", resuming=False).release()
    wd.claim_run("r", resuming=True).release()  # same guidance: fine
    bake(BakeConfig(work, "train", k=3, size=(SIDE, SIDE), n_preview=0, rebuild=True))
    with pytest.raises(StageError, match="run 'r' was trained on guidance that .* no longer holds"):
        wd.claim_run("r", resuming=True)



def test_a_run_name_is_one_folder_name_never_a_path(tmp_path):
    for bad in ("..", "../x", "a/b", ".hidden", "", "a..b", "x" * 129):
        with pytest.raises(InputError, match="use letters, digits, '.', '_' and '-' only"):
            check_run_name(bad)
    assert WorkDir(tmp_path).run("toy64.r-1_a") == tmp_path / "runs" / "toy64.r-1_a"
