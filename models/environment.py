"""What a result was computed on, recorded next to it.

A regeneration (or a training run) is bit-for-bit reproducible from its seed
on the same hardware and software, but not across them: PyTorch's CPU
kernels (ATen's vectorised loops, MKL's GEMM, oneDNN) choose their code path
by the processor's instruction set, and each path rounds floats in its own
order. On Amazon Beauty the pre-trained item table differs in its bits after
three epochs when only the instruction set is switched (``MKL_CBWR=AVX2``,
``ATEN_CPU_CAPABILITY=avx2`` or ``ONEDNN_MAX_CPU_ISA=AVX2``); over a full
pre-training and the regenerator's training such differences change which
decodes win, so two machines can regenerate rather different row sets from
one seed. :func:`fingerprint` names what such a comparison must hold equal.
"""

from __future__ import annotations

import os
import platform
from functools import cache
from pathlib import Path
from typing import Any

#: environment variables that pin a kernel path (recorded when set)
KERNEL_VARIABLES = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
#: instruction-set flags that select PyTorch's CPU code paths
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "asimd", "sve")


@cache
def _cpu() -> tuple[str, tuple[str, ...]]:
    """The processor's model name and the relevant ISA flags (Linux /proc/cpuinfo; else platform)."""
    model, flags = platform.processor() or platform.machine(), set()
    info = Path("/proc/cpuinfo")
    if info.exists():
        for line in info.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and value.strip():
                model = value.strip()
            elif key in ("flags", "Features"):
                flags.update(value.split())
            if key == "" and flags:  # the first processor's block is enough
                break
    return model, tuple(f for f in ISA_FLAGS if f in flags)


def fingerprint(device: str | None = None) -> dict[str, Any]:
    """Software versions, the CPU and its kernel path, the torch threads and,
    for ``device`` 'cuda' (or 'auto' with CUDA present), the GPU: what two runs
    of one seed must share to be expected bit-identical."""
    import numpy as np
    import torch

    model, flags = _cpu()
    out: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "machine": platform.machine(),
        "cpu": model,
        "cpu_flags": list(flags),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
    }
    pinned = {k: os.environ[k] for k in KERNEL_VARIABLES if os.environ.get(k)}
    if pinned:
        out["kernel_variables"] = pinned
    if device is not None and str(device) in ("auto", "cuda") and torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
        out["cuda"] = torch.version.cuda
    return out
