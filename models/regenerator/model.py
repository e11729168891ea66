"""The DR4SR regenerator (spec §4.1): a seq2seq Transformer with K memories.

Source ``[SOS] + s + [EOS]`` is encoded once; a "diversity promoter" MLP
turns every encoder position into K memories; a condition encoder over the
target picks a soft mixture of them (Gumbel-softmax) during training; the
decoder reads the mixture and emits ``[SOS] + p + [EOS]``. The embedding
table is tied between every input and the output projection.

Every hyper-parameter is a field of :class:`models.config.RegeneratorConfig`.
Token ids: 0 pad, 1..N items, SOS = N+1, EOS = N+2 (all derived from N, Q21).

The training objective :meth:`Regenerator.losses` has two paths with the
same value: the fast one (packed tokens, each distinct source encoded once,
the restrictive softmax over the source's own tokens) and ``reference=True``
(the released code's dense batch and full-vocabulary masked softmax), which
``tests/regenerator`` compares.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.config import RegeneratorConfig
from models.regenerator.layers import DecoderLayer, Dropout, EncoderLayer, key_bias
from models.regenerator.packing import Layout


class RegeneratorInputError(ValueError):
    """Pairs, embeddings or a checkpoint that the regenerator cannot use."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available")
    return torch.device(name)


@dataclass
class NoiseRows:
    """Rows ``offset:offset+B`` of Gumbel noise drawn for a global batch of ``total`` rows."""

    offset: int
    total: int
    generator: torch.Generator


class Regenerator(nn.Module):
    """Spec §4.1. ``num_items`` = N; the vocabulary has N + 3 tokens."""

    def __init__(self, num_items: int, config: RegeneratorConfig,
                 item_embeddings: Tensor | None = None) -> None:
        super().__init__()
        if int(num_items) != num_items or num_items < 1:
            raise RegeneratorInputError(f"num_items must be a positive integer, got {num_items!r}")
        c = self.config = config
        self.num_items = int(num_items)
        self.sos, self.eos, self.vocab = self.num_items + 1, self.num_items + 2, self.num_items + 3
        d, k = c.d_model, c.num_memories
        layer_args = (c.n_heads, c.ffn_dim, c.dropout, c.activation, c.layer_norm_eps)
        self.embedding = nn.Embedding(self.vocab, d, padding_idx=0)
        self.position = nn.Embedding(c.max_src_len, d)
        self.input_drop = Dropout(c.dropout)
        self.encoder_layers = nn.ModuleList(EncoderLayer(d, *layer_args) for _ in range(c.enc_layers))
        self.encoder_norm = nn.LayerNorm(d, eps=c.layer_norm_eps)
        self.decoder_layers = nn.ModuleList(DecoderLayer(d, *layer_args) for _ in range(c.dec_layers))
        self.decoder_norm = nn.LayerNorm(d, eps=c.layer_norm_eps)
        self.promoter1, self.promoter2 = nn.Linear(d, d * k), nn.Linear(d * k, d * k)
        cond_args = (c.cond_heads, c.cond_ffn_dim, c.dropout, c.activation, c.layer_norm_eps)
        self.cond_layers = nn.ModuleList(EncoderLayer(d, *cond_args) for _ in range(c.cond_layers))
        self.cond_mlp = nn.Sequential(nn.Linear(d, c.cond_hidden), nn.ReLU(), nn.Linear(c.cond_hidden, k))
        self._init_weights(item_embeddings)

    def _init_weights(self, item_embeddings: Tensor | None) -> None:
        std = self.config.init_std
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, std)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, 0.0, std)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        with torch.no_grad():
            if item_embeddings is not None:
                expected = (self.num_items + 1, self.config.d_model)
                if tuple(item_embeddings.shape) != expected:
                    raise RegeneratorInputError(
                        f"item_embeddings must have shape {expected} (N+1 rows incl. padding), "
                        f"got {tuple(item_embeddings.shape)}")
                if not torch.isfinite(item_embeddings).all():
                    raise RegeneratorInputError("item_embeddings contain NaN or inf")
                self.embedding.weight[: self.num_items + 1] = item_embeddings.to(self.embedding.weight)
            self.embedding.weight[0].zero_()  # row 0 is padding and never learns

    # -- pieces shared with decoding ------------------------------------------
    def embed(self, tokens: Tensor, positions: Tensor) -> Tensor:
        return self.input_drop(self.embedding(tokens) + self.position(positions))

    def encode(self, src: Tensor, causal: bool, packed: bool = True,
               groups: int = 1) -> tuple[Tensor, Layout, Tensor]:
        """src (B, S) token ids, 0-padded on the right -> (encoder output rows
        (n, d) of the returned layout, key mask (B, S) True = real token).

        ``packed`` runs per-token work on real tokens only; ``groups`` > 1
        additionally pads self-attention per group of rows (efficient when
        the rows are sorted by length; correct in any order).
        """
        b, s = src.shape
        valid = src != 0
        layout = Layout.packed(valid, groups) if packed else Layout.dense(b, s)
        pos = torch.arange(s, device=src.device)
        if packed:
            index = layout.whole.index
            x = self.embed(src.reshape(-1).index_select(0, index), index % s)  # (n, d)
        else:
            x = self.embed(src.reshape(-1), pos.repeat(b))  # (B*S, d)
        pad_bias = key_bias(valid, x.dtype)  # (B, 1, 1, S)
        for g in layout.groups:
            width = g.length
            g.key_bias = g.bias = pad_bias[g.rows, :, :, :width]  # (R, 1, 1, S_g)
            if causal:  # built once here for both layers
                g.bias = g.bias + torch.full((width, width), -math.inf, dtype=x.dtype,
                                             device=src.device).triu(1)
        for layer in self.encoder_layers:
            x = layer(x, layout)
        return self.encoder_norm(x), layout, valid

    def memories(self, memory: Tensor) -> Tensor:
        """(..., d) encoder output -> (..., K, d) the K memories."""
        out = self.promoter2(F.relu(self.promoter1(memory)))
        return out.view(*memory.shape[:-1], self.config.num_memories, self.config.d_model)

    def mixed_memory(self, memory: Tensor, layout: Layout, pi: Tensor,
                     gather: Tensor | None = None) -> Tensor:
        """Soft mixture sum_k pi_bk M[b, s, k] of the K memories; pi (B, K),
        ``layout`` the pairs' source tokens -> (n, d). ``memory`` holds the
        encoder rows of ``layout`` or, with ``gather`` (n,), of the distinct
        sources, ``gather`` naming the row of each pair token."""
        grid = layout.whole
        rows = grid.index // grid.length if grid.index is not None else \
            torch.arange(len(pi), device=pi.device).repeat_interleave(grid.length)
        mem = self.memories(memory)
        if gather is not None:
            mem = mem.index_select(0, gather)
        return (mem * pi[rows, :, None]).sum(1)

    def decode_hidden(self, emb: Tensor, layout: Layout, cross: list[list]) -> Tensor:
        """Full (uncached) decoder over embedded target rows (n, d) of ``layout``
        -> hidden (n, d); ``cross`` per layer as from DecoderLayer.cross_kv."""
        y = emb
        for layer, kv in zip(self.decoder_layers, cross, strict=True):
            y = layer(y, layout, kv)
        return self.decoder_norm(y)

    def condition(self, emb: Tensor, layout: Layout, real: Tensor, tau: float,
                  noise: NoiseRows | None = None) -> Tensor:
        """emb (n, d) embedded target rows of ``layout`` -> pi (B, K), a Gumbel-softmax
        sample. The condition encoder is causal; its outputs are mean-pooled over
        ``real`` (B, T+1) = the [SOS] p [EOS] positions.

        ``noise`` (data-parallel training): draw the Gumbel noise of the whole
        global batch from ``noise.generator`` and use rows ``offset:offset+B``,
        so every rank's rows get the noise a single process would draw."""
        x = emb
        for layer in self.cond_layers:
            x = layer(x, layout, causal=True)
        keep = real.to(x.dtype)[..., None]  # (B, T+1, 1)
        pooled = (layout.to_padded(x) * keep).sum(1) / keep.sum(1)  # (B, d)
        logits = self.cond_mlp(pooled)
        if noise is None:
            return F.gumbel_softmax(logits, tau=tau, hard=False)
        # torch's gumbel_softmax, with the noise drawn for the global batch
        e = torch.empty((noise.total, logits.shape[1]), dtype=logits.dtype, device=logits.device)
        gumbels = -e.exponential_(generator=noise.generator).log()[noise.offset : noise.offset + len(logits)]
        return ((logits + gumbels) / tau).softmax(-1)

    # -- training objective -----------------------------------------------------
    def losses(self, src: Tensor, tgt: Tensor, tau: float, *, reference: bool = False,
               groups: int = 4, pair_src: Tensor | None = None,
               noise: NoiseRows | None = None) -> tuple[Tensor, Tensor]:
        """src (B, S) = [SOS] s [EOS] 0..., tgt (B, T+1) = [SOS] p [EOS] 0...
        -> (token cross-entropy, mean per-sample entropy of pi).

        ``pair_src`` (B,) names the row of ``src`` that each target row pairs
        with; ``src`` then holds each distinct source once (any number of
        rows) and is encoded once. None: row i of ``src`` pairs with row i of
        ``tgt``. For the grouped attention to pad little, pairs should come
        sorted by source length (and ``src`` rows too).

        ``reference`` computes the released code's way (no packing, all K
        memories materialised, all N+3 logits under a dense mask); same
        value, used to check the fast path and to time the reference.
        """
        if pair_src is not None and reference:
            src, pair_src = src.index_select(0, pair_src), None  # one source row per pair
        causal = self.config.encoder_mask_train == "causal"
        packed = not reference
        groups = groups if packed else 1
        memory, layout, _ = self.encode(src, causal, packed, groups)
        gather = None
        if pair_src is not None:
            # The pairs' source tokens, laid out per pair; each token reads the
            # encoder row of its distinct source.
            width = src.shape[1]
            packed_row = torch.full((src.numel(),), -1, dtype=torch.long, device=src.device)
            packed_row[layout.whole.index] = torch.arange(len(layout.whole.index), device=src.device)
            src = src.index_select(0, pair_src)
            layout = Layout.packed(src != 0, groups)
            pad_bias = key_bias(src != 0, memory.dtype)  # cross-attention skips the pads
            for g in layout.groups:
                g.key_bias = pad_bias[g.rows, :, :, : g.length]
            flat = layout.whole.index
            gather = packed_row[pair_src[flat // width] * width + flat % width]
        b, t_full = tgt.shape
        emb = self.embed(tgt, torch.arange(t_full, device=tgt.device))  # (B, T+1, d)
        labels = tgt[:, 1:]  # (B, T), 0 = ignore
        real = tgt != 0
        if packed:  # condition encoder: [SOS] p [EOS]; decoder: the positions with a label
            cond_layout, dec_layout = Layout.packed(real, 1), Layout.packed(labels != 0, groups)
        else:
            cond_layout, dec_layout = Layout.dense(b, t_full), Layout.dense(b, t_full - 1)
        pi = self.condition(cond_layout.to_packed(emb), cond_layout, real, tau, noise)
        mixed = self.mixed_memory(memory, layout, pi, gather)  # (n, d) over the pairs' tokens
        cross = [layer.cross_kv(mixed, layout) for layer in self.decoder_layers]
        h = self.decode_hidden(dec_layout.to_packed(emb[:, :-1]), dec_layout, cross)
        h = dec_layout.to_padded(h)  # (B, T, d)
        rec = (self._full_vocab_ce if reference else self._restricted_ce)(h, src, labels)
        entropy = -(pi * torch.log(pi + 1e-12)).sum(-1).mean()
        return rec, entropy

    def _restricted_ce(self, h: Tensor, src: Tensor, labels: Tensor) -> Tensor:
        # Allowed tokens = those of the source row (items, SOS, EOS) plus pad 0,
        # each counted once: sort, then mask repeats so duplicates in a source
        # do not add mass to the softmax.
        b = src.shape[0]
        cand, _ = torch.cat([src.new_zeros(b, 1), src], 1).sort(dim=1)  # (B, C)
        first = torch.ones_like(cand, dtype=torch.bool)
        first[:, 1:] = cand[:, 1:] != cand[:, :-1]
        table = F.embedding(cand, self.embedding.weight, padding_idx=0)  # (B, C, d)
        logits = torch.bmm(h, table.transpose(1, 2)).masked_fill(~first[:, None, :], -math.inf)
        target = torch.searchsorted(cand, labels.contiguous())  # first occurrence of the label
        target = target.masked_fill(labels == 0, -100)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))

    def _full_vocab_ce(self, h: Tensor, src: Tensor, labels: Tensor) -> Tensor:
        b, t, _ = h.shape
        logits = h @ self.embedding.weight.t()  # (B, T, N+3)
        allowed = torch.zeros_like(logits, dtype=torch.bool)
        allowed.scatter_(2, src[:, None, :].expand(b, t, src.shape[1]), True)
        allowed[..., 0] = True
        logits = logits.masked_fill(~allowed, -math.inf)
        return F.cross_entropy(logits.reshape(-1, self.vocab), labels.reshape(-1), ignore_index=0)
