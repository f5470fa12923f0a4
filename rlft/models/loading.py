"""Model and tokenizer loading: the embedded tiny models, a local HF folder, a GGUF file or a hub id."""

from __future__ import annotations

from pathlib import Path

import torch

from rlft.errors import UserError
from rlft.models.gguf import gguf_to_hf, is_gguf_path

EMBEDDED_MODEL_DIR = Path(__file__).parent / "tiny"
# model.path names of the shipped models: the default one (addition) and the one for data.source=scratchpad
EMBEDDED_MODELS = {"embedded": EMBEDDED_MODEL_DIR, "embedded:scratchpad": Path(__file__).parent / "scratchpad"}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_path(path: str) -> str:
    """'embedded' / 'embedded:scratchpad' -> a shipped model's folder; a GGUF file -> its converted HF folder; else as is."""
    if path in EMBEDDED_MODELS:
        folder = EMBEDDED_MODELS[path]
        if not (folder / "config.json").is_file():
            task = "" if path == "embedded" else " --task " + path.split(":")[1]
            raise UserError(
                f"the embedded model {path!r} is missing from {folder}; rebuild it with "
                f"`python scripts/make_tiny_model.py{task} --out {folder}` or reinstall rlft"
            )
        return str(folder)
    if is_gguf_path(path):
        return gguf_to_hf(path)
    return path


def load_tokenizer(model_cfg):
    """The tokenizer of `model_cfg.path`, with a pad token (EOS when the model has none)."""
    from transformers import AutoTokenizer

    path = resolve_model_path(model_cfg.path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code)
    except OSError as e:
        raise UserError(f"cannot load the tokenizer of model.path={model_cfg.path!r}: {e}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def context_length(model_cfg) -> int | None:
    """The model's context window in tokens (its config's max_position_embeddings), or None when unstated."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(resolve_model_path(model_cfg.path), trust_remote_code=model_cfg.trust_remote_code)
    except (OSError, ValueError):
        return None  # loading the model itself reports the problem
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def load_causal_lm(model_cfg, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The causal LM of `model_cfg.path` in `model_cfg.dtype` on `device`."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(model_cfg.path)
    kwargs = {"dtype": DTYPES[model_cfg.dtype], "trust_remote_code": model_cfg.trust_remote_code}
    if model_cfg.attn_implementation:
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:
        raise UserError(f"cannot load model.path={model_cfg.path!r}: {e}") from None
    return model.to(device)


def pick_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_model_weights(model: torch.nn.Module, folder: str | Path) -> None:
    """Load safetensors weights written by save_pretrained (one file or shards) into `model`."""
    from safetensors.torch import load_file

    folder = Path(folder)
    files = sorted(folder.glob("model*.safetensors"))
    if not files:
        raise UserError(f"no model*.safetensors in {folder}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    if isinstance(getattr(model, "_tied_weights_keys", None), dict):
        tied = set(model._tied_weights_keys)
    if unexpected or [k for k in missing if k not in tied]:
        raise UserError(f"weights in {folder} do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if missing and hasattr(model, "tie_weights"):
        model.tie_weights()
