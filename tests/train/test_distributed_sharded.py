"""Adapters on a sharded base (train.shard: true, FSDP2): LoRA over a dense base and QLoRA over a 4-bit NF4 base
sharded too (FSDP-QLoRA), with and without CPU offload, and DoRA and IA3, on 2 CPU processes with gloo. Each gives the losses and
the adapter of one process with the same global batch, within the float64 bound of test_distributed.py
(`tolerance`): the nf4 base dequantises to the same float32 values (exact in float64) whether its codes were
sharded or not, so the only differences left are summation orders, as for LoRA. Each process holds half of the
base's bytes (4-bit codes included); a run stopped at step 2 resumes from the adapter files (gathered on process
0, the one-process layout) exactly; settings that cannot shard are refused before any weight is read.
"""
import json
import os

import pytest
import torch

from tuneforge.errors import ConfigError
from tuneforge.train import api

from .test_distributed import (  # noqa: F401 (fixture)
    WORLD,
    _free_port,
    _spawn,
    adapter,
    assert_close,
    config,
    setup,
    train_losses,
)

# The reported loss of a step is summed in float32 (loop.accumulate: each micro-batch's float64 loss rounded once,
# added to the step's sum, then the per-process sums all-reduced and divided): at most 8 float32 roundings of
# unit roundoff 2^-24 on each side, so two runs whose weights agree to ~1e-15 (float64) report losses that agree to
# 2 x 8 x 2^-24 relative (measured: 9e-8).
LOSS_REL = 2 * 8 * 2.0**-24


OTHER_METHODS = ("dora", "ia3")  # adapters of other shapes (a magnitude vector, scaling vectors) inside the blocks


def qlora(cfg: dict) -> dict:
    """The same run over the base quantised to NF4 (computing in float64: quant/layers.py COMPUTE_DTYPES)."""
    cfg["model"]["quantization"] = "nf4"
    return cfg


@pytest.fixture(scope="module")
def runs(setup):  # noqa: F811 - the imported fixture
    jobs = [
        config(setup, "lora_shard", shard=True),
        config(setup, "lora_shard_stopped", shard=True, max_steps=2),
        config(setup, "lora_shard_stopped", shard=True),  # resumes from step 2: gathered adapter files
        qlora(config(setup, "qlora_shard", shard=True)),
        # shard: auto, sharded because of the offload; checkpointed blocks gather their 4-bit codes a third time
        qlora(config(setup, "qlora_offload", cpu_offload=True, gradient_checkpointing=True)),
        *(config(setup, f"{method}_shard", method, shard=True, max_steps=3) for method in OTHER_METHODS),
    ]
    _spawn([{"config": job} for job in jobs])
    return setup


def one_process(root, name: str, cfg: dict | None = None):
    """The same run in this process, with the two processes' global batch as its micro-batch."""
    cfg = cfg or config(root, name)
    cfg["train"]["micro_batch_size"] *= WORLD
    return api.train(cfg, progress=False)


def test_lora_on_a_sharded_base_equals_one_process(runs):
    one_process(runs, "lora_single")
    assert_close(adapter(runs, "lora_shard"), adapter(runs, "lora_single"))
    assert train_losses(runs, "lora_shard") == pytest.approx(train_losses(runs, "lora_single"), rel=LOSS_REL)
    state = json.loads((runs / "lora_shard" / "checkpoints" / "step-5" / "state.json").read_text())
    assert state["world_size"] == WORLD and state["sharded"] is True


def test_qlora_on_a_sharded_4bit_base_equals_one_process(runs):
    """Sharded 4-bit codes, on the device and offloaded to CPU memory, against the same NF4 base in one process."""
    one_process(runs, "qlora_single", qlora(config(runs, "qlora_single")))
    single = adapter(runs, "qlora_single")
    for name in ("qlora_shard", "qlora_offload"):
        assert_close(adapter(runs, name), single)
        assert train_losses(runs, name) == pytest.approx(train_losses(runs, "qlora_single"), rel=LOSS_REL)
    for name in ("qlora_shard", "qlora_single"):  # the adapter records the base it trained on, as in one process
        recorded = json.loads((runs / name / "adapter" / "base_quantization.json").read_text())
        assert recorded["quantization"] == "nf4", recorded


@pytest.mark.parametrize("method", OTHER_METHODS)
def test_other_adapters_on_a_sharded_base_equal_one_process(runs, method):
    one_process(runs, f"{method}_single", config(runs, f"{method}_single", method, max_steps=3))
    assert_close(adapter(runs, f"{method}_shard"), adapter(runs, f"{method}_single"))
    assert train_losses(runs, f"{method}_shard") == pytest.approx(train_losses(runs, f"{method}_single"),
                                                                  rel=LOSS_REL)


def test_a_stopped_sharded_run_resumes_exactly(runs):
    """Step 2's checkpoint holds the adapter and AdamW state as whole tensors (gathered on process 0): the same
    files as one process; resuming on two processes continues bit for bit."""
    step2 = runs / "lora_shard_stopped" / "checkpoints"
    assert not (step2 / "step-5" / "sharded").exists() and (step2 / "step-5" / "trainable.safetensors").is_file()
    for key, value in adapter(runs, "lora_shard").items():
        assert torch.equal(value, adapter(runs, "lora_shard_stopped")[key]), key
    assert train_losses(runs, "lora_shard_stopped") == train_losses(runs, "lora_shard")


def _probe(rank: int, port: int, root, out) -> None:
    """One process: load the tiny Llama in NF4, add LoRA, shard it as `train` does, and write how many bytes of
    base weights (4-bit codes included) this process holds."""
    from tuneforge.methods import add_adapter, mark_trainable
    from tuneforge.models.from_config import load_model_for
    from tuneforge.train import launcher
    from tuneforge.train.api import resolve_config
    from tuneforge.train.distributed import Parallel
    from tuneforge.train.optim import build_optimizer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    launcher.init_from_env("cpu")
    cfg = resolve_config(qlora(config(root, "probe", shard=True)))
    model = load_model_for(cfg.model)
    add_adapter(model, cfg.method)
    mark_trainable(model)

    def local_bytes():
        return sum((p.to_local() if hasattr(p, "to_local") else p).untyped_storage().nbytes()
                   for p in model.parameters() if not p.requires_grad)

    whole = local_bytes()
    par = Parallel.current()
    par.setup(model, build_optimizer(model, cfg.train), cfg.train)
    (out / f"rank{rank}.json").write_text(json.dumps({"whole": whole, "sharded": local_bytes()}))
    launcher.shutdown()


def test_each_process_holds_half_of_the_base(setup, tmp_path):  # noqa: F811 - the imported fixture
    import torch.multiprocessing as mp

    mp.start_processes(_probe, args=(_free_port(), setup, tmp_path), nprocs=WORLD, join=True,
                       start_method="fork" if "fork" in mp.get_all_start_methods() else "spawn")
    held = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    whole = held[0]["whole"]
    # each parameter is cut into WORLD equal row blocks, the last one padded: at most one row more per tensor
    assert sum(h["sharded"] for h in held) >= whole
    for h in held:
        assert h["whole"] == whole and h["sharded"] <= whole / WORLD * 1.05, held


@pytest.mark.parametrize("train, model, key", [
    ({"shard": True}, {"device_map": "cpu"}, "train.shard"),
    ({"cpu_offload": True}, {"quantization": "int8"}, "train.cpu_offload"),
    ({"shard": False, "cpu_offload": True}, {}, "train.cpu_offload"),
])
def test_settings_that_cannot_shard_are_refused_before_loading(tmp_path, train, model, key):
    import yaml

    from tuneforge.config import load_config

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": "does-not-exist", "device": "auto", **model},
                                    "train": train}, sort_keys=False))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.file == str(path) and err.value.line is not None
    assert key in str(err.value), str(err.value)


def test_a_base_sharded_over_gpus_loads_into_host_memory(monkeypatch):
    """On GPUs, a base to be sharded loads on the CPU in the GPU's dtype (FSDP then moves it unit by unit); in
    one process, on CPUs, or when nothing is sharded, loading is unchanged."""
    from tuneforge.config import config_from_dict, model_options
    from tuneforge.train.distributed import load_options

    def cfg(**train):
        return config_from_dict({"model": {"name": "x", "device": "cpu"}, "train": train})

    assert load_options(cfg(shard=True), 2) == {}  # a CPU run: nothing to move
    monkeypatch.setattr(model_options, "resolve_device", lambda device: torch.device("cuda", 0))
    monkeypatch.setattr(model_options, "resolve_dtype", lambda dtype, device: torch.bfloat16)
    assert load_options(cfg(shard=True), 2) == {"device": "cpu", "dtype": "bfloat16"}
    assert load_options(cfg(cpu_offload=True), 2) == {"device": "cpu", "dtype": "bfloat16"}
    assert load_options(cfg(shard=True), 1) == {} and load_options(cfg(), 2) == {}
    with pytest.raises(ConfigError, match="train.cpu_offload.*one process"):  # nothing to offload in one process
        load_options(cfg(cpu_offload=True), 1)
