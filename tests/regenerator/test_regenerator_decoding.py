"""Batched hybrid inference against the one-at-a-time reference decoder."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from regen_helpers import tiny_config

from models.data.sequences import Sequences
from models.decoding import decode, decode_reference, generative_schedule
from models.regenerator import Regenerator, RegeneratorConfig, RegeneratorInputError


def _sources(num_items: int, n: int, seed: int) -> Sequences:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        row = rng.integers(1, num_items + 1, size=int(rng.integers(1, 16))).tolist()
        if i % 3 == 0:
            row.append(row[0])  # repeated items must not be proposed twice
        rows.append(row)
    return Sequences.from_lists(rows)


def _assert_matches_reference(model: Regenerator, sources: Sequences, config: RegeneratorConfig,
                              batch_size: int) -> np.ndarray:
    decoded = decode(model, sources, config, batch_size=batch_size)
    sched = generative_schedule(len(decoded), config)
    for r in range(len(decoded)):
        expected = decode_reference(model, sources[decoded.source_index[r]], int(decoded.memory[r]),
                                    sched[r], config)
        assert decoded.seqs[r].tolist() == expected, f"row {r}"
    return decoded.seqs.lengths


def _fixed_flags() -> dict:
    fixed = RegeneratorConfig.fixed()
    return {k: getattr(fixed, k) for k in ("encoder_mask_train", "lr_schedule_per", "decode_policy",
                                           "gamma", "emit_pad", "drop_last_token", "original_rows")}


@pytest.fixture(params=["parity", "fixed"])
def profile(request) -> str:
    return request.param


def _config(profile: str, **kw) -> RegeneratorConfig:
    base = tiny_config(**kw)
    return base if profile == "parity" else RegeneratorConfig.model_validate({**base.to_dict(), **_fixed_flags()})


def test_batched_equals_reference_on_random_weights(profile):
    torch.manual_seed(0)
    config = _config(profile)
    model = Regenerator(20, config).double().eval()  # float64: no argmax flips from rounding
    lengths = _assert_matches_reference(model, _sources(20, 25, seed=1), config, batch_size=4)
    assert lengths.max() == config.max_decode_len - 1  # random weights run to the cap


def test_batched_equals_reference_with_pad_emission():
    torch.manual_seed(3)
    config = tiny_config(max_decode_len=14)
    model = Regenerator(12, config).double().eval()
    with torch.no_grad():  # push every logit below the pad's 0 so the pad id gets emitted
        model.decoder_norm.bias.fill_(-0.5)
        model.embedding.weight[1:].abs_()
    sources = _sources(12, 10, seed=2)
    _assert_matches_reference(model, sources, config, batch_size=3)
    decoded = decode(model, sources, config)
    assert (decoded.seqs.items == 0).any()


def test_batched_equals_reference_on_a_trained_model(trained, planted, profile):
    model, _ = trained
    config = _config(profile)
    model = copy.deepcopy(model).double()
    lengths = _assert_matches_reference(model, planted.sources, config, batch_size=7)
    assert lengths.min() < config.max_decode_len - 1  # decodes stop at EOS: compaction is exercised


def test_decoded_rows_follow_the_rules(trained, planted):
    model, _ = trained
    config = RegeneratorConfig.model_validate({**tiny_config().to_dict(), **_fixed_flags(), "gamma": 0.5})
    decoded = decode(model, planted.sources, config, batch_size=5, users=np.arange(101, 149))
    k = model.config.num_memories
    assert len(decoded) == len(planted.sources) * k
    assert decoded.user.tolist() == np.repeat(np.arange(101, 149), k).tolist()
    assert decoded.memory.tolist() == np.tile(np.arange(k), len(planted.sources)).tolist()
    sched = generative_schedule(len(decoded), config)
    for r, row in enumerate(decoded.seqs.to_lists()):
        source = set(planted.sources[decoded.source_index[r]].tolist())
        assert len(set(row)) == len(row)  # no repeats
        assert 0 not in row  # emit_pad off
        assert decoded.eos not in row[:-1]
        for i, token in enumerate(row):
            if not sched[r, i]:
                assert token in source or token == decoded.eos


def test_gamma_zero_keeps_every_token_in_the_source(trained, planted):
    model, _ = trained
    config = RegeneratorConfig.model_validate({**tiny_config().to_dict(), **_fixed_flags(), "gamma": 0.0})
    decoded = decode(model, planted.sources, config)
    for r, row in enumerate(decoded.seqs.to_lists()):
        allowed = set(planted.sources[decoded.source_index[r]].tolist()) | {decoded.eos}
        assert set(row) <= allowed


def test_generative_schedule():
    parity = generative_schedule(4, tiny_config(restrictive_steps=3))
    assert parity.shape == (4, 9)
    assert not parity[:, :3].any() and parity[:, 3:].all()
    config = RegeneratorConfig.model_validate({**tiny_config().to_dict(), **_fixed_flags(), "gamma": 0.3})
    bern = generative_schedule(2000, config)
    assert not bern[:, :2].any()
    assert abs(bern[:, 2:].mean() - 0.3) < 0.02
    assert np.array_equal(bern, generative_schedule(2000, config))  # seeded


def test_decode_reports_progress_and_rejects_bad_sources(trained):
    model, config = trained
    events = []
    decode(model, Sequences.from_lists([[1, 2], [3], [4, 5, 6]]), config, batch_size=2,
           progress=events.append)
    assert [(e.stage, e.done, e.total) for e in events] == [("decode", 2, 3), ("decode", 3, 3)]
    with pytest.raises(RegeneratorInputError, match="outside 1..24"):
        decode(model, Sequences.from_lists([[1, 99]]), config)
    with pytest.raises(RegeneratorInputError, match="no source"):
        decode(model, Sequences.empty(), config)
    with pytest.raises(RegeneratorInputError, match="position table"):
        decode(model, Sequences.from_lists([list(range(1, 20)) * 3]), config)


def test_decode_length_comes_from_the_decoding_config():
    torch.manual_seed(1)
    model = Regenerator(20, tiny_config()).double().eval()  # trained-with max_decode_len 10
    config = tiny_config(max_decode_len=6)
    lengths = _assert_matches_reference(model, _sources(20, 6, seed=4), config, batch_size=4)
    assert lengths.max() == 5


def test_catalogue_slices_and_packed_schedule_change_no_decode(profile, monkeypatch):
    # Generative logits scored in catalogue slices of a few items (as on a GPU
    # with a huge catalogue) and the schedule kept as bits: every decode equals
    # the one-slice run and the reference.
    import models.decoding as decoding

    torch.manual_seed(0)
    config = _config(profile)
    model = Regenerator(20, config).double().eval()
    sources = _sources(20, 25, seed=2)
    whole = decode(model, sources, config, batch_size=4)
    packed = decoding._packed_schedule(60, config, chunk_rows=7)
    assert np.array_equal(np.unpackbits(packed, axis=1, count=config.max_decode_len - 1).astype(bool),
                          generative_schedule(60, config))
    monkeypatch.setattr(decoding, "_LOGIT_CHUNK", 5)  # 1 row x 5 of the 23 tokens per slice
    sliced = _assert_matches_reference(model, sources, config, batch_size=4)
    assert np.array_equal(sliced, whole.seqs.lengths)
    assert decode(model, sources, config, batch_size=4).seqs.to_lists() == whole.seqs.to_lists()


def _forward(profile: str, **kw) -> RegeneratorConfig:
    return RegeneratorConfig.model_validate({**_config(profile, **kw).to_dict(), "copy_order": "forward"})


def test_forward_copying_equals_reference_on_random_weights(profile):
    torch.manual_seed(5)
    config = _forward(profile)
    model = Regenerator(20, config).double().eval()
    sources = _sources(20, 25, seed=6)
    _assert_matches_reference(model, sources, config, batch_size=4)
    assert decode(model, sources, config).seqs.to_lists() != decode(model, sources, _config(profile)).seqs.to_lists()


def test_forward_copying_equals_reference_on_a_trained_model(trained, planted, profile):
    model, _ = trained
    model = copy.deepcopy(model).double()
    _assert_matches_reference(model, planted.sources, _forward(profile), batch_size=7)


def _strip_eos(decoded) -> Sequences:
    return Sequences.from_lists([r[:-1] if r and r[-1] == decoded.eos else r for r in decoded.seqs.to_lists()])


@pytest.mark.parametrize("weights", ["trained", "random"])
def test_forward_copying_keeps_every_decode_in_its_sources_order(trained, planted, weights):
    from models.regenerated import in_source_order

    if weights == "trained":
        model = trained[0]
    else:
        torch.manual_seed(7)
        model = Regenerator(trained[0].num_items, tiny_config()).eval()
    # repeated items in the sources: a later occurrence may still be copied
    rows = [row + row[:2] for row in planted.sources.to_lists()]
    sources = Sequences.from_lists(rows)
    for gamma in (0.0, 0.5):
        base = {**tiny_config().to_dict(), **_fixed_flags(), "gamma": gamma, "emit_pad": False}
        any_order = decode(model, sources, RegeneratorConfig.model_validate(base))
        forward = decode(model, sources, RegeneratorConfig.model_validate({**base, "copy_order": "forward"}))
        assert in_source_order(_strip_eos(forward), sources, forward.source_index).all()
        if weights == "random":  # the released copying does reverse its source
            assert not in_source_order(_strip_eos(any_order), sources, any_order.source_index).all()
        for r, row in enumerate(forward.seqs.to_lists()):
            assert len(set(row)) == len(row)
            if gamma == 0.0:
                assert set(row) <= set(rows[forward.source_index[r]]) | {forward.eos}
