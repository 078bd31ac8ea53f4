"""Fixtures shared by several test modules. The builders behind them are in tests/builders/.

The session-scoped work dirs are built once and shared read-only: a test that writes into one
takes a private copy (`builders.work.copy_work`) first.
"""

from pathlib import Path

import pytest
import torch

from builders.checks import small_baked_work
from builders.runs import TinyRun, serve_work, tiny_run
from builders.work import copy_work


@pytest.fixture(scope="module")
def one_thread():
    """Small convs on a shared CPU run faster on one thread than on contended OpenMP threads."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def shared_tiny_run(tmp_path_factory) -> TinyRun:
    """The inference tests' tiny run (val baked, random G, segmenter and Inception); read-only."""
    return tiny_run(tmp_path_factory.mktemp("tiny_run"))


@pytest.fixture(scope="session")
def shared_serve_work(tmp_path_factory):
    """(work, first val label map): the tiny run `resail serve` tests read; read-only."""
    return serve_work(tmp_path_factory.mktemp("serve_work"))


@pytest.fixture(scope="session")
def shared_baked(tmp_path_factory) -> Path:
    """A small toy work dir, both splits baked (`builders.checks.small_baked_work`); read-only."""
    return small_baked_work(tmp_path_factory.mktemp("baked"))


@pytest.fixture
def baked_copy(shared_baked, tmp_path) -> Path:
    """A private copy of `shared_baked` (same mtimes, so its manifests still hold), for a test that writes."""
    return copy_work(shared_baked, tmp_path / "work")
