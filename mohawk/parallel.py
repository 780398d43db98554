"""Data parallelism on PyTorch's own engine, for runs started by ``torchrun`` (which sets RANK, WORLD_SIZE,
LOCAL_RANK and the rendezvous): stages 1 and 2 train the replacing mixers under DistributedDataParallel, stage 3
trains the whole student sharded with FSDP2 (``fully_shard``, bf16 parameters and fp32 gradient reduction on GPU),
with the frozen teacher sharded the same way for its forward passes, or both replicated under DDP (``--parallel
ddp``). In stages 1 and 2 the teacher is replicated.

Every rank draws the same global batch from the same deterministic stream and keeps its own slice of rows, so a
run's batches, token counts and checkpoints do not depend on the number of processes: a checkpoint written by N
processes resumes on M (see checkpoint.Checkpointer, which writes through torch.distributed.checkpoint).
Without torchrun (WORLD_SIZE unset or 1) everything here is a no-op.
"""

from __future__ import annotations

import os
import typing
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mohawk.errors import MohawkError

STRATEGIES = ("auto", "ddp", "fsdp")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when a GPU is visible, else cpu; a clear error for cuda without a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MohawkError("--device cuda was asked for, but no CUDA GPU is available (use --device cpu)")
    return torch.device(name)


@dataclass
class Parallel:
    """This process's place in the job: ``rank`` of ``world`` processes, GPU ``local_rank`` of its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    strategy: str = "auto"  # stage 3 under world > 1: auto (= fsdp), ddp or fsdp

    @classmethod
    def from_env(cls, device: str = "auto", strategy: str = "auto") -> tuple[Parallel, torch.device]:
        """Join the process group that torchrun described in the environment (NCCL on GPUs, gloo on CPUs) and pick
        this rank's device; a plain single-process ``Parallel`` when not under torchrun."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(strategy=strategy), resolve_device(device)
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        if cuda:
            if not torch.cuda.is_available():
                raise MohawkError("--device cuda was asked for, but no CUDA GPU is available (use --device cpu)")
            dev = torch.device("cuda", local)
            torch.cuda.set_device(dev)
        else:
            dev = torch.device("cpu")
        if not dist.is_initialized():
            # long timeout: rank 0 alone writes checkpoints and summaries while the others wait
            device_id: dict[str, typing.Any] = {"device_id": dev} if cuda else {}
            dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=60), **device_id)
        return cls(rank=rank, world=world, local_rank=local, strategy=strategy), dev

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def check_batch_size(self, rows: int) -> None:
        """A MohawkError unless a global batch of ``rows`` sequences splits evenly over the processes."""
        if rows % self.world:
            raise MohawkError(
                f"--batch-size {rows} does not split over {self.world} processes: use a multiple of "
                f"{self.world} (the batch size is global)"
            )

    def shard(self, batch: Tensor) -> Tensor:
        """This rank's rows of a global batch (batch, L) -> (batch / world, L)."""
        if not self.active:
            return batch
        self.check_batch_size(batch.shape[0])
        return batch.chunk(self.world)[self.rank]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def mean(self, values: list[float]) -> list[float]:
        """The average over ranks of each value (one all-reduce)."""
        if not self.active or not values:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        return (t / self.world).tolist()

    def mean_metrics(self, loss: float, metrics: dict) -> tuple[float, dict]:
        """``loss`` and every number in the (nested) ``metrics`` averaged over ranks: the global batch's values,
        since each rank holds an equal share of it and the stage losses are means."""
        if not self.active:
            return loss, metrics
        paths, values = flatten_metrics(metrics)
        avg = self.mean([loss] + values)
        return avg[0], unflatten_metrics(paths, avg[1:])

    def _comm_device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")

    # -- models ----------------------------------------------------------------------------------------------------
    @staticmethod
    def is_sharded(module: nn.Module) -> bool:
        """True once ``module`` went through FSDP2's ``fully_shard`` (its parameters are DTensors)."""
        from torch.distributed.fsdp import FSDPModule

        return isinstance(module, FSDPModule)

    def uses_fsdp(self, stage) -> bool:
        """True when ``stage`` (a mohawk.stages.Stage) trains an FSDP2-sharded student on this job."""
        return self.active and stage.shards_student and self.strategy in ("auto", "fsdp")

    def shard_student(self, student: nn.Module) -> None:
        """FSDP2 in place: each decoder layer, then the root (embeddings, final norm, head), over all ranks.
        Parameters become DTensors, so call this before building the optimizer. Idempotent."""
        self._fully_shard(student, student.model.layers)

    def shard_teacher(self, adapter) -> None:
        """FSDP2 on the frozen teacher (each decoder layer, then the root) for stage 3's forward passes: each rank
        holds 1/world of its weights. Afterwards the teacher runs only with every rank taking part (see distill)."""
        self._fully_shard(adapter.model, adapter.layers())

    def _fully_shard(self, model: nn.Module, layers) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        if self.is_sharded(model):
            return
        device = next(model.parameters()).device
        mesh = init_device_mesh(device.type, (self.world,))
        mp = (
            MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            if device.type == "cuda"
            else MixedPrecisionPolicy()
        )
        for layer in layers:
            fully_shard(layer, mesh=mesh, mp_policy=mp)
        fully_shard(model, mesh=mesh, mp_policy=mp)

    def runner(self, stage) -> StageRunner:
        """How train.py calls ``stage.loss`` on this job: directly, through DDP, or on the FSDP2-sharded student."""
        if not self.active or not any(p.requires_grad for p in stage.student.parameters()):
            return StageRunner(stage.loss)  # (nothing to train, e.g. all layers kept as attention: DDP would refuse)
        if self.uses_fsdp(stage):
            student = stage.student

            @contextmanager
            def sync(last: bool):
                student.set_requires_gradient_sync(last)  # reduce-scatter only on the update's last micro-batch
                yield

            return StageRunner(stage.loss, sync)
        device = next(stage.student.parameters()).device
        ddp = nn.parallel.DistributedDataParallel(
            _StageModule(stage),
            find_unused_parameters=stage.partial_gradients,
            device_ids=[device.index] if device.type == "cuda" else None,
        )
        return StageRunner(ddp, lambda last: nullcontext() if last else ddp.no_sync())

    def gather(self, student: nn.Module) -> nn.Module | None:
        """The whole student as a plain model on rank 0 (``None`` elsewhere); every rank must call this."""
        if not self.is_sharded(student):
            return student if self.main else None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(student, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.main:
            return None
        from mohawk.models import MohawkForCausalLM

        p = next(student.parameters())
        plain: typing.Any = MohawkForCausalLM(typing.cast(typing.Any, student).config)
        plain.load_state_dict(full)
        return plain.to(device=p.device, dtype=p.dtype).eval()

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


class StageRunner:
    """``loss(batch)`` and ``sync(last)``: the context a micro-batch's backward runs in (gradients are reduced over
    ranks only on the last micro-batch of an update)."""

    def __init__(self, loss, sync=None):
        self.loss = loss
        self.sync = sync or (lambda last: nullcontext())


class _StageModule(nn.Module):
    """A stage's loss as a module over the student, so DDP can hook the student's parameters. The teacher stays
    outside (not a submodule): DDP neither broadcasts nor reduces it."""

    def __init__(self, stage):
        super().__init__()
        self.student = stage.student
        self._loss = stage.loss

    def forward(self, batch: Tensor):
        return self._loss(batch)


def flatten_metrics(d: dict, path: tuple = ()) -> tuple[list[tuple], list]:
    """A nested metrics dict -> (key paths, values), in a fixed order."""
    paths, values = [], []
    for k, v in d.items():
        if isinstance(v, dict):
            p, val = flatten_metrics(v, path + (k,))
            paths += p
            values += val
        else:
            paths.append(path + (k,))
            values.append(v)
    return paths, values


def unflatten_metrics(paths: list[tuple], values: list) -> dict:
    out: dict = {}
    for path, v in zip(paths, values, strict=True):
        d = out
        for k in path[:-1]:
            d = d.setdefault(k, {})
        d[path[-1]] = v
    return out
