"""Every example config in configs/ (and its subfolders) loads and validates (typos in shipped examples are bugs).
configs/compare/ holds compare configs, a different schema, checked in tests/encoders/test_compare.py."""
from pathlib import Path

import pytest

from tuneforge.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p.relative_to(ROOT / "configs").parts[0] != "compare")
METHOD_CONFIGS = sorted((ROOT / "configs" / "methods").glob("*.yaml"))
# (method, model) pairs without an example, each for a reason given in configs/methods/README.md
NO_EXAMPLE = {("bitfit", "smollm2"), ("feature_based", "smollm2"), ("feature_based", "minilm")}


def _id(path: Path) -> str:
    return str(path.relative_to(ROOT / "configs"))


DATA_MAKING_VERBS = ("data", "best-of-n")


def header_makes(text: str, folder: str) -> bool:
    """Whether a config's text names a tuneforge command that writes data (`tuneforge data ...`, `tuneforge
    best-of-n ... --out runs/...`) and the folder its data is read from."""
    return any(f"tuneforge {verb} " in text for verb in DATA_MAKING_VERBS) and folder in text


def test_there_are_example_configs():
    assert CONFIGS and METHOD_CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=[_id(p) for p in CONFIGS])
def test_example_config_loads(path):
    """Loading resolves every data set reference (`alpaca:train`) to a file that exists: in a plain clone, the
    repository's own slice (TUNEFORGE_DATA unset here)."""
    cfg = load_config(path)
    assert cfg.output_dir
    sources = [cfg.data, *cfg.data.mixture]
    for source in sources:
        for split in ("train", "validation"):
            data_path = getattr(source, split)
            if data_path and Path(data_path).parts[0] == "runs":
                # data an earlier step of the recipe writes (e.g. `tuneforge data glyphs runs/...`, `tuneforge
                # best-of-n ... --out runs/...`): the config's header must name the command that makes it, so a
                # plain clone can follow it
                assert header_makes(path.read_text(), str(Path(data_path).parent)), (
                    f"{_id(path)}: {split} data {data_path} is made by no command in the header")
            elif data_path:
                assert Path(data_path).exists(), f"{_id(path)}: {split} data {data_path} missing"
                assert "shared" not in Path(data_path).parts, f"{_id(path)} reads outside the repository"
    distill = getattr(cfg.task_config, "distill", None)
    for teacher in distill.teachers if distill else ():
        # teachers are runs an earlier step trains: the header must name the `tuneforge train` that makes them
        folder = str(Path(teacher).parent) if Path(teacher).name.startswith("seed-") else teacher
        assert "tuneforge train " in path.read_text() and f"output_dir={folder}" in path.read_text(), (
            f"{_id(path)}: teacher {teacher} is made by no `tuneforge train ... output_dir=` in the header")


def test_every_method_has_an_example_on_smollm2_and_minilm():
    from tuneforge.registry import METHODS

    wanted = {(m, model) for m in METHODS.names() for model in ("smollm2", "minilm")} - NO_EXAMPLE
    have = {tuple(p.stem.rsplit("_", 1)) for p in METHOD_CONFIGS}
    assert have == wanted


@pytest.mark.parametrize("path", METHOD_CONFIGS, ids=[_id(p) for p in METHOD_CONFIGS])
def test_method_example_fits_a_tiny_model_of_the_same_architecture(path):
    """The method's settings apply to the architecture (targets exist, ranks fit): a tiny Llama stands in for
    SmolLM2, a tiny BERT classifier for MiniLM."""
    import dataclasses

    import tuneforge.methods as M
    from tuneforge.models.tiny import tiny_bert, tiny_llama

    cfg = load_config(path)
    assert path.stem == f"{type(cfg.method).method}_{'smollm2' if 'smollm2' in cfg.model.name else 'minilm'}"
    model = tiny_llama() if cfg.task == "sft" else tiny_bert(num_labels=cfg.model.num_labels)
    method = cfg.method
    if cfg.task != "sft" and "modules_to_save" in {f.name for f in dataclasses.fields(method)}:
        method = method.replace(modules_to_save=["classifier"])  # what the classify task adds
    M.add_adapter(model, method)
    assert M.count_parameters(model)[0] > 0
