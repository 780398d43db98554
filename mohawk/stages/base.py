"""What the stages share: the student, the teacher's adapter, and which layers are being distilled."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor, nn

from mohawk.mixers.heads import replaced_part

COMPILE_BACKEND = "inductor"  # torch.compile's backend for Stage.compiled (tests use "aot_eager": no code generation)


def compile_options(mode: str) -> dict:
    """torch.compile arguments for ``mode``: "fuse" generates fused kernels, "graphs" also replays each compiled
    region (forward and backward) as a CUDA graph (mode reduce-overhead): one launch per block instead of dozens."""
    options = {"dynamic": False, "backend": COMPILE_BACKEND}
    if mode == "graphs" and COMPILE_BACKEND == "inductor":
        options["mode"] = "reduce-overhead"
    return options


class Stage:
    """A stage of MOHAWK: which student parameters train (``parameters()``) and on what loss (``loss(batch)``), plus
    what the training loop must know about it:

    - ``compilable``: its loss runs student blocks that ``compiled()`` can wrap (torch.compile, CUDA graphs);
    - ``shards_student``: under torchrun it trains the whole student sharded with FSDP2 (else replicated, DDP);
    - ``partial_gradients``: some of its trainable parameters get no gradient (DDP must look for unused ones);
    - ``transfers_weights``: before it starts, the student's non-mixer weights are copied from the teacher."""

    number = 0
    name = ""
    compilable = True
    shards_student = False
    partial_gradients = False
    transfers_weights = False

    def __init__(self, student, adapter):
        self.student, self.adapter = student, adapter
        self.layers = [i for i, kind in enumerate(student.config.mixers) if kind != "attention"]
        # the RMS of the norm weight in front of each replaced mixer, when above 1 (Gemma: 14-50; Llama-family and
        # SmolLM2: below 1): Adam moves every weight by about the LR whatever its input's scale, so a mixer fed by a
        # large-gain norm gets the LR divided by that gain (see lr_scale)
        self._input_gain = {
            i: max(1.0, float(student.model.layers[i].norm1.weight.detach().float().pow(2).mean().sqrt()))
            for i in self.layers
        }

    def replaced_prefix(self, i: int) -> str:
        """The name prefix of layer i's parameters that replace attention (a head-level hybrid's student part only:
        the heads it keeps as attention are the teacher's, like an attention layer)."""
        return f"model.layers.{i}.mixer.{replaced_part(self.student.model.layers[i].mixer).prefix}"

    def mixer_parameters(self) -> list[tuple[str, Tensor]]:
        """Parameters of the mixers that replace attention (stages 1 and 2 train only these)."""
        out: list[tuple[str, Tensor]] = []
        for i in self.layers:
            part = replaced_part(self.student.model.layers[i].mixer)
            if part.module is not None:
                out += [(self.replaced_prefix(i) + n, p) for n, p in part.module.named_parameters()]
        return out

    def parameters(self) -> list[tuple[str, Tensor]]:
        return self.mixer_parameters()

    def lr_scale(self, name: str) -> float:
        """The factor on the stage's LR for parameter ``name``: 1 / the gain of the norm feeding its mixer where that
        gain exceeds 1, else 1 (the stage's LR)."""
        if name.startswith("model.layers.") and ".mixer." in name:
            i = int(name.split(".")[2])
            return 1.0 / self._input_gain.get(i, 1.0)
        return 1.0

    def loss(self, batch: Tensor) -> tuple[Tensor, dict]:
        raise NotImplementedError

    def compiled_modules(self) -> list[nn.Module]:
        """What ``compiled()`` wraps: the student's blocks, one at a time (regional compilation: one graph serves every
        block; the SSD scan inside is the traced chunked scan, see mohawk.ssd)."""
        return list(self.student.model.layers)

    @contextmanager
    def compiled(self, mode: str = "fuse"):
        """Within the block, the modules of ``compiled_modules()`` run through torch.compile (shapes fixed; ``mode``,
        see compile_options; "off": nothing); on exit they are plain modules again, so evaluation and generation with
        other shapes do not recompile."""
        modules = (
            [m for m in self.compiled_modules() if getattr(m, "_compiled_call_impl", None) is None]
            if mode != "off"
            else []
        )
        for m in modules:
            m.compile(**compile_options(mode))
        try:
            yield
        finally:
            for m in modules:
                m._compiled_call_impl = None

    @staticmethod
    def _total(per_layer: dict[int, Tensor], like: Tensor) -> Tensor:
        # Each layer's parameters only receive gradient from their own term, so a plain sum trains all layers at once.
        return torch.stack(list(per_layer.values())).sum() if per_layer else like.new_zeros((), requires_grad=True)
