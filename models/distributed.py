"""Data-parallel training on the accelerators (or CPU processes) of one host
with ``torch.distributed`` (issue 15).

A job that asks for ``world_size > 1`` trains with ``world_size`` processes
that this module launches itself (``torch.multiprocessing``, spawn start
method): NCCL with one GPU per rank when the device is CUDA, gloo on CPU.
The model is wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`
(gradients all-reduced during backward), every rank holds the same weights
and the same optimiser state, and each step's *global* batch (the batch a
single process would take) is cut into ``world_size`` contiguous shards, one
per rank.

Equal losses. DDP averages gradients over ranks; a rank's loss is therefore
its *sum* of per-token terms divided by the global token count and multiplied
by ``world_size`` (:func:`shard_weight`), so the averaged gradient is the
gradient of the single-process mean over the global batch. Random draws that
depend on the shard's shape (dropout masks, BCE negatives) are drawn
independently per rank: with them the per-step loss matches a single-process
run in distribution, without them (dropout 0, ``loss="ce"``) to float
rounding; ``tests/distributed`` checks the latter.

Launching. :func:`launch` starts the ranks, forwards rank 0's progress events
to the caller's callback in the parent process (so cancellation and job
progress work unchanged: a callback that raises stops every rank), re-raises
a rank's exception in the parent and returns rank 0's result. Rendezvous is
TCP on 127.0.0.1 with a free port, so one host only; multi-node training
(torchrun rendezvous) is the README's next step.
"""

from __future__ import annotations

import os
import queue as queue_mod
import socket
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from models.progress import Progress, ProgressEvent

# a rank that waits (for rank 0's validation, say) longer than this fails
COLLECTIVE_TIMEOUT = timedelta(hours=2)


class DistributedError(RuntimeError):
    """A rank failed without an exception that could be sent to the parent."""


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a data-parallel group."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` rows (sizes differ by at most one)."""
        return slice(n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size)

    def all_sum(self, values: list[float] | torch.Tensor) -> torch.Tensor:
        """Sum of a small float64 vector over the ranks (on the collective's device)."""
        t = torch.as_tensor(values, dtype=torch.float64).to(self.comm_device)
        dist.all_reduce(t)
        return t.cpu()

    @property
    def comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self.comm_device)
        return box[0]

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj``, in rank order, on rank 0 (None elsewhere)."""
        if dist.get_backend() == "nccl":  # gather_object is not supported with NCCL everywhere
            out: list[Any] = [None] * self.world_size
            dist.all_gather_object(out, obj)
            return out if self.is_main else None
        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def barrier(self) -> None:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[self.device.index or 0])
        else:
            dist.barrier()


def shard_weight(local: float, total: float, world_size: int) -> float:
    """Factor turning a rank's mean over ``local`` terms into its share of the
    global mean under DDP's gradient averaging: ``world_size * local / total``."""
    return world_size * local / total if total > 0 else 0.0


def zero_loss(module: torch.nn.Module) -> torch.Tensor:
    """A zero loss connected to every parameter: what a rank with an empty
    shard (a last batch smaller than the world) feeds DDP's backward."""
    return sum(p.sum() for p in module.parameters()) * 0.0


def check_world(world_size: int, device: torch.device) -> None:
    if int(world_size) != world_size or world_size < 1:
        raise ValueError(f"world_size must be an integer >= 1, got {world_size}")
    if device.type == "cuda" and world_size > torch.cuda.device_count():
        raise ValueError(
            f"world_size {world_size} needs one GPU per rank; {torch.cuda.device_count()} visible"
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Forward:
    """Rank 0's progress callback: events go to the parent through a queue."""

    def __init__(self, q) -> None:
        self.q = q

    def __call__(self, event: ProgressEvent) -> None:
        self.q.put(("progress", event))


def _no_progress(event: ProgressEvent) -> None:
    return None


def _rank_main(
    rank: int,
    fn: Callable[..., Any],
    world_size: int,
    device_type: str,
    port: int,
    threads: int | None,
    q,
    args: tuple,
) -> None:
    try:
        if threads:
            torch.set_num_threads(threads)
        if device_type == "cuda":
            torch.cuda.set_device(rank)
            device, backend = torch.device("cuda", rank), "nccl"
        else:
            device, backend = torch.device("cpu"), "gloo"
        dist.init_process_group(
            backend,
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world_size,
            timeout=COLLECTIVE_TIMEOUT,
        )
        try:
            ctx = DistContext(rank, world_size, device)
            progress = _Forward(q) if rank == 0 else _no_progress
            result = fn(ctx, progress, *args)
            # every rank past its last collective before any tears its connections down: a rank
            # that destroyed its group while a peer's gloo threads still ran aborted that peer
            # (SIGABRT, "terminate called without an active exception") on a loaded 2-core machine
            ctx.barrier()
            if rank == 0:
                q.put(("result", result))
        finally:
            dist.destroy_process_group()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, then exit non-zero
        try:
            q.put(("error", rank, exc, traceback.format_exc()))
        except Exception:  # the exception may not pickle
            q.put(("error", rank, None, traceback.format_exc()))
        raise SystemExit(1) from None


def launch(
    fn: Callable[..., Any],
    world_size: int,
    args: tuple,
    progress: Progress,
    device: torch.device,
    threads_per_rank: int | None = None,
) -> Any:
    """Run ``fn(ctx, progress, *args)`` on ``world_size`` spawned ranks and return
    rank 0's return value. ``fn`` must be a module-level function and ``args``
    picklable (numpy arrays, dataclasses, tensors on the CPU).

    Rank 0's progress events reach ``progress`` here; if it raises (a job was
    cancelled), every rank is terminated and the exception propagates. A rank's
    exception is re-raised here (same type when it pickles)."""
    check_world(world_size, device)
    if threads_per_rank is None and device.type == "cpu":
        threads_per_rank = max(1, (os.cpu_count() or 1) // world_size)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = mp.start_processes(
        _rank_main,
        args=(fn, world_size, device.type, _free_port(), threads_per_rank, q, args),
        nprocs=world_size,
        join=False,
        start_method="spawn",
    )
    result, have_result = None, False

    def handle(msg: tuple) -> None:
        nonlocal result, have_result
        if msg[0] == "progress":
            progress(msg[1])
        elif msg[0] == "result":
            result, have_result = msg[1], True
        elif msg[0] == "error":
            _, rank, exc, tb = msg
            if isinstance(exc, BaseException):
                raise exc from DistributedError(f"rank {rank} failed:\n{tb}")
            raise DistributedError(f"rank {rank} failed:\n{tb}")

    try:
        while True:
            try:
                handle(q.get(timeout=0.2))
                continue
            except queue_mod.Empty:
                pass
            if all(not p.is_alive() for p in procs.processes):
                break
        while True:  # whatever was queued before the last rank exited
            try:
                handle(q.get(timeout=0.5))
            except queue_mod.Empty:
                break
        procs.join()  # raises if a rank died without reporting (killed, say)
    except BaseException:
        for p in procs.processes:
            if p.is_alive():
                p.terminate()
        for p in procs.processes:
            p.join(timeout=10)
        raise
    if not have_result:
        raise DistributedError("rank 0 finished without a result")
    return result


def to_numpy_state(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A state dict as numpy arrays: crosses the result queue by value."""
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def from_numpy_state(state: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}


__all__ = [
    "DistContext",
    "DistributedError",
    "check_world",
    "from_numpy_state",
    "launch",
    "shard_weight",
    "to_numpy_state",
    "zero_loss",
]
