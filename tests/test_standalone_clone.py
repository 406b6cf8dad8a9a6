"""A checkout stands alone: data set references resolve by one rule (a path as given, then $TUNEFORGE_DATA, then
the repository's slices), and a plain clone with nothing beside it loads every shipped config and trains the
demo's config for two steps."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tuneforge.config.data_sets import resolve_data_path
from tuneforge.errors import ConfigError

from .test_configs import header_makes

ROOT = Path(__file__).resolve().parents[1]


def test_an_existing_path_is_used_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "alpaca:train").write_text("{}\n")  # a file whose name looks like a reference
    assert resolve_data_path("alpaca:train") == "alpaca:train"
    assert resolve_data_path("some/file.jsonl") == "some/file.jsonl"  # not a reference: the reader reports it
    assert resolve_data_path(None) is None


def test_full_data_comes_first_then_the_slice(tmp_path, monkeypatch, capsys):
    from tuneforge.config import data_sets as sets

    monkeypatch.setattr(sets, "_announced", set())  # said once per process: other tests may have said it already
    full = tmp_path / "full"
    (full / "alpaca").mkdir(parents=True)
    (full / "alpaca" / "train.jsonl").write_text('{"instruction": "x", "output": "y"}\n')
    monkeypatch.setenv("TUNEFORGE_DATA", str(full))
    assert resolve_data_path("alpaca:train") == str(full / "alpaca" / "train.jsonl")
    sliced = resolve_data_path("alpaca:validation")  # not in the full folder: the slice, and it says so
    assert Path(sliced) == ROOT / "data" / "alpaca" / "validation.jsonl"
    assert "in-repo slice" in capsys.readouterr().err
    monkeypatch.delenv("TUNEFORGE_DATA")
    assert Path(resolve_data_path("scifact:")) == ROOT / "data" / "scifact"  # a BEIR folder


def test_a_missing_data_set_names_itself_and_the_fix(monkeypatch):
    monkeypatch.delenv("TUNEFORGE_DATA", raising=False)
    with pytest.raises(ConfigError) as err:
        resolve_data_path("imagenet:train", key="train")
    message = str(err.value)
    assert "imagenet:train" in message and "TUNEFORGE_DATA" in message and "alpaca" in message


def test_slices_are_small_and_licensed():
    files = [p for p in (ROOT / "data").rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 6_000_000
    for folder in (p for p in (ROOT / "data").iterdir() if p.is_dir()):
        readme = (folder / "README.md").read_text()
        assert "License:" in readme and "make_slices.py" in readme, folder
    for non_commercial in ("alpaca", "scifact"):
        assert "non-commercial" in (ROOT / "data" / non_commercial / "README.md").read_text()


def _clone(tmp_path) -> Path:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.fail("these tests clone the repository: run them in a git checkout with git installed")
    clone = tmp_path / "x"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    assert [p.name for p in tmp_path.iterdir()] == ["x"]  # nothing beside the clone
    return clone


def _run_in(clone: Path, args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TUNEFORGE_DATA"}
    env["PYTHONPATH"] = str(clone / "src")  # the clone's sources, not this checkout's
    return subprocess.run([sys.executable, *args], cwd=clone, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_a_plain_clone_loads_every_shipped_config(tmp_path):
    """Each config's data resolves inside the clone (configs/compare/ are compare configs: their data is checked
    the same way through the run configs they name)."""
    clone = _clone(tmp_path)
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from tuneforge.config import load_config\n"
        "out = {}\n"
        "for p in sorted(Path('configs').rglob('*.yaml')):\n"
        "    if p.parts[1] == 'compare':\n"
        "        continue\n"
        "    cfg = load_config(p)\n"
        "    out[str(p)] = [getattr(s, k) for s in [cfg.data, *cfg.data.mixture] for k in ('train', 'validation')]\n"
        "print(json.dumps(out))\n"
    )
    done = _run_in(clone, ["-c", script])
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout)
    assert len(loaded) >= 40
    for config, paths in loaded.items():
        for path in filter(None, paths):
            if Path(path).parts[0] == "runs":  # written by an earlier step the config's header names
                text = (clone / config).read_text()
                assert header_makes(text, str(Path(path).parent)), (config, path)
                continue
            resolved = (clone / path).resolve()  # relative to the clone, its working directory
            assert resolved.is_relative_to(clone.resolve()) and resolved.exists(), (config, path)


@pytest.mark.slow
def test_the_demo_config_trains_in_a_plain_clone(tmp_path):
    clone = _clone(tmp_path)
    done = _run_in(clone, ["-m", "tuneforge", "train", "configs/demo_smollm2_alpaca_lora.yaml", "--quiet",
                           "--set", "train.max_steps=2", "--set", "data.limit_eval=4", "--set", "train.eval_every=2",
                           "--set", "data.max_length=128", "--set", "output_dir=runs/two-steps"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "in-repo slice" in done.stderr
    assert (clone / "runs" / "two-steps" / "adapter" / "adapter_model.safetensors").is_file()
    losses = [json.loads(line) for line in (clone / "runs" / "two-steps" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in losses if "loss" in r] == [1, 2]
