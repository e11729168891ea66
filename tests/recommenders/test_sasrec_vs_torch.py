"""SASRec's hand-written block against PyTorch's ``nn.TransformerEncoderLayer`` (float64).

The reference runs the released code's masks (causal + key padding) on the
padded batch; SASRec relies on a causal mask alone (rows are right-padded) and
zeroes padded positions. Outputs, the one-position ``query`` path used for
ranking, and gradients must agree on every valid position.
"""

from __future__ import annotations

import sys

import pytest
import torch
from torch import Tensor, nn

from models.batching import Batch
from models.recommenders.sasrec import EncoderLayer, SASRec, SASRecConfig

ATOL = 1e-10
LENGTHS = [6, 1, 4, 6, 3]  # unsorted, a one-item row and full-width rows
RENAME = {"attn.qkv.weight": "self_attn.in_proj_weight", "attn.qkv.bias": "self_attn.in_proj_bias",
          "attn.proj.": "self_attn.out_proj.", "fc1.": "linear1.", "fc2.": "linear2.",
          "ln1.": "norm1.", "ln2.": "norm2."}


def _rename(name: str) -> str:
    for a, b in RENAME.items():
        name = name.replace(a, b)
    return name


def _config(**overrides) -> SASRecConfig:
    return SASRecConfig(**{"embed_dim": 16, "ffn_size": 24, "head_num": 2, "max_len": 8, **overrides})


def _layer_pair(config: SASRecConfig, seed: int = 0) -> tuple[EncoderLayer, nn.TransformerEncoderLayer]:
    torch.manual_seed(seed)
    ours = EncoderLayer(config).double()
    with torch.no_grad():  # non-trivial biases and LayerNorm affine terms
        for p in ours.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ref = nn.TransformerEncoderLayer(config.embed_dim, config.head_num, config.ffn_size, dropout=0.0,
                                     activation=config.activation, layer_norm_eps=config.layer_norm_eps,
                                     batch_first=True, dtype=torch.float64)
    ref.load_state_dict({_rename(k): v for k, v in ours.state_dict().items()})  # strict
    return ours, ref


def _valid(lengths: list[int]) -> Tensor:
    return torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]


def _masks(valid: Tensor) -> dict:
    t = valid.shape[1]
    return {"src_mask": torch.ones(t, t, dtype=torch.bool).triu(1), "src_key_padding_mask": ~valid,
            "is_causal": True}


@pytest.mark.parametrize("act", ["gelu", "relu"])
def test_encoder_layer_matches_torch(act):
    ours, ref = _layer_pair(_config(activation=act))
    ours.eval(), ref.train()  # ref.train(): the slow path, which also keeps grads
    valid = _valid(LENGTHS)
    x = torch.randn(*valid.shape, 16, dtype=torch.float64)
    got, want = ours(x), ref(x, **_masks(valid))
    torch.testing.assert_close(got[valid], want[valid], atol=ATOL, rtol=1e-8)

    w = torch.randn(*got[valid].shape, dtype=torch.float64)
    (got[valid] * w).sum().backward()
    (want[valid] * w).sum().backward()
    ref_params = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[_rename(name)].grad, atol=ATOL, rtol=1e-8, msg=name)


def test_query_path_matches_torch_at_the_queried_positions():
    ours, ref = _layer_pair(_config(), seed=1)
    ours.eval(), ref.eval()
    valid = _valid(LENGTHS)
    x = torch.randn(*valid.shape, 16, dtype=torch.float64)
    query = torch.tensor(LENGTHS) - 1
    with torch.no_grad():
        got = ours(x, query)[:, 0]  # (B, d)
        want = ref(x, **_masks(valid))[torch.arange(len(LENGTHS)), query]
    torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-8)


def test_training_attention_path_matches_torch(monkeypatch):
    """On CPU in training mode the attention is spelled out to use the fast dropout
    mask; with the mask made the identity it must equal PyTorch's layer."""
    identity = lambda x, p, training: x  # noqa: E731
    monkeypatch.setattr(sys.modules[EncoderLayer.__module__], "dropout", identity)
    monkeypatch.setattr(sys.modules["models.recommenders.base"], "dropout", identity)
    ours, ref = _layer_pair(_config(dropout_rate=0.5), seed=2)
    ours.train(), ref.eval()
    valid = _valid(LENGTHS)
    x = torch.randn(*valid.shape, 16, dtype=torch.float64)
    with torch.no_grad():
        got, want = ours(x), ref(x, **_masks(valid))
    torch.testing.assert_close(got[valid], want[valid], atol=ATOL, rtol=1e-8)


def test_sasrec_forward_matches_a_torch_encoder_stack():
    torch.manual_seed(3)
    config = _config(layer_num=2)
    model = SASRec(30, config).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        model.item_emb.weight[0].zero_()
    layer = nn.TransformerEncoderLayer(16, 2, 24, dropout=0.0, activation="gelu", layer_norm_eps=1e-12,
                                       batch_first=True, dtype=torch.float64)
    ref = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    ref.layers.load_state_dict({_rename(k): v for k, v in model.encoder.layers.state_dict().items()})
    valid = _valid(LENGTHS)
    items = torch.randint(1, 31, valid.shape) * valid
    lengths = torch.tensor(LENGTHS)
    batch = Batch(items, items, lengths, torch.zeros(len(LENGTHS), dtype=torch.uint8), torch.arange(len(LENGTHS)))
    with torch.no_grad():
        got = model(batch)
        x = model.item_emb(items) + model.pos_emb.weight[: items.shape[1]]
        want = ref(x, mask=torch.ones(6, 6, dtype=torch.bool).triu(1), src_key_padding_mask=~valid,
                   is_causal=True)
        last = model.last_hidden(batch)
    torch.testing.assert_close(got[valid], want[valid], atol=ATOL, rtol=1e-8)
    assert bool((got[~valid] == 0).all())
    torch.testing.assert_close(last, want[torch.arange(len(LENGTHS)), lengths - 1], atol=ATOL, rtol=1e-8)
