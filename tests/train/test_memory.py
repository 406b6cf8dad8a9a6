"""train.release_memory: on glibc, a freed activation-sized buffer goes back to the OS even after a bigger one
raised malloc's adaptive mmap threshold (the case that fragments a training step's heap)."""
import sys
from pathlib import Path

import pytest
import torch

from tuneforge.train.memory import release_freed_memory


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc policy")
def test_a_freed_activation_buffer_leaves_the_process():
    if not release_freed_memory("cpu"):
        pytest.skip("not glibc")
    big = torch.ones(24 << 18)  # 24 MB, freed: under the default policy this lifts the threshold to 24 MB
    del big
    before = _rss_mb()
    buffers = [torch.ones(1 << 20) for _ in range(16)]  # 16 x 4 MB, touched
    during = _rss_mb()
    del buffers[1:-1]  # a heap would keep these pinned between the first and the last buffer
    after = _rss_mb()
    assert during - before > 50
    assert after - before < 16  # the 14 freed buffers (56 MB) are gone; 2 x 4 MB stay


def test_accelerators_and_other_platforms_are_left_alone():
    assert release_freed_memory("cuda") is False
