"""The typed run configuration. Plain data only (names, numbers, paths), so the same dataclasses feed YAML,
`--set` overrides, the resolved config written next to a run, and the docs. Each field's docstring is the
string right below it (the litgpt convention).

Relative paths (data files, output_dir) are kept as written and resolve against the current working
directory of the process that runs the config, not against the config file's folder.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal

from ..errors import ConfigError
from .data import DataConfig
from .eval import EvalSystem, EvalTask
from .hooks import EarlyStoppingConfig, WandbConfig, validate_hooks


@dataclasses.dataclass
class ModelConfig:
    name: str = "smollm2-135m-instruct"
    """Base model: a packaged alias (smollm2-135m-instruct, all-minilm-l6-v2), a local directory, a .gguf file
    or a Hugging Face hub id."""

    kind: Literal["causal-lm", "encoder", "sequence-classification", "image-classification"] = "causal-lm"
    """Which head to load: causal-lm (generation), encoder (bare encoder for embeddings),
    sequence-classification (a new, randomly initialised classifier head with num_labels outputs) or
    image-classification (a vision model: ViT, ResNet, ConvNeXt...; a stored head of another size is replaced)."""

    dtype: Literal["float32", "bfloat16", "float16", "float64", "auto"] = "auto"
    """Weight dtype. auto = bfloat16 on a CUDA GPU that supports it, else float32 (bf16 is slower on CPU).
    float64 is for numerical checks: rounding far below any tolerance, whatever the kernels' summation order."""

    device: str = "auto"
    """auto (cuda, then mps, then cpu), or a torch device string such as cpu or cuda:1."""

    num_labels: int | None = None
    """Classes of the classifier head; only for kinds sequence-classification and image-classification."""

    quantization: Literal["nf4", "fp4", "int8"] | None = None
    """Store the base model's Linear weights in 4-bit (nf4, fp4) or 8-bit (int8) through bitsandbytes, for QLoRA;
    null keeps them dense in `dtype`. Embeddings and the output head stay dense."""

    double_quant: bool = True
    """4-bit only: quantise the per-block absmax constants as well (QLoRA's double quantisation)."""

    compute_dtype: Literal["auto", "float32", "bfloat16", "float16", "float64"] = "auto"
    """dtype quantised weights are dequantised into for each matmul; auto = the model's dtype."""

    device_map: str | int | dict | None = None
    """Where the weights go, for models bigger than one device: auto (split over the GPUs, then CPU, sized by
    max_memory), one device (cuda:1), or {module prefix: device} such as {model.embed_tokens: 0, model.layers: 1,
    "": 1}. null: the whole model on `device`. Set device or device_map, not both."""

    max_memory: dict | None = None
    """With device_map auto: the most each device may hold, e.g. {0: 20GiB, 1: 20GiB, cpu: 60GiB}."""

    attn_implementation: Literal["auto", "sdpa", "flash_attention_2", "flex_attention", "eager"] = "auto"
    """Attention kernel: auto (sdpa; packed rows attend per example on CPU and through flash-attn's varlen kernel
    on CUDA when flash-attn is installed), sdpa, flash_attention_2 (CUDA, bf16/fp16, needs flash-attn),
    flex_attention (block-sparse document masks) or eager."""

    revision: str | None = None
    """A hub model's branch, tag or commit; pin it so a run can be repeated."""

    trust_remote_code: bool = False
    """Run Python code shipped in a hub model's repository (some architectures need it). Off: read it first."""

    rope_scaling: dict | None = None
    """RoPE scaling for a longer context than the model was trained on, passed into the model config, e.g.
    {rope_type: yarn, factor: 4.0, original_max_position_embeddings: 8192}; rope_type is linear, dynamic, yarn,
    longrope or llama3."""

    allow_pickle: bool = False
    """Also load weights stored as pickles (pytorch_model.bin, adapter_model.bin). Unpickling can run code from
    the file, so this is off: such files are refused with a hint to use safetensors."""

    def validate(self) -> None:
        from .model_options import check_model_options

        check_model_options(device=self.device, device_map=self.device_map, max_memory=self.max_memory,
                            attn_implementation=self.attn_implementation, quantization=self.quantization,
                            dtype=self.dtype, rope_scaling=self.rope_scaling)
        if self.num_labels is not None and self.kind not in ("sequence-classification", "image-classification"):
            raise ConfigError("num_labels only applies to kinds sequence-classification and image-classification",
                              key="num_labels")
        if self.num_labels is not None and self.num_labels < 1:
            raise ConfigError("num_labels must be at least 1", key="num_labels")


@dataclasses.dataclass
class TrainConfig:
    epochs: int = 1
    """Passes over the training set (ignored when max_steps is set)."""

    max_steps: int | None = None
    """Stop after this many optimizer steps; overrides epochs."""

    micro_batch_size: int = 4
    """Rows per forward/backward pass; lower it when memory is short."""

    grad_accum_steps: int = 1
    """Micro-batches per optimizer step: the effective batch is micro_batch_size x grad_accum_steps. The loss is
    normalised over all target tokens of the step, so accumulation gives the same update as one big batch."""

    group_by_length: int = 0
    """0: each micro-batch is a random slice of the shuffled data. W >= 1: each window of W micro-batches of the
    shuffled data is sorted by example length and its micro-batches are shuffled again, so rows of like length are
    padded together (W = 8: SST-2's padded positions fall from 2.0x to 1.15x the real tokens; see
    train/length_groups.py). Costs less per step; micro-batches become more alike in length."""

    learning_rate: float = 2e-4
    """Peak AdamW learning rate (after warmup)."""

    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""

    head_learning_rate: float | None = None
    """Peak learning rate of a new task head (classifier / score / qa_outputs), which starts random while the
    rest starts pre-trained; e.g. 20x learning_rate. null: the head uses learning_rate. See train/lr_groups.py."""

    layer_lr_decay: float | None = None
    """Layer-wise learning-rate decay d in (0, 1]: block i of L (0 = nearest the input) trains at
    learning_rate * d^(L - i), the embeddings at d^(L + 1), what sits above the blocks at learning_rate
    (typical d: 0.8-0.95). null: one rate for all."""

    ema_decay: float | None = None
    """Keep an exponential moving average of the trained weights (decay d in (0, 1), e.g. 0.999; warmed up as
    min(d, (1 + t) / (10 + t)) at step t) and evaluate and save it instead of the last step's weights; each
    evaluation also logs the live weights' metrics as live_<metric>. One extra copy of the trained weights in
    memory. null: off. See train/ema.py."""

    warmup_steps: int = 0
    """Linear warmup from 0 to learning_rate over this many steps (takes precedence over warmup_ratio)."""

    warmup_ratio: float = 0.0
    """Warmup as a fraction of the total steps, used when warmup_steps is 0."""

    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """How the learning rate decays after warmup: cosine or linear to 0, or constant."""

    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this value; null disables clipping."""

    bf16: bool = False
    """Autocast forward passes to bfloat16 (useful on GPUs; slower than fp32 on CPUs without AMX)."""

    gradient_checkpointing: bool | Literal["elementwise"] = False
    """Recompute activations in the backward pass. true: whole blocks (least memory, about 25% slower);
    elementwise (selective checkpointing): keep matmul and attention outputs, recompute only the elementwise work
    between them (norms, rotary embedding, activation), which costs little time."""

    gradient_checkpointing_layers: int | None = None
    """With gradient_checkpointing on, recompute only the first this many blocks and let the rest keep their
    activations: a dial between memory and speed (each block left out costs its activations, ~30 MB per 1k tokens
    on SmolLM2-135M, and saves its share of the recompute). null: every block."""

    recompute_norms: bool = True
    """Keep each block's norm inputs only and recompute the norm outputs in backward (bit-identical gradients,
    ~15% less activation memory with LoRA on every projection). Off under compile, which decides this itself."""

    release_memory: bool = False
    """On CPU runs, give freed activation buffers back to the operating system at once (glibc's malloc mmap
    threshold fixed at 1 MiB, train/memory.py): 0.3-0.7 GB less peak RSS on SmolLM2 at 4 x 256 tokens, the same
    maths, but every fresh buffer is faulted in, which cost up to a third more CPU time a step on a busy 2-core
    machine: a memory dial, off by default."""

    base_matmul_dtype: Literal["model", "bfloat16"] = "model"
    """dtype of the frozen base weights' matmuls in the fused LoRA layers and SwiGLU MLPs. model: the model's
    dtype. bfloat16 (opt-in, a change of maths): a bf16 copy of each adapted frozen weight multiplies the
    activations rounded to bf16, accumulating in fp32; activations, adapters, gradients, optimizer and the output
    head stay fp32. About 2x faster GEMMs on CPUs with AVX512-BF16 or AMX (slower on CPUs without), +2 bytes per
    adapted weight; losses move by ~1e-3 (docs/performance.md). Needs an fp32 model, no quantization, no compile
    or bf16 autocast."""

    compile: bool = False
    """torch.compile each repeated block of the model (its decoder layers) before training: fuses the elementwise
    work between matmuls; the first steps pay the compile time (minutes on a small CPU)."""

    shard: bool | Literal["auto"] = "auto"
    """Several processes only (torchrun, --nproc): true shards the model over them with FSDP2, the frozen base
    under adapters included (a 4-bit base too: FSDP-QLoRA), so each holds 1/N of the weights; false replicates
    it (every process holds the whole model); auto shards when most parameters train (method: full) and
    replicates adapters. Ignored in one process. See docs/distributed.md for what fits where."""

    cpu_offload: bool = False
    """Shard the model (with shard: auto too) and keep the shards, their gradients and the optimizer step in CPU
    memory and bring each block to the device only for its forward and backward (FSDP2's
    CPUOffloadPolicy): the device then holds about one gathered block, the adapters' working set and the
    activations; slower, as every step moves the weights over PCIe. Several processes only (refused in one)."""

    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit"] = "adamw"
    """adamw (torch), or bitsandbytes' AdamW with 8-bit states (adamw_8bit) or paged 8-bit states (paged_adamw_8bit,
    which spill to CPU RAM under GPU memory pressure)."""

    eval_every: int | None = None
    """Evaluate on the validation set every N optimizer steps (and at the end); null = only at the end."""

    eval_batches: int | None = None
    """Cap on validation batches per evaluation; null = the whole validation set."""

    save_every: int | None = None
    """Write a resumable checkpoint every N optimizer steps; null = only at the end."""

    keep_last: int = 2
    """How many step checkpoints to keep on disk (older ones are deleted)."""

    seed: int = 42
    """Seed for adapter initialisation, data order and dropout, so a run can be reproduced."""

    log_every: int = 1
    """Log loss, learning rate and throughput every N optimizer steps."""

    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = dataclasses.field(default_factory=list)
    """Experiment trackers that get the metrics.jsonl lines too (process 0 only): tensorboard (event files under
    output_dir/tensorboard, tags train/loss, train/learning_rate, train/grad_norm, train/tokens_per_s,
    eval/<metric>), mlflow (params = the resolved config), wandb. Needs the `track` extra installed."""

    mlflow_tracking_uri: str | None = None
    """Where MLflow logs (any MLflow tracking URI: http://host:5000, sqlite:///path.db, databricks). null =
    MLFLOW_TRACKING_URI when set, else the local SQLite store output_dir/mlflow.db (MLflow 3's default backend;
    `mlflow ui` inside output_dir shows it)."""

    mlflow_experiment: str = "tuneforge"
    """MLflow experiment name the run is filed under."""

    wandb: WandbConfig = dataclasses.field(default_factory=WandbConfig)
    """Weights & Biases project, run name, tags and mode (offline unless configured)."""

    callbacks: list[str] = dataclasses.field(default_factory=list)
    """User hooks, each 'module:Class' (importable; built without arguments). Optional methods:
    on_step(step, logs), on_eval(step, metrics), on_save(step, path); on_step/on_eval returning True stop training."""

    early_stopping: EarlyStoppingConfig | None = None
    """Stop when an eval metric has not improved for `patience` evaluations: {metric, patience, mode, min_delta}."""

    save_best: str | None = None
    """Eval metric whose best value's weights are kept in output_dir/best and restored at the end, so the saved
    adapter is the best one seen (Hugging Face's load_best_model_at_end). Needs eval_every."""

    save_best_mode: Literal["auto", "min", "max"] = "auto"
    """Whether lower (min) or higher (max) save_best values are better; auto: min for losses/perplexity/error."""

    init_adapter: str | None = None
    """Start the adapter from the weights saved in this folder (a run's adapter/ directory) instead of a fresh
    initialisation: train an adapter further on new data, e.g. a second round of on-policy DPO on pairs sampled
    from the first round's model (`tuneforge best-of-n --adapter`). The saved adapter must match `method`
    (type, rank, targets...); DPO/KTO's reference stays the base model (adapter disabled). null = fresh."""

    neftune_noise_alpha: float | None = None
    """NEFTune: add uniform noise of scale alpha/sqrt(L*d) to the input embeddings while training (L: padded
    sequence length, d: hidden size), as TRL/transformers do; 5 is the paper's usual value. null = off."""

    def validate(self) -> None:
        positive = ("epochs", "micro_batch_size", "grad_accum_steps", "log_every", "keep_last")
        for key in positive:
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be at least 1", key=key)
        for key in ("max_steps", "eval_every", "eval_batches", "save_every"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"{key} must be at least 1 (or null)", key=key)
        if self.group_by_length < 0:
            raise ConfigError("group_by_length must not be negative (0 = off)", key="group_by_length")
        if self.learning_rate <= 0:
            raise ConfigError("learning_rate must be positive", key="learning_rate")
        if self.weight_decay < 0:
            raise ConfigError("weight_decay must not be negative", key="weight_decay")
        if self.head_learning_rate is not None and not self.head_learning_rate > 0:
            raise ConfigError("head_learning_rate must be positive (or null to use learning_rate)",
                              key="head_learning_rate")
        if self.layer_lr_decay is not None and not 0 < self.layer_lr_decay <= 1:
            raise ConfigError("layer_lr_decay must be in (0, 1] (or null for no decay)", key="layer_lr_decay")
        if self.ema_decay is not None and not (isinstance(self.ema_decay, (int, float)) and 0 < self.ema_decay < 1):
            raise ConfigError(f"ema_decay must be in (0, 1) (or null for no average), got {self.ema_decay!r}",
                              key="ema_decay")
        if self.warmup_steps < 0:
            raise ConfigError("warmup_steps must not be negative", key="warmup_steps")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError("warmup_ratio must be in [0, 1)", key="warmup_ratio")
        if self.gradient_checkpointing_layers is not None:
            if self.gradient_checkpointing_layers < 0:
                raise ConfigError("gradient_checkpointing_layers must not be negative (or null for every block)",
                                  key="gradient_checkpointing_layers")
            if not self.gradient_checkpointing:
                raise ConfigError("gradient_checkpointing_layers needs gradient_checkpointing: true or elementwise",
                                  key="gradient_checkpointing_layers")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ConfigError("max_grad_norm must be positive (or null to disable clipping)", key="max_grad_norm")
        if self.base_matmul_dtype == "bfloat16" and (self.compile or self.bf16):
            raise ConfigError("base_matmul_dtype: bfloat16 applies to the eager fp32 step; it cannot be combined "
                              f"with {'compile' if self.compile else 'bf16'}: true", key="base_matmul_dtype")
        if self.cpu_offload and self.shard is False:
            raise ConfigError("cpu_offload offloads the shards of a sharded model, and shard: false replicates it; "
                              "set shard: true or auto, or cpu_offload: false", key="cpu_offload")
        validate_hooks(self)


@dataclasses.dataclass
class EvalConfig:
    num_samples: int = 16
    """Validation prompts to generate replies for when scoring generation metrics."""

    max_new_tokens: int = 64
    """Longest generated reply, in tokens."""

    metrics: list[str] = dataclasses.field(default_factory=lambda: ["rouge"])
    """Metrics to report (e.g. rouge, bleu, accuracy, f1, perplexity)."""

    tasks: list[EvalTask] = dataclasses.field(default_factory=list)
    """Tasks `tuneforge eval` scores (data + prompt template + metrics); none = the run's validation data."""

    systems: list[EvalSystem] = dataclasses.field(default_factory=list)
    """Rows of the results table (zero-shot, few-shot, adapters); none = the base model zero-shot, plus the
    run's trained adapter (output_dir/adapter) when it exists."""

    probes: list[EvalTask] = dataclasses.field(default_factory=list)
    """Abilities the base model already has, scored before and after fine-tuning (`tuneforge forgetting`)."""

    batch_size: int = 8
    """Prompts per generation / scoring batch."""

    do_sample: bool = False
    """Sample replies (with temperature and top_p) instead of greedy decoding."""

    temperature: float = 1.0
    """Sampling temperature (with do_sample)."""

    top_p: float = 1.0
    """Nucleus sampling mass (with do_sample)."""

    seed: int = 0
    """Seed for the scored subsets, random demonstrations and sampling."""

    encoder: str = "all-minilm-l6-v2"
    """Sentence encoder that embeds prompts to retrieve few-shot demonstrations (mean pooling, L2 norm)."""

    def validate(self) -> None:
        if self.num_samples < 0:
            raise ConfigError("num_samples must not be negative", key="num_samples")
        if self.max_new_tokens < 1:
            raise ConfigError("max_new_tokens must be at least 1", key="max_new_tokens")
        if self.batch_size < 1:
            raise ConfigError("batch_size must be at least 1", key="batch_size")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ConfigError("temperature must be positive and top_p in (0, 1]", key="temperature")
        for key in ("tasks", "systems", "probes"):
            names = [item.name for item in getattr(self, key)]
            if len(set(names)) != len(names):
                raise ConfigError(f"{key} names must be unique, got {names}", key=key)


@dataclasses.dataclass
class RunConfig:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    """The base model to adapt."""

    method: Any = None
    """The adaptation method: a MethodConfig built by tuneforge.methods.make_method_config from the YAML
    section `method: {name: lora, r: 8, ...}`; LoRA with its defaults when the section is absent."""

    task: str = "sft"
    """Training objective, by registered task name (sft, classify, embed, reward, dpo, ppo). In YAML either a
    name or a mapping with the task's own settings: `task: {name: dpo, beta: 0.1}`."""

    task_config: Any = None
    """The task's validated settings (its `config_class`), built from the `task` mapping; None for tasks
    without settings. Not written in YAML directly."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    """Training and validation data and how it becomes token sequences."""

    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    """Optimisation: steps, batch sizes, learning-rate schedule, checkpoints."""

    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    """What evaluation generates and measures."""

    output_dir: str = "runs/default"
    """Where the adapter, checkpoints, logs and the resolved config are written (relative to the working dir)."""
