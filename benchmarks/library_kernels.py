"""SASRec on the library path: ``F.dropout`` everywhere and SDPA's own attention
dropout, in place of the CPU dropout device (``models.recommenders.base.dropout``,
16-bit draws) and the spelled-out CPU attention that uses it.

On CUDA the model already takes this path; on CPU it is the plain path that
the device is checked against, for speed (``handwritten_kernels.py``) and for
quality (``quality.py --library-kernels``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch.nn.functional as F

import models.recommenders.base as base_module
from models.recommenders import sasrec as sasrec_module


@contextlib.contextmanager
def sasrec_library_path() -> Iterator[None]:
    """Within the block, SASRec trains with F.dropout and SDPA's attention dropout."""
    original_forward = sasrec_module.CausalSelfAttention.forward
    original_dropout = sasrec_module.dropout
    base_original = base_module.dropout

    def forward(self, x, query=None):  # noqa: ANN001, ANN202
        if query is not None:
            return original_forward(self, x, query)
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))

    def library(x, p, training):  # noqa: ANN001, ANN202
        return F.dropout(x, p, training)

    sasrec_module.CausalSelfAttention.forward = forward
    sasrec_module.dropout = library
    base_module.dropout = library
    try:
        yield
    finally:
        sasrec_module.CausalSelfAttention.forward = original_forward
        sasrec_module.dropout = original_dropout
        base_module.dropout = base_original
