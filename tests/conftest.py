import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Small convs on a shared CPU run faster on one thread than on contended OpenMP threads."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
