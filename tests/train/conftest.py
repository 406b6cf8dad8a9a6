import pytest
import torch

from .common import PAD


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny models are too small to gain from intra-op threads, and on a shared 2-core machine OpenMP
    threads waiting for each other make them ~100x slower; restored afterwards for other test folders."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def sft_task():
    from tuneforge.train.tasks.sft import SFTTask

    return SFTTask(pad_token_id=PAD)
