"""One live run per output_dir: a second train() into it fails at once with a clear message (it never resumes
from the live run's checkpoints), and the lock goes with the process that held it, kill -9 included."""
import os
import signal
import subprocess
import sys

import pytest

from tuneforge.errors import OutputDirInUse
from tuneforge.train import api
from tuneforge.train.run_lock import output_dir_lock

from .runs import patch_loaders, run_config

HOLDER = """
import sys, time
from tuneforge.train.run_lock import output_dir_lock
with output_dir_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_second_run_into_a_live_output_dir_fails_at_once(tmp_path, monkeypatch):
    patch_loaders(monkeypatch)
    loaded = []
    monkeypatch.setattr(api, "_load_model", lambda cfg: loaded.append(cfg))  # must never be reached
    config = run_config(tmp_path)
    with output_dir_lock(config["output_dir"]):
        with pytest.raises(OutputDirInUse, match=rf"output_dir {tmp_path / 'run'} is in use by another training "
                                                 rf"run \(process {os.getpid()}\)"):
            api.train(config, progress=False)
    assert loaded == [] and not (tmp_path / "run" / "config.yaml").exists()


def test_the_lock_dies_with_its_process(tmp_path, monkeypatch):
    """A run killed with SIGKILL leaves no stale lock: the next run starts (and trains) at once."""
    patch_loaders(monkeypatch)
    config = run_config(tmp_path, max_steps=1)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, config["output_dir"]], stdout=subprocess.PIPE, env=env,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputDirInUse, match=rf"process {holder.pid}\)"):
            api.train(config, progress=False)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert api.train(config, progress=False).steps == 1
