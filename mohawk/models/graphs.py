"""CUDA graphs for decoding: the recurrent step of a student, captured once and replayed.

A decoding step of a 30-layer student is a few hundred small kernels. Launched one by one from Python it takes tens of
milliseconds whatever the GPU (the step is launch-bound); replayed as one CUDA graph it costs about what the kernels
themselves cost. A graph replays fixed memory addresses, so a :class:`DecodeGraph` owns static buffers for the token,
its position, every SSD layer's (conv window, SSM state) and every attention layer's static KV cache
(``MohawkCache.kv_capacity``), and the layers update them in place (``MohawkCache.static``). The cache being decoded
*adopts* the buffers (its state tensors become them); when another cache takes the graph over, the previous one gets
copies back, so two generations never share state.

A graph runs ``steps`` decoding steps per replay: after each, the next token is chosen on the device (argmax, or a
sample) and written into the next step's input, so the host sees the tokens only once per block
(:func:`generate_fast`). Students whose attention layers keep a growing KV cache decode eagerly. The model keeps one
graph per (batch size, state layout, autocast, steps, sampling) and recaptures when its parameters move (``.to()``,
reloading).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
import weakref

import torch
from torch import Tensor

from mohawk.mixers.attention import Attention
from mohawk.mixers.kernels.decode_matvec import fuses_decode_batch
from mohawk.mixers.ssd import SSDMixer
from mohawk.models.cache import MohawkCache

_GRAPHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (parameter addresses, {key: graph})
_COMPILED: dict[tuple[type, str], object] = {}  # (module class, method) -> torch.compile'd, shared by instances


def graphs_supported(device: torch.device) -> bool:
    """Whether a step on ``device`` can be captured (CUDA only; tests patch this to run the logic on CPU)."""
    return device.type == "cuda"


def state_signature(cache) -> tuple:
    """What a graph's static buffers must match: per layer, the dtype and shape of the conv window and SSM state, or
    of the static KV cache's keys and values."""
    return tuple(
        (kind, i, a.dtype, tuple(a.shape), b.dtype, tuple(b.shape))
        for kind, d in (("ssm", cache.ssm), ("kv", cache.kv))
        for i, (a, b) in sorted(d.items())
    )


def choose_tokens(logits: Tensor, sampling: tuple | None) -> Tensor:
    """The next token (batch,) from logits (batch, vocab), on the device: argmax when ``sampling`` is None, else a
    sample at ``sampling = (temperature, top_k)`` (top_k 0: the whole vocabulary), drawn as argmax(p / E) with
    E ~ Exp(1) i.i.d., which is distributed as p and needs no host value (capturable)."""
    if sampling is None:
        return logits.argmax(-1)
    temperature, top_k = sampling
    logits = logits.float() / temperature
    if top_k:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1)
    return (probs / torch.empty_like(probs).exponential_()).argmax(-1)


class DecodeGraph:
    """``steps`` decoding steps of ``model`` (a MohawkForCausalLM) on static buffers shaped like ``cache``'s state.

    ``steps == 1``: ``run(cache, input_ids (batch, 1), position (int)) -> logits (batch, 1, vocab)`` advances
    ``cache`` by one token, exactly as the eager step would (the same kernels, replayed).
    ``run_block(cache, input_ids (batch, 1), position) -> tokens (batch, steps)``: ``steps`` steps, each feeding the
    token it chose (``choose_tokens(logits, sampling)``) to the next, without the host in between."""

    def __init__(self, model, cache, capture: bool = True, steps: int = 1, sampling: tuple | None = None):
        self.model = weakref.ref(model)  # the model holds its graphs (through _GRAPHS), not the other way round
        self.compiled = bool(getattr(model.config, "decode_compile", False)) and capture
        any_state = next(iter([*cache.ssm.values(), *cache.kv.values()]))[1]
        batch, device = any_state.shape[0], any_state.device
        self.batch_device = (batch, device)
        self.steps, self.sampling = steps, sampling
        self.buffers = MohawkCache(kv_capacity=cache.kv_capacity)
        self.buffers.static = True
        self.buffers.ssm = {i: (c.clone(), s.clone()) for i, (c, s) in cache.ssm.items()}
        self.buffers.kv = {i: (k.clone(), v.clone()) for i, (k, v) in cache.kv.items()}
        self.ids = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.tokens = torch.zeros(batch, steps, dtype=torch.long, device=device)
        self.owner: weakref.ref | None = None
        self.graph = None
        self.logits: Tensor | None = None
        if capture:
            self._capture(device)

    def _capture(self, device: torch.device) -> None:
        # warm-up on a side stream (lazy initialisations, cuBLAS workspaces, torch.compile), then capture; both only
        # touch the graph's own buffers, whose contents are replaced when a cache adopts them
        with torch.cuda.device(device):
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                try:
                    for _ in range(2):
                        with self._compiled():
                            self._body()
                except Exception as e:  # noqa: BLE001 - any compiler failure: the step runs uncompiled
                    if not self.compiled:
                        raise
                    warnings.warn(f"torch.compile of the decoding step failed, uncompiled: {e!r}", stacklevel=2)
                    self.compiled = False
                    for _ in range(2):
                        self._body()
            torch.cuda.current_stream().wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with self._compiled(), torch.cuda.graph(self.graph):
                self.logits = self._body()

    @contextlib.contextmanager
    def _compiled(self):
        """While open, and when ``self.compiled``: the blocks' norms and MLPs run their torch.compile'd forward, and
        the attention layers their projections + RoPE (``_qkv``) and one-token attention (``_attend_one``) compiled,
        and the SSD mixers with an output norm their norm + out_proj after the fused step (``_finish_gated``; the norm
        alone, ``_out_input``, where the step takes the fused matvec kernels) (elementwise chains fused into a few
        kernels; the KV writes, the mixers' cached steps and the fused matvec kernels stay eager)."""
        if not self.compiled:
            yield
            return
        model = self.model()
        parts = [(model.model.norm, "forward")] + [
            (m, "forward")
            for layer in model.model.layers
            for m in (getattr(layer, n, None) for n in ("norm1", "norm2", "post_mixer_norm", "post_mlp_norm", "mlp"))
            if m is not None
        ]
        parts += [(m, name) for m in model.modules() if isinstance(m, Attention) for name in ("_qkv", "_attend_one")]
        # a mixer's output norm after the fused step (mamba2's grouped RMSNorm: ~7 elementwise kernels a layer eager);
        # with the fused matvec kernels the norm alone, out_proj being a Triton kernel with the residual add
        finish = "_out_input" if fuses_decode_batch(*self.batch_device) else "_finish_gated"
        parts += [(m, finish) for m in model.modules() if isinstance(m, SSDMixer) and m.norm is not None]
        for m, name in parts:
            key = (type(m), name)
            if key not in _COMPILED:
                _COMPILED[key] = torch.compile(getattr(type(m), name), dynamic=False)
            setattr(m, name, functools.partial(_COMPILED[key], m))
        try:
            yield
        finally:
            for m, name in parts:
                m.__dict__.pop(name, None)

    @staticmethod
    def param_pointers(model) -> tuple[int, ...]:
        return tuple(p.data_ptr() for p in model.parameters())

    def _step(self) -> Tensor:
        model = self.model()
        h, _ = model.model(input_ids=self.ids, position_ids=self.pos, cache=self.buffers)
        return model.lm_head(h)

    def _body(self) -> Tensor:
        """What the graph holds: one step returning its logits, or ``steps`` steps choosing their tokens."""
        if self.sampling == "logits":
            return self._step()
        for i in range(self.steps):
            token = choose_tokens(self._step()[:, -1], self.sampling)
            self.tokens[:, i] = token
            self.ids.copy_(token[:, None])
            self.pos.add_(1)
        return self.tokens

    def owns(self, cache) -> bool:
        """Whether ``cache``'s state tensors are this graph's buffers (then the replay continues it)."""
        if self.owner is None or self.owner() is not cache:
            return False
        return all(
            getattr(cache, d)[i][0] is a and getattr(cache, d)[i][1] is b
            for d in ("ssm", "kv")
            for i, (a, b) in getattr(self.buffers, d).items()
        )

    def adopt(self, cache) -> None:
        """Make ``cache``'s state live in the buffers; the previous owner keeps a copy of its state."""
        previous = self.owner() if self.owner is not None else None
        for d in ("ssm", "kv"):
            mine = getattr(self.buffers, d)
            if previous is not None and previous is not cache:
                theirs = getattr(previous, d)
                for i, (a, b) in mine.items():
                    if theirs.get(i, (None, None))[0] is a:
                        theirs[i] = (a.clone(), b.clone())
            states = getattr(cache, d)
            for i, (a, b) in mine.items():
                a_new, b_new = states[i]
                if a_new is not a:
                    a.copy_(a_new)
                    b.copy_(b_new)
                states[i] = (a, b)
        self.owner = weakref.ref(cache)

    def _replay(self, cache, input_ids: Tensor, position: int) -> None:
        cache.check_capacity(position + self.steps)
        if not self.owns(cache):
            self.adopt(cache)
        self.ids.copy_(input_ids)
        self.pos.fill_(position)
        if self.graph is not None:
            self.graph.replay()
        else:  # no capture (CPU tests): the same steps on the same buffers, run eagerly
            self.logits = self._body()
        cache.tokens += self.steps

    def run(self, cache, input_ids: Tensor, position: int) -> Tensor:
        self._replay(cache, input_ids, position)
        return self.logits.clone()  # the buffer is overwritten by the next replay

    def run_block(self, cache, input_ids: Tensor, position: int) -> Tensor:
        self._replay(cache, input_ids, position)
        return self.tokens.clone()


def decode_graph(model, cache, input_ids: Tensor, steps: int = 1, sampling: tuple | str | None = "logits"):
    """``model``'s graph for decoding ``cache`` ``steps`` tokens per replay (captured on first use); ``sampling``
    "logits": one step returning its logits (HF generate's loop), else how the graph chooses tokens
    (:func:`choose_tokens`)."""
    key = (
        input_ids.shape[0],
        state_signature(cache),
        torch.is_autocast_enabled(input_ids.device.type),
        steps,
        sampling,
        fuses_decode_batch(input_ids.shape[0], input_ids.device),  # a graph of the other products is not replayed
    )
    params = DecodeGraph.param_pointers(model)
    store = _GRAPHS.get(model)
    if store is None or store[0] != params:  # new, or parameters moved: every old graph reads stale addresses
        store = _GRAPHS[model] = (params, {})
    graphs: dict = store[1]
    if key not in graphs:
        graphs[key] = DecodeGraph(model, cache, capture=input_ids.is_cuda, steps=steps, sampling=sampling)
    return graphs[key]


def release(model) -> None:
    """Drop ``model``'s captured graphs and their memory."""
    _GRAPHS.pop(model, None)


class _Clock:
    """Device-synchronised lap times into ``out`` (nothing, and no synchronisation, when ``out`` is None)."""

    def __init__(self, device: torch.device, out: dict | None):
        self.device, self.out = device, out
        self.t = self._now() if out is not None else 0.0

    def _now(self) -> float:
        import time

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def mark(self, name: str) -> None:
        if self.out is not None:
            t = self._now()
            self.out[name], self.t = t - self.t, t


def kv_capacity_for(prompt: int, max_new_tokens: int, steps: int, multiple: int = 256) -> int:
    """Static KV positions a generation needs: the prompt, then whole blocks of ``steps`` decoding steps; rounded up
    to ``multiple`` so that prompts of similar lengths share a captured graph."""
    blocks = -(-max(0, max_new_tokens - 1) // steps)
    need = prompt + blocks * steps
    return -(-need // multiple) * multiple


@torch.no_grad()
def generate_fast(
    model,
    input_ids: Tensor,
    max_new_tokens: int,
    *,
    sampling: tuple | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    steps: int = 16,
    timings: dict | None = None,
) -> Tensor:
    """Greedy (``sampling`` None) or sampled (``(temperature, top_k)``) generation: (batch, prompt) ->
    (batch, prompt + new), as ``GenerationMixin.generate`` returns it (tokens after a sequence's EOS are
    ``pad_token_id``; generation stops once every sequence has ended).

    The prompt is prefilled eagerly into a cache whose attention layers get a static KV cache; then each replay of a
    ``steps``-step graph (:class:`DecodeGraph`) decodes ``steps`` tokens, and the host checks for EOS only between
    blocks. Tokens a block decodes past a sequence's EOS are dropped, so the result is what single steps give."""
    b, L = input_ids.shape
    steps = max(1, min(steps, max_new_tokens - 1))
    cache = MohawkCache(kv_capacity=kv_capacity_for(L, max_new_tokens, steps))
    clock = _Clock(input_ids.device, timings)
    h, _ = model.model(input_ids=input_ids, cache=cache, keep_last=1)
    first = choose_tokens(model.lm_head(h[:, -1]), sampling)[:, None]
    clock.mark("prefill_s")
    eos = None
    if eos_token_id is not None:
        eos = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id), device=first.device)
    blocks, made, nxt = [first], 1, first
    while made < max_new_tokens:
        if eos is not None and bool(torch.isin(torch.cat(blocks, 1), eos).any(1).all()):
            break
        graph = decode_graph(model, cache, nxt, steps=steps, sampling=sampling)
        tokens = graph.run_block(cache, nxt, cache.tokens)
        blocks.append(tokens)
        made += steps
        nxt = tokens[:, -1:]
    clock.mark("decode_s")
    if timings is not None:
        state = sum(t.numel() * t.element_size() for pair in cache.ssm.values() for t in pair)
        timings.update(decode_steps=made - 1, state_bytes=state, kv_bytes=cache.memory_bytes(used=True) - state)
    new = torch.cat(blocks, 1)[:, :max_new_tokens]
    if eos is not None:
        is_eos = torch.isin(new, eos)
        after = (is_eos.cumsum(1) - is_eos.long()) > 0  # past each sequence's first EOS
        pad = pad_token_id if pad_token_id is not None else int(eos[0])
        new = new.masked_fill(after, pad)
        if bool(is_eos.any(1).all()):  # every sequence ended: stop where the last one did
            new = new[:, : int(is_eos.long().argmax(1).max()) + 1]
    return torch.cat([input_ids, new], 1)
