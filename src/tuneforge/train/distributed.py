"""Training on several processes with torch.distributed: one process per device (or per CPU share), launched by
torchrun, on one machine or many. In a single process every piece below is the identity.

The data. Each optimizer step's micro-batches come from the same `DataOrder` as a one-process run, built with a
*global* micro-batch of `micro_batch_size x world_size` examples; process r takes the r-th contiguous slice of
each. So W processes with micro-batch b see exactly the batches one process with micro-batch W*b sees, and the
position (epoch, index) a checkpoint holds is the same on every process: resume stays exact. When the last
micro-batch of an epoch holds fewer examples than there are processes, a process without one runs a stand-in
example whose loss is multiplied by zero, so every process runs the same forward and backward passes (sharded
training communicates inside them).

The loss. With N_r the targets on process r over all micro-batches of the step, every process divides its
summed loss by N = sum_r N_r (one all-reduce of the counts before the backward passes), and gradients are summed
over processes, not averaged:

    grad = sum_r sum_i d/dtheta [ loss_sum(b_{r,i}) / N ]

which is the one-process gradient of the whole global batch, token for token (averaging per process would weigh
the targets of a process with short rows more).

Two ways to spread the model, chosen from how much of it trains:
- replicate (DDP's algorithm: every process holds the whole model and the gradients are all-reduced), when at
  most half of the parameters train (LoRA and the other adapters). Only trainable gradients travel: one bucketed
  all-reduce per optimizer step, after all micro-batches (what DDP does under `no_sync` accumulation). We do it
  by hand instead of wrapping the model in `DistributedDataParallel` because DDP's reducer hooks need every
  forward to pass through the wrapper and every gradient to arrive exactly once per backward: tasks here call
  submodules directly (the SFT head loss), methods wrap forwards in per-batch contexts, and activation
  checkpointing re-runs forwards inside backward, which are the known causes of DDP's "Expected to have finished
  reduction in the prior iteration" failure with PEFT models. Synchronising once after backward cannot fail so.
- shard (FSDP2, `torch.distributed.fsdp.fully_shard`), when most parameters train (full fine-tuning): each
  transformer block and then the whole model is sharded, so parameters, gradients and AdamW moments are split over
  the processes (Zhao et al. 2023, https://arxiv.org/abs/2304.11277). Gradients are reduce-scattered as sums
  (divide factor 1, sum-only collectives, which gloo also runs). On CUDA with `train.bf16`, parameters are
  gathered in bf16 and gradients reduced in fp32 (`MixedPrecisionPolicy`). Checkpoints are written by every
  process with torch.distributed.checkpoint and load on any number of processes, one included.
  `train.shard: true` shards adapters' frozen base the same way (a 4-bit base too: its codes viewed as floats,
  quant/layers.py `shard_ready_4bit`), and `train.cpu_offload` keeps the shards in host memory
  (`CPUOffloadPolicy`); an adapter's checkpoints are then gathered on process 0 into the one-process files.

Only process 0 writes the metrics file, shows the progress bar, saves checkpoints' small files and the adapter.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError, TuneforgeError
from . import checkpoint as ckpt
from .report import Reporter

STAND_IN = "_tuneforge_stand_in"
SHARD_ABOVE = 0.5  # shard the model when more than this share of its parameters trains
BUCKET_BYTES = 32 * 2**20


class _QuietReporter(Reporter):
    """The reporter of processes other than 0: keeps the history (checkpoints carry it) but writes nothing."""

    def __init__(self, output_dir, history, total, initial, progress):
        self.output_dir = Path(output_dir)
        self.metrics_path = self.output_dir / "metrics.jsonl"
        self.plot_path = self.output_dir / "loss.png"
        self.history = list(history)

    def record(self, record: dict) -> None:
        self.history.append(record)

    def step(self, loss, lr, tokens_per_s) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class _RankTask:
    """The run's task as one process sees it: stand-in batches count no targets and add zero loss, and a sharded
    model's top-level parameters (embeddings, final norm, head) are gathered before the task computes, since tasks
    may call submodules directly instead of the model's forward (where FSDP would gather them itself)."""

    def __init__(self, task, par: Parallel):
        self._task, self._par = task, par

    def __getattr__(self, name):
        return getattr(self._task, name)

    def num_targets(self, batch: dict) -> int:
        return 0 if batch.get(STAND_IN) else self._task.num_targets(batch)

    def num_tokens(self, batch: dict) -> int:
        fn = getattr(self._task, "num_tokens", None)
        return 0 if fn is None or batch.get(STAND_IN) else fn(batch)

    def loss_sum(self, model: nn.Module, batch: dict) -> torch.Tensor:
        self._par.gather_top(model)
        if batch.get(STAND_IN):
            return self._task.loss_sum(model, {k: v for k, v in batch.items() if k != STAND_IN}) * 0.0
        return self._task.loss_sum(model, batch)

    def evaluate(self, model: nn.Module, batches) -> dict:
        self._par.gather_top(model)
        return self._task.evaluate(model, batches)


class Parallel:
    """One process's part in a data-parallel run (see the module docstring); `Parallel()` is a one-process run."""

    def __init__(self, rank: int = 0, world_size: int = 1):
        self.rank, self.world_size = rank, world_size
        self.sharded = False
        self.adapters = True  # at most SHARD_ABOVE of the parameters train: checkpoints of whole tensors
        self._originals: dict[str, nn.Parameter] = {}
        self._quantized: list[nn.Module] = []  # 4-bit layers made shardable (FSDP-QLoRA)
        self._hooks: list = []
        self.device: torch.device | None = None  # where a sharded model computes

    @classmethod
    def current(cls) -> Parallel:
        """This process's part in the process group, if one is initialised, else a one-process run."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def task(self, task):
        return task if self.world_size == 1 else _RankTask(task, self)

    def reporter(self, *args) -> Reporter:
        return (Reporter if self.is_main else _QuietReporter)(*args)

    def collate(self, task, examples: list, chunks: list[list[int]]) -> list[dict]:
        """This process's batches of one optimizer step: its slice of each global micro-batch (or a stand-in)."""
        batches = []
        for chunk in chunks:
            lo, hi = self.rank * len(chunk) // self.world_size, (self.rank + 1) * len(chunk) // self.world_size
            if hi > lo or self.world_size == 1:
                batches.append(task.collate([examples[i] for i in chunk[lo:hi]]))
            else:
                batches.append({**task.collate([examples[chunk[0]]]), STAND_IN: True})
        return batches

    def all_sum(self, value):
        """Sum of an int, float or tensor over all processes (the value itself in one process)."""
        if self.world_size == 1:
            return value
        tensor = torch.as_tensor(value, dtype=torch.float64, device=self._comm_device()).clone()
        dist.all_reduce(tensor)
        return tensor if isinstance(value, torch.Tensor) else type(value)(tensor.item())

    def agree(self, value):
        """Process 0's value, on every process (also a barrier: nobody goes on before process 0 got here)."""
        if self.world_size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _comm_device(self) -> torch.device:
        """Where collectives' own tensors live: NCCL moves only GPU tensors."""
        nccl = dist.get_backend() == "nccl"
        return torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer, cfg) -> None:
        """Replicate or shard the model (module docstring); called once the optimizer exists, before a resume."""
        from ..models.loader_deferred import deferred_of

        if self.world_size > 1:
            params = {id(p): p for p in model.parameters()}.values()
            trained = sum(p.numel() for p in params if p.requires_grad)
            self.adapters = trained <= SHARD_ABOVE * sum(p.numel() for p in params)
            shard = getattr(cfg, "shard", "auto")
            self.sharded = shard is True or (shard == "auto" and (not self.adapters or getattr(cfg, "cpu_offload",
                                                                                              False)))
        if deferred_of(model) is not None and not self.sharded:  # load_options defers only what setup shards
            raise TuneforgeError("a model loaded for rank-local sharding (placeholder weights) trains only sharded "
                                 "over several processes (train.shard: true)")
        if self.world_size == 1:
            return
        if self.sharded:
            self._shard(model, optimizer, cfg)
            return
        with torch.no_grad():  # the replicas start equal even where initialisation was not deterministic
            for p in (p for group in optimizer.param_groups for p in group["params"]):
                dist.broadcast(p.data, src=0)

    def _shard(self, model: nn.Module, optimizer: torch.optim.Optimizer, cfg) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import (
            CPUOffloadPolicy,
            FSDPModule,
            MixedPrecisionPolicy,
            OffloadPolicy,
            fully_shard,
        )

        from ..models.loader_deferred import deferred_of
        from ..quant.layers import reattach_quant_states, shard_ready_4bit

        deferred = deferred_of(model) is not None  # placeholders: each process reads its own shard below
        if deferred:
            _placeholders_to_meta(model, optimizer)
        device = self._comm_device()  # a base loaded into host memory (load_options) moves to the GPU shard by shard
        mesh = init_device_mesh(device.type, (self.world_size,))
        self.device = device
        bf16 = bool(getattr(cfg, "bf16", False)) and device.type == "cuda"
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
            else MixedPrecisionPolicy()
        offload = CPUOffloadPolicy(pin_memory=device.type == "cuda") if getattr(cfg, "cpu_offload", False) \
            else OffloadPolicy()
        # 4-bit codes stored as the frozen weights' float dtype (bf16 under mixed precision: never cast)
        frozen = next((p.dtype for p in model.parameters() if p.is_floating_point() and not p.requires_grad),
                      torch.float32)
        self._quantized = shard_ready_4bit(model, torch.bfloat16 if bf16 else frozen)
        self._originals = dict(model.named_parameters(remove_duplicate=False))
        whole = dict(self._originals)
        units = [*_blocks(model), model]
        for unit in units:
            fully_shard(unit, mesh=mesh, mp_policy=policy, offload_policy=offload)
            for name, p in list(whole.items()):  # free each unit's whole tensors at once: never all at the same time
                if model.get_parameter(name) is not p:
                    p.data = p.data.new_empty(0)  # the shards hold the values now; finish() puts them back
                    del whole[name]
        if deferred:
            self._read_shards(model, torch.bfloat16 if bf16 else frozen, offload)
        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.set_gradient_divide_factor(1.0)  # the loss is already normalised over all processes
                module.set_force_sum_reduction_for_comms(True)
        for unit in units:  # runs after FSDP's own pre-forward hook, which gathers the unit's weights
            ids = {id(m) for m in unit.modules()}
            layers = [layer for layer in self._quantized if id(layer) in ids]
            if layers:
                self._hooks.append(unit.register_forward_pre_hook(lambda *_, q=layers: reattach_quant_states(q)))
        # The model is the root even when a task never calls its forward (see _RankTask).
        model._get_fsdp_state()._lazy_init()
        sharded = dict(model.named_parameters(remove_duplicate=False))
        swap = {id(p): sharded[name] for name, p in self._originals.items()}
        for group in optimizer.param_groups:  # no step taken yet: the groups may still change their tensors
            group["params"] = [swap.get(id(p), p) for p in group["params"]]

    def _read_shards(self, model: nn.Module, storage: torch.dtype, offload) -> None:
        """Fill the meta shards of a rank-local model (models/loader_deferred.py) with this process's rows of each
        checkpoint tensor, cut as FSDP cut them (dim 0 in chunks of ceil(n / processes) rows, the last ones
        shorter or empty), so the process never holds more than its shard and one tensor in flight."""
        from torch.distributed.fsdp import CPUOffloadPolicy
        from torch.distributed.tensor import DTensor

        from ..models import loader_deferred

        owners: dict[int, list[tuple[nn.Module, str]]] = {}
        for module in model.modules():
            for attr, p in module._parameters.items():
                if p is not None:
                    owners.setdefault(id(p), []).append((module, attr))

        def rows(n: int) -> tuple[int, int]:
            size = -(-n // self.world_size)
            lo = min(self.rank * size, n)
            return lo, min(lo + size, n)

        local_device = torch.device("cpu") if isinstance(offload, CPUOffloadPolicy) else self.device
        for name, piece, state in loader_deferred.read_shards(model, rows, storage):
            old = model.get_parameter(name)
            if tuple(piece.shape) != tuple(old.to_local().shape):
                raise TuneforgeError(f"FSDP keeps rows of shape {tuple(old.to_local().shape)} of {name} on process "
                                     f"{self.rank}, rank-local loading read {tuple(piece.shape)}")
            local = DTensor.from_local(piece.to(local_device), old.device_mesh, old.placements, run_check=False,
                                       shape=old.shape, stride=old.stride())
            new = nn.Parameter(local, requires_grad=old.requires_grad)
            for module, attr in owners[id(old)]:  # a tied weight: every module that holds it
                module._parameters[attr] = new
            if state is not None:  # whole on every process, where the layer computes
                state.to(self.device)
                owners[id(old)][0][0].quant_state = state
        loader_deferred.finish(model)

    def gather_top(self, model: nn.Module) -> None:
        """Unshard the sharded model's own (top-level) parameters; FSDP reshards them after the backward pass."""
        if self.sharded:
            model.unshard()

    def reduce_gradients(self, params: list[nn.Parameter]) -> None:
        """Replicated run: sum the gradients of the trainable parameters over all processes, in buckets. A tensor
        that got no gradient on any process keeps none (AdamW then skips it, as in one process)."""
        if self.world_size == 1 or self.sharded:
            return
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=self._comm_device())
        dist.all_reduce(has)
        live = [p for p, n in zip(params, has.tolist()) if n > 0]
        for p in live:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        for bucket in _buckets([p.grad for p in live]):
            flat = torch._utils._flatten_dense_tensors(bucket)
            dist.all_reduce(flat)
            for grad, reduced in zip(bucket, torch._utils._unflatten_dense_tensors(flat, bucket)):
                grad.copy_(reduced)

    def grad_norm(self, norm) -> float:
        """clip_grad_norm_ returns a DTensor over sharded gradients: its value is the same on every process."""
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    def save_checkpoint(self, root, step, model, optimizer, scheduler, state, rng, keep_last) -> Path:
        """checkpoint.save_checkpoint for the whole group: every process's generator states; a sharded model's
        weights and optimizer state written by all processes (torch.distributed.checkpoint); process 0 writes the
        rest and renames the directory into place."""
        if self.world_size == 1:
            return ckpt.save_checkpoint(root, step, model, optimizer, scheduler, state, rng, keep_last)
        rngs = [None] * self.world_size
        dist.all_gather_object(rngs, rng)
        prepared = whole = None
        if self.sharded and not self.adapters:
            prepared = self.agree(ckpt.temp_dir(root, step) if self.is_main else None)
            save_sharded(prepared / ckpt.SHARDED, model, optimizer)
        elif self.sharded:  # adapters on a sharded base: a few MB, gathered into the one-process files
            whole = gather_trainable(model, optimizer, self.is_main)
        path = None
        if self.is_main:
            path = ckpt.save_checkpoint(root, step, model, optimizer, scheduler, state, rngs[0], keep_last,
                                        rank_rngs=rngs[1:], prepared=prepared, whole=whole)
        return self.agree(path)

    def load_checkpoint(self, path, model: nn.Module, optimizer, scheduler) -> dict:
        """Resume from what `save_checkpoint` wrote, on any number of processes: a sharded checkpoint (every
        process reads its part), or whole tensors into a replicated, sharded or one-process model. Returns the
        checkpoint's state.json; each process takes its own generator states (checkpoint.load_rest)."""
        path = Path(path)
        if (path / ckpt.SHARDED).is_dir():
            load_sharded(path / ckpt.SHARDED, model, optimizer)
        elif self.sharded:
            weights, optim = ckpt.read_whole(path, model)
            load_whole_sharded(weights, optim, model, optimizer)
        else:
            return ckpt.load_checkpoint(path, model, optimizer, scheduler, self.rank)
        return ckpt.load_rest(path, scheduler, self.rank)

    def finish(self, model: nn.Module) -> None:
        """After training a sharded model: gather its full weights into process 0's model and make that a plain
        module again (tensors back in place, FSDP's hooks and classes removed), so saving and exporting work as
        in one process. The other processes keep their shards and save nothing."""
        if not self.sharded:
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )
        from torch.distributed.fsdp import FSDPModule

        from ..models.loader_deferred import same_kind
        from ..quant.layers import unshard_ready_4bit

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        for hook in self._hooks:
            hook.remove()
        if not self.is_main:
            return
        rebuilt: dict[int, nn.Parameter] = {}  # rank-local loading left meta originals: new tensors of their kind
        for name, tensor in full.items():
            if name in self._originals:
                original = self._originals[name]
                if original.is_meta:
                    if id(original) not in rebuilt:
                        rebuilt[id(original)] = same_kind(original, tensor.to(device=self.device,
                                                                                dtype=original.dtype))
                    continue
                original.data = tensor.to(device=original.device, dtype=original.dtype)
        for name, original in list(self._originals.items()):
            self._originals[name] = rebuilt.get(id(original), original)
        for prefix, module in model.named_modules():
            for attr in list(module._parameters):
                original = self._originals.get(f"{prefix}.{attr}" if prefix else attr)
                if original is not None:
                    module._parameters[attr] = original
            if isinstance(module, FSDPModule):
                state = module._get_fsdp_state()
                state._pre_forward_hook_handle.remove()
                state._post_forward_hook_handle.remove()
                module.__class__ = next(c for c in type(module).__mro__ if not issubclass(c, FSDPModule))
        unshard_ready_4bit(self._quantized)
        self.sharded = False


def load_options(cfg, world_size: int, defer: bool = True) -> dict:
    """`load_model` overrides for a base that will be sharded (train.shard: true or cpu_offload, several
    processes). When the adapter's initialisation reads no base values (methods' `init_reads_base`), the base is
    built with placeholders and each process reads only its own shard in `Parallel.setup` (rank-local loading,
    models/loader_deferred.py). Otherwise, on GPUs, it is loaded whole into host memory, in the dtype the GPU would
    have given it, so that no GPU ever holds the whole base; `Parallel.setup` then moves each unit to the GPU,
    shards it and frees the rest, one unit at a time. Refuses cpu_offload in one process (before any weight is
    read): only a sharded model is offloaded."""
    from ..config.model_options import resolve_device, resolve_dtype

    train, model = cfg.train, cfg.model
    if world_size < 2 and train.cpu_offload:
        raise ConfigError("train.cpu_offload keeps the shards of a model sharded over several processes in host "
                          "memory, and this run has one process: launch it on several (--nproc N, or torchrun), "
                          "or set cpu_offload: false", key="train.cpu_offload")
    if world_size < 2 or not (train.shard is True or train.cpu_offload) or model.device_map is not None:
        return {}
    from ..methods.api import init_reads_base

    if defer and not init_reads_base(cfg.method):
        return {"deferred": True}
    target = resolve_device(model.device)
    if target.type != "cuda":
        return {}
    return {"device": "cpu", "dtype": str(resolve_dtype(model.dtype, target)).removeprefix("torch.")}


def _placeholders_to_meta(model: nn.Module, optimizer) -> None:
    """A rank-local model's placeholders become meta parameters for FSDP (models/loader_deferred.py `to_meta`); an
    optimizer that holds one (a trained base bias: LoRA's bias: all) gets the new one."""
    from ..models.loader_deferred import to_meta

    moved = to_meta(model)
    for group in optimizer.param_groups:
        group["params"] = [moved.get(id(p), p) for p in group["params"]]


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The units to shard one by one: the transformer blocks, i.e. the modules transformers declares unsplittable
    (`_no_split_modules`) that sit in a ModuleList. Embeddings, which a tied head shares, stay with the root."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    return [block for parent in model.modules() if isinstance(parent, nn.ModuleList) for block in parent
            if type(block).__name__ in names]


def _buckets(tensors: list[torch.Tensor]):
    """Consecutive runs of same-dtype tensors of about BUCKET_BYTES each, to all-reduce as one flat tensor."""
    bucket, size = [], 0
    for t in tensors:
        if bucket and (t.dtype != bucket[0].dtype or size >= BUCKET_BYTES):
            yield bucket
            bucket, size = [], 0
        bucket.append(t)
        size += t.numel() * t.element_size()
    if bucket:
        yield bucket


def save_sharded(directory: Path, model: nn.Module, optimizer) -> None:
    """The trainable weights and optimizer state, each process writing its shards (torch.distributed.checkpoint)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    weights, optim = get_state_dict(model, optimizer, options=StateDictOptions(ignore_frozen_params=True))
    dcp.save({"model": weights, "optimizer": optim}, checkpoint_id=directory)


def load_sharded(directory: Path, model: nn.Module, optimizer) -> None:
    """Load what `save_sharded` wrote into this model, sharded over any number of processes or whole in one."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_state_dict,
        set_state_dict,
    )

    options = StateDictOptions(ignore_frozen_params=True)
    weights, optim = get_state_dict(model, optimizer, options=options)
    state = {"model": weights, "optimizer": optim}
    try:
        with warnings.catch_warnings():  # one process reading a sharded checkpoint whole is intended
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, checkpoint_id=directory)
    except (CheckpointException, RuntimeError) as err:  # missing or mismatched keys
        raise TuneforgeError(f"checkpoint {directory.parent} does not fit this model ({err}); start fresh with "
                             "resume disabled (--no-resume)") from None
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=options)


def gather_trainable(model: nn.Module, optimizer, main: bool) -> tuple[dict, dict] | None:
    """The trainable weights and optimizer state of a sharded model as whole tensors on process 0, in the layout
    of a one-process checkpoint (optimizer state keyed by position in the param groups): (weights, state) there,
    None elsewhere. Every process must call it (it all-gathers)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    weights, optim = get_state_dict(model, optimizer, options=options)
    if not main:
        return None
    names = {id(p): n for n, p in model.named_parameters()}
    index = {names[id(p)]: i for i, p in enumerate(p for group in optimizer.param_groups for p in group["params"])}
    by_position = {
        "state": {index[name]: state for name, state in optim["state"].items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in optim["param_groups"]],
    }
    trained = {n for n, p in model.named_parameters() if p.requires_grad}  # not a tied frozen head's second name
    return {n: t.contiguous() for n, t in weights.items() if n in trained}, by_position


def load_whole_sharded(weights: dict, optim: dict, model: nn.Module, optimizer) -> None:
    """Load a checkpoint of whole tensors (a one-process run's trainable.safetensors + optimizer.pt, whose state is
    keyed by position in the param groups) into a sharded model: each process keeps its shards of them."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    by_name = {
        "state": {order[i]: state for i, state in optim["state"].items()},
        "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in optim["param_groups"]],
    }
    set_state_dict(model, optimizer, model_state_dict=weights, optim_state_dict=by_name,
                   options=StateDictOptions(full_state_dict=True, strict=False))
