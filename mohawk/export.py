"""``mohawk export``: a saved student -> a checkpoint that stock software loads without mohawk.

- ``granite-hybrid`` (the default where it applies): a student of a Llama-family teacher (Llama, Qwen2, Mistral,
  SmolLM2) whose replaced layers are ``mamba2`` mixers, pure or hybrid with attention layers anywhere, becomes a
  ``GraniteMoeHybridForCausalLM`` checkpoint (config.json, model.safetensors, tokenizer, generation_config.json): every
  block is norm -> Mamba-2 mixer (transformers' BambaMixer) or RoPE/GQA attention -> norm -> a dense gated MLP (the
  "shared" MLP, no experts); all Granite multipliers are 1 except ``attention_multiplier`` = 1 / sqrt(head_dim). Layer
  types are written with the names IBM's checkpoints use ("mamba", "attention"), which vLLM and llama.cpp's converter
  read and transformers 5 maps to its own. A pure student gains one pass-through attention layer at the end (zero
  weights: its attention and MLP add exactly 0), because transformers' GraniteMoeHybridModel builds an attention mask
  from the cache on every call and its hybrid cache refuses a model without attention layers (5.25: "`get_mask_sizes`
  can only be called on Attention layers, and the current Cache seem to only contain LinearAttention layers."); with
  it, generation keeps the recurrent cache. ``pass_through=False`` writes the all-Mamba form (transformers then
  generates without a cache).
- ``bamba``: the same students as a ``BambaForCausalLM`` (for engines that still serve Bamba, e.g. vLLM up to 0.23);
  a pure student runs without a cache there (``use_cache`` false), for the reason above.
- ``remote-code``: any student, as mohawk saves it, with its own modelling code (``trust_remote_code=True``).
- ``gguf``: one ``model.gguf`` that llama.cpp runs, for the Granite students without projection biases
  (mohawk.export_gguf).

Both stock forms compute the student's function (mohawk.mixers.mamba2 is BambaMixer's computation; blocks, norms, MLP,
RoPE and head map one to one); the export checks the logits of both on random tokens before it writes.

Writing is as safe as ``mohawk distill``'s: one writer per ``--out`` (mohawk.rundir's lock), the export is built in a
staging directory inside ``--out`` (same file system, also for a mount point, which is never deleted or re-created)
and moved into place file by file with config.json last, so an interrupted export never leaves a directory that
transformers loads; ``--overwrite`` removes only the files an earlier export listed in its marker; a student inside
``--out`` (or ``--out`` inside the student) is refused.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import torch

from mohawk.errors import MohawkError

FORMATS = ("auto", "granite-hybrid", "bamba", "remote-code", "gguf")
MARKER = ".mohawk-export"
STAGING = ".mohawk-export-staging"
SUPPORTED = "Llama-family teachers (llama, qwen2, mistral, SmolLM2) with mamba2 mixers (mohawk distill --mixer mamba2)"
# what an export written before the marker listed its files may hold (all that --overwrite removes for it)
_LEGACY = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)
_NAMES = {"granite-hybrid": "GraniteMoeHybrid", "bamba": "Bamba"}


def _unsupported(student, fmt: str) -> str | None:
    """Why ``student`` has no ``fmt`` form (None: it has one)."""
    c = student.config
    kinds = set(c.mixers) - {"attention"}
    teacher = getattr(c, "teacher_model_type", None)
    if teacher not in (None, "llama", "qwen2", "mistral"):
        return f"its teacher is a {teacher!r} model"
    if "heads" in kinds:
        return "it keeps attention heads inside replaced layers (a head-level hybrid: no stock layer mixes the two)"
    if kinds - {"mamba2"}:
        return f"its mixers are {', '.join(sorted(kinds - {'mamba2'}))}"
    if (c.block_type, c.norm_type, c.mlp_type, c.position_embedding) != ("sequential", "rmsnorm", "gated", "rope"):
        return f"its blocks are {c.block_type} / {c.norm_type} / {c.mlp_type} MLP / {c.position_embedding} positions"
    if c.hidden_act != "silu":
        return f"its MLP activation is {c.hidden_act} (one activation, SiLU, serves MLP and conv there)"
    if (c.num_attention_heads * c.head_dim) % c.hidden_size or c.head_dim != c.hidden_size // c.num_attention_heads:
        return "its heads x head_dim is not a multiple of hidden_size equal to it per head"
    if c.sliding_window:
        return "its attention uses a sliding window"
    if fmt == "granite-hybrid" and c.mlp_bias:
        return "its MLP has biases (GraniteMoeHybrid's shared MLP has none)"
    if fmt == "granite-hybrid" and (c.rotary_dim or c.head_dim) != c.head_dim:
        return "its RoPE is partial"
    return None


def _refuse(fmt: str, why: str):
    raise MohawkError(
        f"no {_NAMES[fmt]} export for this student: {why}; supported: {SUPPORTED} (--format remote-code "
        "exports any student)"
    )


def _common(student) -> dict:
    """The config fields Bamba and GraniteMoeHybrid share, read off the student."""
    c = student.config
    mixer = next((layer.mixer for layer in student.model.layers if c.mixers[layer.mixer.layer_idx] == "mamba2"), None)
    return dict(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads,
        hidden_act="silu",
        rms_norm_eps=c.norm_eps,
        max_position_embeddings=c.max_position_embeddings,
        tie_word_embeddings=bool(c.tie_word_embeddings),
        mamba_n_heads=c.num_attention_heads,
        mamba_d_head=c.head_dim,
        mamba_n_groups=mixer.num_groups if mixer else c.num_attention_heads,
        mamba_d_state=mixer.state_size if mixer else c.ssd_state_size,
        mamba_d_conv=c.ssd_conv_kernel,
        mamba_expand=c.num_attention_heads * c.head_dim // c.hidden_size,
        mamba_chunk_size=c.ssd_chunk_size,
        mamba_conv_bias=True,
        mamba_proj_bias=_proj_bias(student),
        attention_bias=bool(c.attention_qkv_bias or c.attention_out_bias),
        **{k: getattr(c, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id")},
    )


def _proj_bias(student) -> bool:
    """Whether any mamba2 mixer has an in_proj or out_proj bias (the stock layers have both or neither; the one
    it lacks is written as zeros)."""
    mixers = [
        layer.mixer for layer, kind in zip(student.model.layers, student.config.mixers, strict=True) if kind == "mamba2"
    ]
    return any(m.in_proj.bias is not None or m.out_proj.bias is not None for m in mixers)


def bamba_config(student):
    """The BambaConfig of ``student`` (a MohawkForCausalLM), or a MohawkError saying why it has no Bamba form."""
    from transformers import BambaConfig

    why = _unsupported(student, "bamba")
    if why:
        _refuse("bamba", why)
    rope_theta, rotary_dim = _rope(student)
    c = student.config
    return BambaConfig(
        intermediate_size=c.intermediate_size,
        attn_layer_indices=list(c.attention_layers or []),  # a list, never None: converters iterate it
        mlp_bias=bool(c.mlp_bias),
        rope_parameters={
            "rope_type": "default",
            "rope_theta": rope_theta,
            "partial_rotary_factor": rotary_dim / c.head_dim,
        },
        **_common(student),
    )


def granite_config(student, pass_through: bool = True):
    """The GraniteMoeHybridConfig of ``student``: its layers ("mamba" / "attention"), plus one pass-through attention
    layer at the end of a pure student when ``pass_through`` (see module docstring); MohawkError if it has none."""
    from transformers import GraniteMoeHybridConfig

    why = _unsupported(student, "granite-hybrid")
    if why:
        _refuse("granite-hybrid", why)
    rope_theta, _ = _rope(student)
    c = student.config
    types = ["attention" if kind == "attention" else "mamba" for kind in c.mixers]
    if pass_through and "attention" not in types:
        types.append("attention")
    common = _common(student)
    common["num_hidden_layers"] = len(types)
    return GraniteMoeHybridConfig(
        intermediate_size=c.intermediate_size,
        shared_intermediate_size=c.intermediate_size,
        num_local_experts=0,
        num_experts_per_tok=0,
        layer_types=types,
        position_embedding_type="rope",
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        embedding_multiplier=1.0,
        residual_multiplier=1.0,
        logits_scaling=1.0,
        attention_multiplier=c.head_dim**-0.5,
        **common,
    )


def _rope(student) -> tuple[float, int]:
    """(rope_theta, rotary_dim) that give the student's attention layers their inv_freq; MohawkError for a RoPE
    that the default form does not reproduce (e.g. Llama 3's frequency scaling)."""
    c = student.config
    rotary = c.rotary_dim or c.head_dim
    layers = [layer.mixer for layer in student.model.layers if c.mixers[layer.mixer.layer_idx] == "attention"]
    if not layers:
        return float(c.rope_theta), rotary
    inv = layers[0].inv_freq.detach().double().cpu()
    theta = float(inv[1] ** (-rotary / 2)) if inv.numel() > 1 else float(c.rope_theta)
    if abs(theta - float(c.rope_theta)) <= 1e-5 * float(c.rope_theta):  # inv_freq is float32: the configured value
        theta = float(c.rope_theta)
    want = 1.0 / theta ** (torch.arange(0, rotary, 2, dtype=torch.double) / rotary)
    if not torch.allclose(inv, want, rtol=1e-5) or getattr(c, "rope_attention_scaling", 1.0) != 1.0:
        raise MohawkError(
            "no stock export for this student: its teacher's RoPE is not the default form (scaled "
            "frequencies); use --format remote-code"
        )
    return round(theta, 6), rotary


_MAMBA = ("in_proj.weight", "conv1d.weight", "conv1d.bias", "dt_bias", "A_log", "D", "norm.weight", "out_proj.weight")


def _mixer_weights(
    sd: dict, kind: str, src: str, dst: str, attn: str, bias: bool, proj_bias: bool
) -> dict[str, torch.Tensor]:
    """One layer's mixer under the stock names: attention under ``dst + attn`` (``bias``: every projection carries
    one, zeros where the student has none), Mamba-2 under ``dst + "mamba."`` (``proj_bias``: in_proj and out_proj
    carry one, zeros where the student has none)."""
    out = {}
    m = src + "mixer."
    projections = ("q_proj", "k_proj", "v_proj", "o_proj") if kind == "attention" else ("in_proj", "out_proj")
    if kind != "attention":
        out.update({dst + f"mamba.{name}": sd[m + name] for name in _MAMBA})
        dst, bias = dst + "mamba.", proj_bias
    else:
        dst = dst + f"{attn}."
    for name in projections:
        w = sd[m + f"{name}.weight"]
        out[dst + f"{name}.weight"] = w
        if bias:
            out[dst + f"{name}.bias"] = sd.get(m + f"{name}.bias", w.new_zeros(w.shape[0]))
    return out


def bamba_state_dict(student, config) -> dict[str, torch.Tensor]:
    """The student's weights under BambaForCausalLM's names (biases Bamba has and the student lacks are zeros)."""
    sd = {k: v.detach() for k, v in student.state_dict().items()}
    out = {
        "model.embed_tokens.weight": sd["model.embed_tokens.weight"],
        "model.final_layernorm.weight": sd["model.norm.weight"],
        "lm_head.weight": sd["lm_head.weight"],
    }
    for i, kind in enumerate(student.config.mixers):
        src = dst = f"model.layers.{i}."
        out[dst + "input_layernorm.weight"] = sd[src + "norm1.weight"]
        out[dst + "pre_ff_layernorm.weight"] = sd[src + "norm2.weight"]
        for name in ("gate_proj", "up_proj", "down_proj"):
            for p in ("weight", "bias"):
                if src + f"mlp.{name}.{p}" in sd:
                    out[dst + f"feed_forward.{name}.{p}"] = sd[src + f"mlp.{name}.{p}"]
        out.update(_mixer_weights(sd, kind, src, dst, "self_attn", config.attention_bias, config.mamba_proj_bias))
    if config.tie_word_embeddings:
        out.pop("lm_head.weight")
    return out


def granite_state_dict(student, config) -> dict[str, torch.Tensor]:
    """The student's weights under GraniteMoeHybridForCausalLM's names: the MLP's gate and up rows stacked into the
    shared MLP's ``input_linear`` (gate first: it computes act(first half) * second half); a pass-through layer (see
    :func:`granite_config`) has unit norms and zero projections."""
    sd = {k: v.detach() for k, v in student.state_dict().items()}
    out = {
        "model.embed_tokens.weight": sd["model.embed_tokens.weight"],
        "model.norm.weight": sd["model.norm.weight"],
        "lm_head.weight": sd["lm_head.weight"],
    }
    h, n = config.hidden_size, config.num_hidden_layers
    kinds = list(student.config.mixers)
    for i in range(n):
        src = dst = f"model.layers.{i}."
        if i >= len(kinds):  # the pass-through attention layer
            ref = sd[f"model.layers.{len(kinds) - 1}.mlp.down_proj.weight"]
            z = ref.new_zeros
            kv = config.num_key_value_heads * h // config.num_attention_heads
            for name, shape in (("q_proj", (h, h)), ("k_proj", (kv, h)), ("v_proj", (kv, h)), ("o_proj", (h, h))):
                out[dst + f"self_attn.{name}.weight"] = z(shape)
                if config.attention_bias:
                    out[dst + f"self_attn.{name}.bias"] = z(shape[0])
            out[dst + "shared_mlp.input_linear.weight"] = z(2 * config.shared_intermediate_size, h)
            out[dst + "shared_mlp.output_linear.weight"] = z(h, config.shared_intermediate_size)
            out[dst + "input_layernorm.weight"] = ref.new_ones(h)
            out[dst + "post_attention_layernorm.weight"] = ref.new_ones(h)
            continue
        out[dst + "input_layernorm.weight"] = sd[src + "norm1.weight"]
        out[dst + "post_attention_layernorm.weight"] = sd[src + "norm2.weight"]
        out[dst + "shared_mlp.input_linear.weight"] = torch.cat(
            [sd[src + "mlp.gate_proj.weight"], sd[src + "mlp.up_proj.weight"]]
        )
        out[dst + "shared_mlp.output_linear.weight"] = sd[src + "mlp.down_proj.weight"]
        out.update(_mixer_weights(sd, kinds[i], src, dst, "self_attn", config.attention_bias, config.mamba_proj_bias))
    if config.tie_word_embeddings:
        out.pop("lm_head.weight")
    return out


def _build(cls, config, state: dict):
    model = cls(config).float().eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise MohawkError(
            f"internal: the {cls.__name__} weight map is incomplete (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    if config.tie_word_embeddings:
        model.tie_weights()
    return model


def to_bamba(student):
    """A BambaForCausalLM (float32, eval) computing what ``student`` computes."""
    from transformers import BambaForCausalLM

    config = bamba_config(student)
    model = _build(BambaForCausalLM, config, bamba_state_dict(student, config))
    if not config.attn_layer_indices:
        # transformers' hybrid cache sizes the attention mask through an attention layer and refuses a model without
        # one (see the module docstring): run and generate without a cache
        model.config.use_cache = False
        model.generation_config.use_cache = False
    return model


def to_granite(student, pass_through: bool = True):
    """A GraniteMoeHybridForCausalLM (float32, eval) computing what ``student`` computes."""
    from transformers import GraniteMoeHybridForCausalLM

    config = granite_config(student, pass_through)
    model = _build(GraniteMoeHybridForCausalLM, config, granite_state_dict(student, config))
    if "attention" not in config.layer_types and "full_attention" not in config.layer_types:
        model.config.use_cache = False
        model.generation_config.use_cache = False
    return model


def check_equal(student, exported, vocab: int, tol: float = 1e-4) -> float:
    """Max |logit difference| of the two models on random tokens (float32); MohawkError when both it and the relative
    difference ||a - b|| / ||a|| exceed ``tol``.

    The relative test is for real teachers: SmolLM2's residual stream reaches ~2e4, where float32 steps are ~2e-3, so
    attention computed by another kernel (the stock model's) moves logits by ~1e-3 (relative ~6e-6); a weight mapped
    wrong moves them by percents."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (2, 48), generator=g)
    s, e = student.float().eval(), exported.float().eval()
    with torch.no_grad():
        a = s(ids, use_cache=False).logits
        b = e(ids, use_cache=False).logits
    diff = float((a - b).abs().max())
    rel = float((a - b).norm() / a.norm().clamp_min(1e-30))
    if not (diff <= tol or rel <= tol):
        raise MohawkError(
            f"internal: the exported model's logits differ from the student's by {diff:.3g} (relative {rel:.2g}, "
            f"> {tol:g}); nothing kept"
        )
    return diff


def _for_engines(path: Path) -> None:
    """Rewrite config.json in the form IBM's checkpoints have, which vLLM, MLX, older transformers and llama.cpp's
    converter read: ``layer_types`` (GraniteMoeHybrid) named "mamba" / "attention" (transformers 5 maps them to its
    own names when it loads) and a top-level ``rope_theta`` beside ``rope_parameters``. Drops ``time_step_limit`` when
    it is the default (0, inf), which transformers writes as a non-standard JSON object."""
    cfg = json.loads(path.read_text())
    names = {"linear_attention": "mamba", "full_attention": "attention"}
    if cfg.get("layer_types"):
        cfg["layer_types"] = [names.get(t, t) for t in cfg["layer_types"]]
    cfg["rope_theta"] = cfg["rope_parameters"]["rope_theta"]
    limit = cfg.get("time_step_limit")
    if isinstance(limit, list) and limit[0] == 0.0 and isinstance(limit[1], dict):
        cfg.pop("time_step_limit")
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _inside(path: Path, parent: Path) -> bool:
    try:
        path.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def _read_marker(dest: Path) -> dict | None:
    try:
        info = json.loads((dest / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else {}


def _write_marker(dest: Path, info: dict) -> None:
    tmp = dest / (MARKER + ".tmp")
    tmp.write_text(json.dumps(info) + "\n")
    os.replace(tmp, dest / MARKER)


def _ours(dest: Path, marker: dict) -> list[Path]:
    """The files in ``dest`` an earlier export wrote (its marker's list; the usual names for an export whose marker
    lists none)."""
    names = marker.get("files")
    if not isinstance(names, list):
        names = [*_LEGACY, *(p.name for p in dest.glob("*.py"))]
    return [dest / n for n in names if isinstance(n, str) and "/" not in n and n not in ("", ".", "..")]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _move(src: Path, dst: Path) -> None:
    os.replace(src, dst)


def _disk_error(e: BaseException, dest: Path) -> MohawkError | None:
    """A MohawkError for a write the file system refused (full disk included: safetensors reports it as its own
    error type), else None."""
    text = str(e)
    if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left" in text or "StorageFull" in text:
        return MohawkError(f"no space left on the device of {dest}: the export was not written (nothing else changed)")
    if isinstance(e, OSError):
        where = f": {e.filename}" if e.filename else ""
        return MohawkError(f"cannot write the export into {dest}: {e.strerror or e}{where}")
    return None


def export(
    student_dir: str,
    out: str,
    fmt: str = "auto",
    overwrite: bool = False,
    pass_through: bool = True,
    vocab_gguf: str | None = None,
) -> dict:
    """Write ``student_dir``'s student into ``out`` in format ``fmt`` (``auto``: granite-hybrid when the student has
    that form, else bamba, else an error naming remote-code; ``gguf``: with the tokenizer of ``vocab_gguf``, see
    mohawk.export_gguf); returns what was checked and written."""
    from mohawk.models.loading import load_model
    from mohawk.rundir import LOCK, RunLock

    if fmt not in FORMATS:
        raise MohawkError(f"unknown --format {fmt!r}: use {', '.join(FORMATS)}")
    dest, src = Path(out).expanduser(), Path(student_dir).expanduser()
    if dest.exists() and not dest.is_dir():
        raise MohawkError(f"--out {dest} exists and is not a directory")
    if src.exists() and (_inside(src, dest) or _inside(dest, src)):
        raise MohawkError(
            f"--out {dest} and the student {src} lie one inside the other: the export must not write into its "
            "input; choose an --out outside the student's directory"
        )
    student, tokenizer = load_model(student_dir, "cpu", tokenizer=True)
    if getattr(student.config, "model_type", None) != "mohawk":
        raise MohawkError(f"{student_dir} is not a mohawk student (model_type {student.config.model_type!r})")
    student = student.float()
    if fmt == "auto":
        fmt = next((f for f in ("granite-hybrid", "bamba") if _unsupported(student, f) is None), "granite-hybrid")
    info: dict = {"format": fmt, "student": str(student_dir)}
    if fmt == "gguf":
        from mohawk import export_gguf

        export_gguf.require(student)
        vocab = export_gguf.resolve_vocab(vocab_gguf, tokenizer, student.config.vocab_size)
        model = student
    elif fmt == "remote-code":
        model = student
    else:
        model = to_granite(student, pass_through) if fmt == "granite-hybrid" else to_bamba(student)
        info["max_logit_difference"] = check_equal(student, model, student.config.vocab_size)
        info["architecture"] = type(model).__name__

    try:
        dest.mkdir(parents=True, exist_ok=True)  # an existing (empty) directory, a mount point, is kept as it is
    except OSError as e:
        raise MohawkError(f"cannot create --out {dest}: {e.strerror or e}") from None
    lock = RunLock(dest).acquire()
    staging = dest / STAGING
    try:
        marker = _read_marker(dest)
        theirs = [p for p in dest.iterdir() if p.name not in (LOCK, STAGING, MARKER, MARKER + ".tmp")]
        if marker is not None and marker.get("complete") is False:
            old = _ours(dest, marker)  # an interrupted export: never a usable model, replaced without asking
        elif theirs:
            if not overwrite:
                raise MohawkError(f"--out {dest} is not empty: pass --overwrite to replace an earlier export there")
            if marker is None:
                raise MohawkError(
                    f"--overwrite refused: {dest} does not hold a mohawk export (no {MARKER}); choose a new or "
                    "empty --out"
                )
            old = _ours(dest, marker)
        else:
            old = []
        _remove(staging)
        staging.mkdir()
        try:
            if fmt == "gguf":
                info.update(export_gguf.write(student, tokenizer, staging / "model.gguf", vocab))
            else:
                model.save_pretrained(staging)
                tokenizer.save_pretrained(staging)
            if fmt not in ("remote-code", "gguf"):
                _for_engines(staging / "config.json")
        except BaseException as e:
            _remove(staging)
            err = _disk_error(e, dest)
            if err is None:
                raise
            raise err from None
        new = sorted(p.name for p in staging.iterdir())
        for name in new:
            if (dest / name).exists() and dest / name not in old:
                _remove(staging)
                raise MohawkError(
                    f"the export would replace {dest / name}, which an earlier export did not write; move it out "
                    "of --out first"
                )
        # from here on --out is mid-change: the marker says so first, config.json leaves first and comes back last
        _write_marker(dest, {**info, "complete": False, "files": sorted({p.name for p in old} | set(new))})
        for path in sorted(old, key=lambda p: p.name != "config.json"):
            if path.name not in new or path.name == "config.json":
                _remove(path)
        for name in sorted(new, key=lambda n: n == "config.json"):
            _move(staging / name, dest / name)
        _write_marker(dest, {**info, "complete": True, "files": new})
        _remove(staging)
    except OSError as e:
        err = _disk_error(e, dest)
        raise (err or e) from None
    finally:
        lock.release()
    return info
