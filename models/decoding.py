"""Batched hybrid inference (spec §5.1-5.2, §12.3; quirks Q2, Q12, Q34).

Every source is decoded once per memory k (user-major rows ``u * K + k``),
greedily, in large batches:

* each source is encoded once (bidirectional, no mask) and its K memories are
  projected once; the decoder's cross-attention keys/values of every memory
  are computed once per batch;
* the decoder runs incrementally with a key/value cache of its self-attention;
* restrictive steps score only the (deduplicated, sorted) tokens of the row's
  source, generative steps score the whole vocabulary; already-emitted tokens
  are masked by a scatter of the emitted ids (equivalent to the reference's
  full boolean masks, without building them);
* rows that emitted EOS are dropped from the batch as they finish;
* under ``copy_order='forward'`` each row keeps the position of the last
  source item it emitted: restrictive steps copy only items after it, and
  generative steps may not emit a source item left behind it.

:func:`decode_reference` is the reference algorithm, one sequence at a time,
the full decoder re-run on the whole prefix every step (no cache). It is the
correctness oracle of :func:`decode` and the baseline of the decoding
benchmark.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from models.data.sequences import Sequences
from models.progress import Progress, ProgressEvent, no_progress
from models.regenerator import (
    Layout,
    Regenerator,
    RegeneratorConfig,
    RegeneratorInputError,
    key_bias,
    wrap_tokens,
)


@dataclass(frozen=True)
class Decoded:
    """Raw greedy decodes: row r holds the tokens emitted after SOS (ending
    with EOS when one was emitted; may hold the pad id 0 when ``emit_pad``)."""

    seqs: Sequences
    user: np.ndarray  # (R,) int64 user id of each row
    memory: np.ndarray  # (R,) int64 memory index k
    source_index: np.ndarray  # (R,) int64 row of the decoded ``sources``
    sources: Sequences  # the decoded sources, for provenance statistics
    num_items: int

    @property
    def eos(self) -> int:
        return self.num_items + 2

    def __len__(self) -> int:
        return len(self.seqs)

    def take(self, index: np.ndarray) -> Decoded:
        """The decodes at ``index`` (their sources kept whole)."""
        index = np.asarray(index, dtype=np.int64)
        return Decoded(self.seqs.take(index), self.user[index], self.memory[index], self.source_index[index],
                       self.sources, self.num_items)


def generative_schedule(n_rows: int, config: RegeneratorConfig) -> np.ndarray:
    """(n_rows, max_decode_len - 1) bool: True where decode step i of row r is
    generative. Parity (Q2): the first ``restrictive_steps`` steps are
    restrictive, every later one generative. Bernoulli: after the forced
    restrictive steps each step is generative with probability ``gamma``,
    drawn from ``config.seed``, so batched and one-at-a-time decoding agree."""
    steps = config.max_decode_len - 1
    if config.decode_policy == "parity":
        out = np.ones((n_rows, steps), dtype=bool)
    else:
        out = np.random.default_rng(config.seed).random((n_rows, steps)) < config.gamma
    out[:, : config.restrictive_steps] = False
    return out


def _packed_schedule(n_rows: int, config: RegeneratorConfig, chunk_rows: int = 1 << 16) -> np.ndarray:
    """:func:`generative_schedule` as bits, (n_rows, ceil(steps / 8)) uint8, drawn
    in chunks of rows from the same Generator stream (the same values as one
    draw): 3 bytes a row instead of a (rows, steps) array of the whole dataset."""
    steps = config.max_decode_len - 1
    out = np.empty((n_rows, (steps + 7) // 8), dtype=np.uint8)
    rng = np.random.default_rng(config.seed)
    for a in range(0, n_rows, chunk_rows):
        m = min(chunk_rows, n_rows - a)
        if config.decode_policy == "parity":
            block = np.ones((m, steps), dtype=bool)
        else:
            block = rng.random((m, steps)) < config.gamma
        block[:, : config.restrictive_steps] = False
        out[a : a + m] = np.packbits(block, axis=1)
    return out


def _check_sources(model: Regenerator, sources: Sequences) -> None:
    if len(sources) == 0:
        raise RegeneratorInputError("no source sequences to decode")
    lengths = sources.lengths
    if lengths.min() < 1:
        raise RegeneratorInputError(f"source row {int(np.argmin(lengths))} is empty")
    if lengths.max() + 2 > model.config.max_src_len:
        raise RegeneratorInputError(
            f"source row {int(np.argmax(lengths))} has {int(lengths.max())} items; the "
            f"regenerator's position table fits {model.config.max_src_len - 2}")
    bad = (sources.items < 1) | (sources.items > model.num_items)
    if bad.any():
        raise RegeneratorInputError(
            f"source item id {int(sources.items[bad][0])} is outside 1..{model.num_items}")


# -- the batched decoder ------------------------------------------------------


@dataclass
class _Batch:
    """Per-row decoding state; every tensor is indexed by the live rows first.

    Keys are stored transposed, (r, h, hd, S), so every attention product is a
    plain batched matmul over ``r * h`` without a copy per step.
    """

    rows: Tensor  # (r,) rows of this batch, u * K + k
    prev: Tensor  # (r,) last emitted token
    emitted: Tensor  # (r, steps + 1) SOS then emitted tokens (unused slots hold SOS)
    cand: Tensor  # (r, C) sorted source tokens
    cand_ok: Tensor  # (r, C) first occurrence of a real token (every occurrence under copy_order 'forward')
    cand_pos: Tensor  # (r, C) position of each candidate in the wrapped source (SOS at 0)
    last: Tensor  # (r,) position of the last source item emitted (0: none yet)
    cross: list[tuple[Tensor, Tensor]]  # per layer keys (r, h, hd, S), values (r, h, S, hd)
    cross_bias: Tensor  # (r, h, 1, S) 0 for real source tokens, -inf for pads
    cache: list[tuple[Tensor, Tensor]]  # per layer keys (r, h, hd, steps), values (r, h, steps, hd)

    def keep(self, keep: Tensor) -> _Batch:
        return _Batch(
            self.rows[keep], self.prev[keep], self.emitted[keep], self.cand[keep],
            self.cand_ok[keep], self.cand_pos[keep], self.last[keep],
            [(k[keep], v[keep]) for k, v in self.cross], self.cross_bias[keep],
            [(k[keep], v[keep]) for k, v in self.cache],
        )


def _attend(q: Tensor, k_t: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
    """One query per row: q (r, h, hd), k_t (r, h, hd, S), v (r, h, S, hd),
    bias (r, h, 1, S) or None -> (r, h*hd). Spelled out because the fused CPU
    kernel has a large fixed cost at query length 1."""
    r, h, hd = q.shape
    q = q.reshape(r * h, 1, hd)
    k_t, v = k_t.flatten(0, 1), v.flatten(0, 1)
    scale = hd**-0.5
    if bias is None:
        scores = torch.bmm(q, k_t).mul_(scale)
    else:
        scores = torch.baddbmm(bias.flatten(0, 1), q, k_t, alpha=scale)  # (r*h, 1, S)
    return torch.bmm(scores.softmax(-1), v).view(r, h * hd)


def _decoder_step(model: Regenerator, x: Tensor, i: int, st: _Batch) -> Tensor:
    """One incremental decoder step: x (r, d) embedded token at position i -> (r, d)."""
    r, d = x.shape
    heads = model.config.n_heads
    for layer, (ck, cv), (k_cache, v_cache) in zip(model.decoder_layers, st.cross, st.cache, strict=True):
        sa, ca = layer.self_attn, layer.cross_attn
        q, k, v = F.linear(x, sa.in_proj_weight, sa.in_proj_bias).view(r, 3, heads, -1).unbind(1)
        k_cache[:, :, :, i] = k  # (r, h, hd)
        v_cache[:, :, i, :] = v
        a = _attend(q, k_cache[..., : i + 1], v_cache[:, :, : i + 1], None)
        x = layer.norm1(x + sa.out_proj(a))
        q = F.linear(x, ca.in_proj_weight[:d], ca.in_proj_bias[:d]).view(r, heads, -1)
        x = layer.norm2(x + ca.out_proj(_attend(q, ck, cv, st.cross_bias)))
        x = layer.norm3(x + layer.ff(x))
    return model.decoder_norm(x)


_LOGIT_CHUNK = 1 << 21  # floats per chunk of generative logits on CPU (8 MB in float32)
_GPU_LOGIT_CHUNK = 1 << 26  # on GPU (256 MB): a 1M-item catalogue is scored in slices


def _generative_argmax(h: Tensor, emitted: Tensor, table: Tensor, emit_pad: bool,
                       budget: int | None = None) -> Tensor:
    """Greedy token of each row over the whole vocabulary, emitted tokens (and
    pad unless ``emit_pad``) excluded. The (rows, vocab) logits are computed in
    catalogue slices of at most ``budget`` floats; a later slice wins only with
    a strictly larger score, so ties go to the smallest id as in one argmax."""
    vocab = table.shape[0]
    cols = vocab if budget is None else max(1, budget // max(1, len(h)))
    if cols >= vocab:
        logits = h @ table.t()  # (r, N+3)
        logits.scatter_(1, emitted, -math.inf)  # no repeats; SOS is in ys
        if not emit_pad:
            logits[:, 0] = -math.inf
        return logits.argmax(1)
    best = torch.full((len(h),), -math.inf, dtype=h.dtype, device=h.device)
    arg = torch.zeros(len(h), dtype=torch.long, device=h.device)
    for a in range(0, vocab, cols):
        b = min(vocab, a + cols)
        logits = torch.cat([h @ table[a:b].t(), h.new_zeros(len(h), 1)], 1)  # last column: a sink
        local = emitted - a
        local = local.masked_fill((local < 0) | (local >= b - a), b - a)
        logits.scatter_(1, local, -math.inf)
        if a == 0 and not emit_pad:
            logits[:, 0] = -math.inf
        val, idx = logits[:, : b - a].max(1)
        better = val > best
        best = torch.where(better, val, best)
        arg = torch.where(better, idx + a, arg)
    return arg


def _choose(model: Regenerator, h: Tensor, gen: Tensor, st: _Batch, filled: int,
            emit_pad: bool, forward: bool = False) -> Tensor:
    """Greedy next token per row under the restrictive or generative mask;
    ``forward``: a restrictive step copies only items after ``st.last``."""
    table = model.embedding.weight
    emitted = st.emitted[:, :filled]
    out = torch.empty(len(h), dtype=torch.long, device=h.device)
    if gen.any():
        g = gen.nonzero().squeeze(1) if not gen.all() else None
        if forward:  # source items left behind are excluded like emitted ones
            emitted = torch.cat([emitted, _behind(st)], 1)
        hg, em = (h, emitted) if g is None else (h[g], emitted[g])
        # On CPU, row chunks keep the (rows, N+3) logits cache-sized: one huge
        # matrix is slower to fill and scan than several small ones.
        # Elsewhere all rows at once, the catalogue in slices of a fixed budget.
        cpu = h.device.type == "cpu"
        step = max(1, _LOGIT_CHUNK // model.vocab) if cpu else len(hg)
        budget = _LOGIT_CHUNK if cpu else _GPU_LOGIT_CHUNK
        nxt = torch.cat([_generative_argmax(hg[a : a + step], em[a : a + step], table, emit_pad, budget)
                         for a in range(0, len(hg), step)])
        if g is None:
            return nxt
        out[g] = nxt
    if not gen.all():
        rs = (~gen).nonzero().squeeze(1) if gen.any() else None
        hr, em, cand, ok = (h, emitted, st.cand, st.cand_ok) if rs is None else \
            (h[rs], emitted[rs], st.cand[rs], st.cand_ok[rs])
        if forward:
            pos, last = (st.cand_pos, st.last) if rs is None else (st.cand_pos[rs], st.last[rs])
            ok = ok & (pos > last[:, None])
        logits = torch.bmm(F.embedding(cand, table), hr[:, :, None]).squeeze(2)  # (rr, C)
        seen = (cand[:, :, None] == em[:, None, :]).any(2)
        logits.masked_fill_(~ok | seen, -math.inf)
        # cand is sorted, so ties resolve to the smallest id, as a full-vocabulary argmax does
        nxt = cand.gather(1, logits.argmax(1, keepdim=True)).squeeze(1)
        if rs is None:
            return nxt
        out[rs] = nxt
    return out


def _source_candidates(src: Tensor, every_occurrence: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """src (B, S) padded token rows -> sorted tokens, the mask of their real
    first occurrences (of every real occurrence when ``every_occurrence``) and
    their positions in src. The sort is stable, so equal tokens stand in the
    order of their positions: an argmax over equal logits takes the earliest."""
    cand, pos = src.sort(dim=1, stable=True)
    ok = cand != 0
    if not every_occurrence:
        ok[:, 1:] &= cand[:, 1:] != cand[:, :-1]
    return cand, ok, pos


def _behind(st: _Batch) -> Tensor:
    """(r, C) the source tokens that occur only at or before each row's ``last``
    position (SOS, which is never emitted, elsewhere)."""
    ahead = st.cand_ok & (st.cand_pos > st.last[:, None])  # cand_ok: real tokens only
    has_later = (st.cand[:, :, None] == st.cand.masked_fill(~ahead, -1)[:, None, :]).any(2)
    return torch.where(st.cand_ok & ~has_later, st.cand, st.emitted[:, :1])


def _advance(st: _Batch, nxt: Tensor) -> None:
    """Move each row's source position to the earliest occurrence of its new
    token after it; a token its source lacks (or holds only earlier) leaves it."""
    at = (st.cand == nxt[:, None]) & st.cand_ok & (st.cand_pos > st.last[:, None])
    big = torch.iinfo(st.cand_pos.dtype).max
    first = st.cand_pos.masked_fill(~at, big).min(1).values
    st.last = torch.where(first < big, first, st.last)


@torch.inference_mode()
def _decode_batch(model: Regenerator, src: Tensor, sched: Tensor, emit_pad: bool,
                  forward: bool = False) -> tuple[Tensor, Tensor]:
    """Decode sources src (Bu, S) x all K memories; sched (Bu*K, steps) is the
    generative schedule of the rows u * K + k; ``forward``: copy_order
    'forward'. -> tokens (Bu*K, steps), lengths."""
    c = model.config
    bu, s = src.shape
    kk, d, steps = c.num_memories, c.d_model, sched.shape[1]
    dev = src.device
    memory, _, valid = model.encode(src, causal=False, packed=False)  # (Bu*S, d), no mask
    mem = model.memories(memory.view(bu, s, d))  # (Bu, S, K, d)
    mem = mem.permute(0, 2, 1, 3).reshape(bu * kk, s, d)  # rows u * K + k
    cand, ok, cand_pos = _source_candidates(src, every_occurrence=forward)
    r = bu * kk
    hd = d // c.n_heads
    st = _Batch(
        rows=torch.arange(r, device=dev),
        prev=torch.full((r,), model.sos, dtype=torch.long, device=dev),
        emitted=torch.full((r, steps + 1), model.sos, dtype=torch.long, device=dev),
        cand=cand.repeat_interleave(kk, 0), cand_ok=ok.repeat_interleave(kk, 0),
        cand_pos=cand_pos.repeat_interleave(kk, 0), last=torch.zeros(r, dtype=torch.long, device=dev),
        cross=[(k.transpose(2, 3).contiguous(), v) for ((k, v, _),) in
               (layer.cross_kv(mem.reshape(r * s, d), Layout.dense(r, s)) for layer in model.decoder_layers)],
        cross_bias=key_bias(valid, mem.dtype).repeat_interleave(kk, 0).expand(r, c.n_heads, 1, s)
        .contiguous(),
        cache=[(mem.new_empty(r, c.n_heads, hd, steps), mem.new_empty(r, c.n_heads, steps, hd))
               for _ in model.decoder_layers],
    )
    out = torch.zeros(r, steps, dtype=torch.long, device=dev)
    out_len = torch.zeros(r, dtype=torch.long, device=dev)
    done = torch.zeros(r, dtype=torch.bool, device=dev)
    pos = model.position.weight
    for i in range(steps):
        x = model.embedding(st.prev) + pos[i]  # (r, d)
        h = _decoder_step(model, x, i, st)
        nxt = _choose(model, h, sched[st.rows, i], st, i + 1, emit_pad, forward)
        if forward:
            _advance(st, nxt)
        live = st.rows[~done]
        out[live, i] = nxt[~done]
        out_len[live] = i + 1
        st.emitted[:, i + 1] = nxt
        st.prev = nxt
        done |= nxt == model.eos
        finished = int(done.sum())
        if finished == len(done):
            break
        # Dropping finished rows copies every cache: wait until a tenth are done.
        if finished * 10 >= len(done):
            st = st.keep((~done).nonzero().squeeze(1))
            done = done[~done]
    return out, out_len


def decode(model: Regenerator, sources: Sequences, config: RegeneratorConfig,
           batch_size: int = 512, progress: Progress = no_progress,
           users: np.ndarray | None = None) -> Decoded:
    """Greedy hybrid decoding of every source x every memory (spec §5.1-5.2).

    ``config`` supplies the decoding flags (max_decode_len, restrictive_steps,
    decode_policy, gamma, seed, emit_pad); K and the vocabulary come from the
    model. ``batch_size`` counts sources (rows = batch_size * K). ``users``
    (default 1..len(sources)) labels the rows. The model is left in eval mode.
    """
    _check_sources(model, sources)
    if config.max_decode_len > model.config.max_src_len:
        raise RegeneratorInputError("max_decode_len exceeds the regenerator's position table")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n, kk = len(sources), model.config.num_memories
    users = np.arange(1, n + 1, dtype=np.int64) if users is None else np.asarray(users, np.int64)
    if users.shape != (n,):
        raise ValueError(f"users must have one id per source ({n}), got shape {users.shape}")
    model.eval()
    dev = model.embedding.weight.device
    steps = config.max_decode_len - 1
    # Bounded buffers: the schedule as bits, sources wrapped per batch, and each
    # batch's decodes kept as their real tokens only (no (rows, steps) array).
    sched = _packed_schedule(n * kk, config)
    order = np.argsort(sources.lengths, kind="stable")  # similar lengths share a batch: little padding
    parts_rows, parts_len, parts_items = [], [], []
    done = 0
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        src_np, _ = wrap_tokens(sources.take(idx), model.sos, model.eos)
        src = torch.from_numpy(src_np).to(dev)
        # a batch holds the sources of length-sorted users: rows u * K + k
        glob = (idx[:, None] * kk + np.arange(kk)[None, :]).reshape(-1)
        batch_sched = np.unpackbits(sched[glob], axis=1, count=steps).astype(bool)
        local, local_len = _decode_batch(model, src, torch.from_numpy(batch_sched).to(dev), config.emit_pad,
                                         config.copy_order == "forward")
        local, local_len = local.cpu().numpy(), local_len.cpu().numpy()
        parts_rows.append(glob)
        parts_len.append(local_len)
        parts_items.append(local[np.arange(steps)[None, :] < local_len[:, None]])
        done += len(idx)
        progress(ProgressEvent("decode", done, n, message=f"{done * kk} sequences decoded"))
    in_batch_order = Sequences.from_lengths(np.concatenate(parts_items), np.concatenate(parts_len))
    seqs = in_batch_order.take(np.argsort(np.concatenate(parts_rows)))  # to user-major rows
    return Decoded(seqs, np.repeat(users, kk), np.tile(np.arange(kk, dtype=np.int64), n),
                   np.repeat(np.arange(n, dtype=np.int64), kk), sources, model.num_items)


# -- the reference, one sequence at a time -------------------------------------


@torch.no_grad()
def decode_reference(model: Regenerator, source: Sequence[int], k: int,
                     generative: Sequence[bool], config: RegeneratorConfig) -> list[int]:
    """Spec §5.2 as released: batch of one, the memory MLP and the whole decoder
    re-run on the full prefix at every step, full-vocabulary boolean masks.
    Returns the tokens emitted after SOS (EOS included when emitted)."""
    model.eval()
    dev = model.embedding.weight.device
    src = torch.tensor([[model.sos, *map(int, source), model.eos]], device=dev)
    memory, _, _ = model.encode(src, causal=False, packed=False)  # (S, d), no mask
    s, d = src.shape[1], model.config.d_model
    ys = [model.sos]
    last = 0  # position in src of the last source item emitted (copy_order 'forward')
    for i in range(config.max_decode_len - 1):
        mem_k = model.memories(memory)[:, k, :]  # (S, d)
        cross = [layer.cross_kv(mem_k, Layout.dense(1, s)) for layer in model.decoder_layers]
        t = len(ys)
        emb = model.embed(torch.tensor([ys], device=dev), torch.arange(t, device=dev)).view(t, d)
        h = model.decode_hidden(emb, Layout.dense(1, t), cross)[-1]
        logits = h @ model.embedding.weight.t()  # (N+3,)
        allowed = torch.zeros(model.vocab, dtype=torch.bool, device=dev)
        if generative[i]:
            allowed[:] = True
            allowed[0] = config.emit_pad
            if config.copy_order == "forward":  # no source item left behind
                allowed[src[0, 1 : last + 1]] = False
                allowed[src[0, last + 1 :]] = True
        elif config.copy_order == "forward":
            allowed[src[0, last + 1 :]] = True
        else:
            allowed[src[0]] = True
        allowed[torch.tensor(ys, device=dev)] = False
        nxt = int(logits.masked_fill(~allowed, -math.inf).argmax())
        ys.append(nxt)
        later = [j for j in range(last + 1, s) if int(src[0, j]) == nxt]
        last = later[0] if later else last
        if nxt == model.eos:
            break
    return ys[1:]
