"""The regenerator's pre-training loop (spec §4.2-4.4): Adam, cosine schedule,
Gumbel temperature decay, entropy term; every setting is a field of
:class:`models.config.RegeneratorConfig`. With ``world_size > 1`` the same
loop runs data-parallel (models/distributed.py)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from models.config import RegeneratorConfig
from models.data.sequences import Sequences
from models.progress import Progress, ProgressEvent, no_progress
from models.regenerator.data import PairBatches, check_pairs
from models.regenerator.model import NoiseRows, Regenerator, resolve_device


def train_regenerator(src: Sequences, tgt: Sequences, num_items: int, config: RegeneratorConfig,
                      item_embeddings: Tensor | None = None,
                      progress: Progress = no_progress) -> Regenerator:
    """Pre-train the regenerator on (sequence, pattern) pairs (spec §4.2-4.4).

    Seeds its own RNG streams from ``config.seed`` without touching the
    caller's global torch RNG state. Returns the final weights in eval mode.
    """
    check_pairs(src, tgt, num_items, config.max_src_len)
    device = resolve_device(config.device)
    if config.world_size > 1:
        return _train_regenerator_distributed(src, tgt, num_items, config, item_embeddings, progress, device)
    fork = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork):
        torch.manual_seed(config.seed)
        model = Regenerator(num_items, config, item_embeddings).to(device)
        batches = PairBatches(src, tgt, model.sos, model.eos, config.batch_size, config.share_sources, device)
        opt = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas,
                               eps=config.adam_eps, fused=True)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs)
        shuffle = np.random.default_rng(config.seed)
        per_epoch = len(batches)
        tau = config.tau_start
        model.train()
        for epoch in range(config.epochs):
            for i, (src_b, tgt_b, pair_src) in enumerate(batches.epoch(shuffle)):
                rec, ent = model.losses(src_b, tgt_b, tau, pair_src=pair_src)
                loss = rec + config.entropy_weight * ent
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                tau = max(tau * config.tau_decay, config.tau_min)
                if config.lr_schedule_per == "batch":
                    sched.step()
                progress(ProgressEvent("regenerator", epoch * per_epoch + i + 1, config.epochs * per_epoch,
                                       epoch=epoch + 1, metrics={"loss": rec.item(), "entropy": ent.item(),
                                                                 "tau": tau, "lr": opt.param_groups[0]["lr"]}))
            if config.lr_schedule_per == "epoch":
                sched.step()
    model.eval()
    return model


# -- data-parallel training (models/distributed.py) ----------------------------


class _PairLoss(nn.Module):
    """DDP's view of the regenerator: the forward is one rank's share of the
    global batch's loss (rec scaled by its token share, entropy by its row share)."""

    def __init__(self, model: Regenerator, entropy_weight: float) -> None:
        super().__init__()
        self.model, self.entropy_weight = model, entropy_weight

    def forward(self, batch, tau: float, noise: NoiseRows | None, tok_scale: float, row_scale: float):
        from models.distributed import zero_loss

        if batch is None:
            zero = zero_loss(self.model)
            return zero, zero.detach(), zero.detach()
        src_b, tgt_b, pair_src = batch
        rec, ent = self.model.losses(src_b, tgt_b, tau, pair_src=pair_src, noise=noise)
        loss = rec * tok_scale + self.entropy_weight * ent * row_scale
        return loss, rec.detach(), ent.detach()


def _train_regenerator_distributed(src: Sequences, tgt: Sequences, num_items: int, config: RegeneratorConfig,
                                   item_embeddings: Tensor | None, progress: Progress,
                                   device: torch.device) -> Regenerator:
    from models.distributed import from_numpy_state, launch

    table = None if item_embeddings is None else item_embeddings.detach().cpu()
    state = launch(_regenerator_rank, config.world_size, (src, tgt, num_items, config, table), progress, device)
    model = Regenerator(num_items, config)
    model.load_state_dict(from_numpy_state(state), strict=True)
    return model.to(device).eval()


def _regenerator_rank(ctx, progress: Progress, src: Sequences, tgt: Sequences, num_items: int,
                      config: RegeneratorConfig, item_embeddings: Tensor | None):
    """One rank of data-parallel regenerator training (a spawned process).

    Every rank walks the same global batches (same shuffle seed) and takes a
    contiguous shard of each; the Gumbel noise comes from a generator that
    starts where a single process's global RNG would, so with dropout 0 the
    per-step losses equal a single-process run's up to float rounding.
    Dropout masks come from the rank's own stream (rank 0 keeps the seed's)."""
    from torch.nn.parallel import DistributedDataParallel

    from models.distributed import shard_weight, to_numpy_state

    device = ctx.device
    torch.manual_seed(config.seed)
    model = Regenerator(num_items, config, item_embeddings).to(device)
    noise_gen = torch.Generator(device=device)
    noise_gen.set_state(torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state())
    if ctx.rank:
        torch.manual_seed(config.seed + 1_000_003 * ctx.rank)
    batches = PairBatches(src, tgt, model.sos, model.eos, config.batch_size, config.share_sources, device)
    net = DistributedDataParallel(_PairLoss(model, config.entropy_weight),
                                  device_ids=[device.index or 0] if device.type == "cuda" else None)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas, eps=config.adam_eps, fused=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs)
    shuffle = np.random.default_rng(config.seed)
    per_epoch = len(batches)
    tau = config.tau_start
    model.train()
    for epoch in range(config.epochs):
        for i, rows in enumerate(batches.epoch_rows(shuffle)):
            part = ctx.shard(len(rows))
            mine = rows[part]
            tokens = batches.tgt_len + 1  # labels per pair: the pattern's items and EOS
            tok, tok_all = float(tokens[mine].sum()), float(tokens[rows].sum())
            noise = NoiseRows(part.start, len(rows), noise_gen)
            loss, rec, ent = net(batches.batch(mine) if len(mine) else None, tau, noise,
                                 shard_weight(1.0, tok_all, ctx.world_size),
                                 shard_weight(len(mine), len(rows), ctx.world_size))
            if not len(mine):  # keep the noise stream in step with the other ranks
                torch.empty((len(rows), config.num_memories), device=device).exponential_(generator=noise_gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tau = max(tau * config.tau_decay, config.tau_min)
            if config.lr_schedule_per == "batch":
                sched.step()
            glob = ctx.all_sum([float(rec) * tok / tok_all, float(ent) * len(mine) / len(rows)])
            progress(ProgressEvent("regenerator", epoch * per_epoch + i + 1, config.epochs * per_epoch,
                                   epoch=epoch + 1, metrics={"loss": float(glob[0]), "entropy": float(glob[1]),
                                                             "tau": tau, "lr": opt.param_groups[0]["lr"]}))
        if config.lr_schedule_per == "epoch":
            sched.step()
    return to_numpy_state(model.state_dict()) if ctx.is_main else None
