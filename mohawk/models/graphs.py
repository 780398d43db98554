"""CUDA graphs for decoding: one recurrent step of a fixed-state student, captured once and replayed.

A decoding step of a 30-layer student is a few hundred small kernels. Launched one by one from Python it takes tens of
milliseconds whatever the GPU (the step is launch-bound); replayed as one CUDA graph it costs about what the kernels
themselves cost. A graph replays fixed memory addresses, so a :class:`DecodeGraph` owns static buffers for the token,
its position and every layer's (conv window, SSM state), and the mixers update that state in place
(``MohawkCache.static``). The cache being decoded *adopts* the buffers (its state tensors become them); when another
cache takes the graph over, the previous one gets copies back, so two generations never share state.

Only students whose every layer has a fixed-size state (SSD, SSM, linear attention) are graphed; a hybrid's KV cache
grows, so hybrids decode eagerly. The model keeps one graph per (batch size, state layout, autocast) and recaptures
when its parameters move (``.to()``, reloading).
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor

from mohawk.models.cache import MohawkCache

_GRAPHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (parameter addresses, {key: graph})


def graphs_supported(device: torch.device) -> bool:
    """Whether a step on ``device`` can be captured (CUDA only; tests patch this to run the logic on CPU)."""
    return device.type == "cuda"


def state_signature(cache) -> tuple:
    """What a graph's static buffers must match: per layer, the dtype and shape of the conv window and SSM state."""
    return tuple((i, c.dtype, tuple(c.shape), s.dtype, tuple(s.shape)) for i, (c, s) in sorted(cache.ssm.items()))


class DecodeGraph:
    """One-token decoding step of ``model`` (a MohawkForCausalLM) on static buffers shaped like ``cache``'s state.

    ``run(cache, input_ids (batch, 1), position (int)) -> logits (batch, 1, vocab)`` advances ``cache`` by one token,
    exactly as the eager step would (the same kernels, replayed)."""

    def __init__(self, model, cache, capture: bool = True):
        self.model = weakref.ref(model)  # the model holds its graphs (through _GRAPHS), not the other way round
        any_state = next(iter(cache.ssm.values()))[1]
        batch, device = any_state.shape[0], any_state.device
        self.buffers = MohawkCache()
        self.buffers.static = True
        self.buffers.ssm = {i: (c.clone(), s.clone()) for i, (c, s) in cache.ssm.items()}
        self.ids = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.owner: weakref.ref | None = None
        self.graph = None
        self.logits: Tensor | None = None
        if capture:
            self._capture(device)

    def _capture(self, device: torch.device) -> None:
        # warm-up on a side stream (lazy initialisations, cuBLAS workspaces), then capture; both only touch the
        # graph's own buffers, whose contents are replaced when a cache adopts them
        with torch.cuda.device(device):
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self._step()
            torch.cuda.current_stream().wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.logits = self._step()

    @staticmethod
    def param_pointers(model) -> tuple[int, ...]:
        return tuple(p.data_ptr() for p in model.parameters())

    def _step(self) -> Tensor:
        model = self.model()
        h, _ = model.model(input_ids=self.ids, position_ids=self.pos, cache=self.buffers)
        return model.lm_head(h)

    def owns(self, cache) -> bool:
        """Whether ``cache``'s state tensors are this graph's buffers (then the replay continues it)."""
        if self.owner is None or self.owner() is not cache:
            return False
        return all(cache.ssm[i][0] is c and cache.ssm[i][1] is s for i, (c, s) in self.buffers.ssm.items())

    def adopt(self, cache) -> None:
        """Make ``cache``'s state live in the buffers; the previous owner keeps a copy of its state."""
        previous = self.owner() if self.owner is not None else None
        if previous is not None and previous is not cache:
            for i, (c, s) in self.buffers.ssm.items():
                if previous.ssm.get(i, (None, None))[0] is c:
                    previous.ssm[i] = (c.clone(), s.clone())
        for i, (c, s) in self.buffers.ssm.items():
            c_new, s_new = cache.ssm[i]
            if c_new is not c:
                c.copy_(c_new)
                s.copy_(s_new)
            cache.ssm[i] = (c, s)
        self.owner = weakref.ref(cache)

    def run(self, cache, input_ids: Tensor, position: int) -> Tensor:
        if not self.owns(cache):
            self.adopt(cache)
        self.ids.copy_(input_ids)
        self.pos.fill_(position)
        if self.graph is not None:
            self.graph.replay()
        else:  # no capture (CPU tests): the same step on the same buffers, run eagerly
            self.logits = self._step()
        cache.tokens += 1
        return self.logits.clone()  # the buffer is overwritten by the next replay


def decode_graph(model, cache, input_ids: Tensor) -> DecodeGraph:
    """``model``'s graph for decoding ``cache`` one token at a time (captured on first use)."""
    key = (input_ids.shape[0], state_signature(cache), torch.is_autocast_enabled(input_ids.device.type))
    params = DecodeGraph.param_pointers(model)
    store = _GRAPHS.get(model)
    if store is None or store[0] != params:  # new, or parameters moved: every old graph reads stale addresses
        store = _GRAPHS[model] = (params, {})
    graphs: dict = store[1]
    if key not in graphs:
        graphs[key] = DecodeGraph(model, cache, capture=input_ids.is_cuda)
    return graphs[key]


def release(model) -> None:
    """Drop ``model``'s captured graphs and their memory."""
    _GRAPHS.pop(model, None)
