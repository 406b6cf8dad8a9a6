"""Adapters on a sharded base (train.shard: true, FSDP2): LoRA over a dense base and QLoRA over a 4-bit NF4 base
sharded too (FSDP-QLoRA), with and without CPU offload, and DoRA and IA3, on 2 CPU processes with gloo. Each gives the losses and
the adapter of one process with the same global batch, within the float64 bound of test_distributed.py
(`tolerance`): the nf4 base dequantises to the same float32 values (exact in float64) whether its codes were
sharded or not, so the only differences left are summation orders, as for LoRA. LoRA, QLoRA and IA3 load
rank-local (each process reads only its shard of the base: models/loader_deferred.py), DoRA whole (its magnitude
reads the base). Each process holds no base values after loading and half of the base's bytes (4-bit codes
included) after sharding, and the base gathered back equals a whole load bit for bit; a run stopped at step 2
resumes from the adapter files (gathered on process 0, the one-process layout) exactly; settings that cannot
shard are refused before any weight is read.
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
    """One process: load the tiny Llama in NF4 as `train` does (rank-local: placeholders) and the whole way, add
    LoRA to both with one seed, shard the first as `train` does; write how many bytes of base weights (4-bit codes
    included) this process holds after loading and after sharding, and, on process 0, whether the gathered model
    (`finish`) equals the whole load tensor for tensor, 4-bit codes and quantisation states included."""
    from tuneforge.methods import add_adapter, mark_trainable
    from tuneforge.models.from_config import load_model_for
    from tuneforge.models.loader_deferred import deferred_of
    from tuneforge.train import launcher
    from tuneforge.train.api import _load_model, resolve_config
    from tuneforge.train.distributed import Parallel
    from tuneforge.train.optim import build_optimizer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    launcher.init_from_env("cpu")
    cfg = resolve_config(qlora(config(root, "probe", shard=True)))
    models = []
    for loader in (_load_model, lambda c: load_model_for(c.model)):
        model = loader(cfg)
        torch.manual_seed(cfg.train.seed)
        add_adapter(model, cfg.method)
        mark_trainable(model)
        models.append(model)
    model, whole_model = models
    assert deferred_of(model) is not None and deferred_of(whole_model) is None

    def held(m):
        return sum((p.to_local() if hasattr(p, "to_local") else p).untyped_storage().nbytes()
                   for p in m.parameters() if not p.requires_grad)

    loaded = held(model)
    par = Parallel.current()
    par.setup(model, build_optimizer(model, cfg.train), cfg.train)
    figures = {"whole": held(whole_model), "loaded": loaded, "sharded": held(model)}
    par.finish(model)
    if rank == 0:
        ours, theirs = model.state_dict(), whole_model.state_dict()
        figures["same_keys"] = ours.keys() == theirs.keys()
        figures["differ"] = [k for k in ours if not torch.equal(ours[k], theirs[k])]
        layers = [(n, m) for n, m in model.named_modules() if getattr(m, "quant_state", None) is not None]
        figures["layers"] = len(layers)
        for name, layer in layers:
            mine, ref = layer.weight.quant_state, whole_model.get_submodule(name).weight.quant_state
            if not (torch.equal(mine.absmax, ref.absmax) and torch.equal(mine.offset, ref.offset)
                    and torch.equal(mine.state2.absmax, ref.state2.absmax) and mine.shape == ref.shape):
                figures["differ"].append(name + ".quant_state")
    (out / f"rank{rank}.json").write_text(json.dumps(figures))
    launcher.shutdown()


def test_each_process_reads_and_holds_only_its_shard_of_the_base(setup, tmp_path):  # noqa: F811 - the imported fixture
    """Rank-local loading: after loading, a process holds no base values (placeholders of one element); after
    sharding, half of the base's bytes (4-bit codes included); gathered back, the base is the whole load's, bit
    for bit."""
    import torch.multiprocessing as mp

    mp.start_processes(_probe, args=(_free_port(), setup, tmp_path), nprocs=WORLD, join=True,
                       start_method="fork" if "fork" in mp.get_all_start_methods() else "spawn")
    held = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    whole = held[0]["whole"]
    # each parameter is cut into WORLD equal row blocks, the last one padded: at most one row more per tensor
    assert sum(h["sharded"] for h in held) >= whole
    for h in held:
        assert h["whole"] == whole and h["sharded"] <= whole / WORLD * 1.05, held
        assert h["loaded"] < 0.01 * whole, held  # one element per placeholder
    assert held[0]["same_keys"] and held[0]["differ"] == [] and held[0]["layers"] > 0, held[0]


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


def test_how_a_base_to_be_sharded_loads(monkeypatch):
    """A base to be sharded under an adapter that reads no base values is built with placeholders (rank-local
    loading), on CPUs and GPUs; under one that does (DoRA), on GPUs it loads whole on the CPU in the GPU's dtype
    (FSDP then moves it unit by unit); in one process, on CPUs, or when nothing is sharded, loading is unchanged."""
    from tuneforge.config import config_from_dict, model_options
    from tuneforge.train.distributed import load_options

    def cfg(method="lora", **train):
        return config_from_dict({"model": {"name": "x", "device": "cpu"}, "method": {"name": method},
                                 "train": train})

    assert load_options(cfg(shard=True), 2) == {"deferred": True}
    assert load_options(cfg(shard=True), 2, defer=False) == {}
    assert load_options(cfg("dora", shard=True), 2) == {}  # a CPU run: nothing to move
    monkeypatch.setattr(model_options, "resolve_device", lambda device: torch.device("cuda", 0))
    monkeypatch.setattr(model_options, "resolve_dtype", lambda dtype, device: torch.bfloat16)
    assert load_options(cfg(cpu_offload=True), 2) == {"deferred": True}
    assert load_options(cfg("dora", shard=True), 2) == {"device": "cpu", "dtype": "bfloat16"}
    assert load_options(cfg("dora", cpu_offload=True), 2) == {"device": "cpu", "dtype": "bfloat16"}
    assert load_options(cfg(shard=True), 1) == {} and load_options(cfg(), 2) == {}
    with pytest.raises(ConfigError, match="train.cpu_offload.*one process"):  # nothing to offload in one process
        load_options(cfg(cpu_offload=True), 1)
