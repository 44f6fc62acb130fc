import pytest
import torch

from eoca.data import synthetic_platform

# small networks on a shared 2-core machine run far faster on one thread
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny():
    """A 400-user platform and its time splits."""
    platform = synthetic_platform(n_users=400, n_funds=6, seed=3, impressions_per_user=3)
    return platform, platform.data.split()

