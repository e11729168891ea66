"""The regenerator's hand-written layers against PyTorch's own (float64).

Weights are copied into ``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer``
(and the stacks ``nn.TransformerEncoder`` / ``nn.TransformerDecoder``), which
run on the plain padded batch with explicit padding and causal masks; ours run
on the packed layout (real tokens only, attention padded per row group) or on
the dense one. Outputs and parameter gradients must agree on every real token.
"""

from __future__ import annotations

import sys

import pytest
import torch
from regen_helpers import tiny_config
from torch import Tensor, nn

from models.regenerator import DecoderLayer, EncoderLayer, Layout, Regenerator, key_bias

D, HEADS, FFN, EPS = 16, 2, 24, 1e-12
ATOL = 1e-10


def _tokens(lengths: list[int], vocab: int, seed: int) -> Tensor:
    """(B, max(lengths)) ids in 1..vocab-1, right-padded with 0."""
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for r, n in enumerate(lengths):
        out[r, :n] = torch.randint(1, vocab, (n,), generator=g)
    return out


def _layout(valid: Tensor, mode: str, causal: bool = False) -> Layout:
    """A layout with self-attention and cross-attention biases, as Regenerator.encode builds them."""
    b, s = valid.shape
    layout = Layout.dense(b, s) if mode == "dense" else Layout.packed(valid, 3 if mode == "groups" else 1)
    pad = key_bias(valid, torch.float64)
    for g in layout.groups:
        g.key_bias = g.bias = pad[g.rows, :, :, : g.length]
        if causal:
            g.bias = g.bias + torch.full((g.length, g.length), -torch.inf, dtype=torch.float64).triu(1)
    return layout


def _causal(t: int) -> Tensor:
    return torch.ones(t, t, dtype=torch.bool).triu(1)  # True = may not attend


def _perturb_(module: nn.Module, seed: int) -> None:
    """Non-trivial LayerNorm and bias values, so a swapped or missing term shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _grads_match(ours: nn.Module, ref: nn.Module, rename: dict[str, str] | None = None) -> None:
    rename = rename or {}
    ref_grads = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        for a, b in rename.items():
            name = name.replace(a, b)
        q = ref_grads[name]
        assert p.grad is not None and q.grad is not None, name
        torch.testing.assert_close(p.grad, q.grad, atol=ATOL, rtol=1e-8, msg=name)


LENGTHS = [7, 2, 5, 7, 1, 4]  # unsorted, with a one-token row and full-width rows
MODES = ["packed", "groups", "dense"]


@pytest.mark.parametrize("act", ["gelu", "relu"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("causal", [False, True])
def test_encoder_layer_matches_torch(mode, causal, act):
    torch.manual_seed(0)
    ours = EncoderLayer(D, HEADS, FFN, 0.3, act, EPS).double().eval()
    _perturb_(ours, 1)
    ref = nn.TransformerEncoderLayer(D, HEADS, FFN, dropout=0.0, activation=act, layer_norm_eps=EPS,
                                     batch_first=True, dtype=torch.float64)
    ref.load_state_dict(ours.state_dict())  # strict: the parameter names are nn's
    valid = _tokens(LENGTHS, 5, 0) != 0
    x = torch.randn(*valid.shape, D, dtype=torch.float64)
    layout = _layout(valid, mode, causal)

    got = layout.to_padded(ours(layout.to_packed(x), layout, causal=False))
    mask = _causal(valid.shape[1]) if causal else None
    want = ref.train()(x, src_mask=mask, src_key_padding_mask=~valid, is_causal=causal)  # slow path
    torch.testing.assert_close(got[valid], want[valid], atol=ATOL, rtol=1e-8)

    w = torch.randn(*got[valid].shape, dtype=torch.float64)
    (got[valid] * w).sum().backward()
    (want[valid] * w).sum().backward()
    _grads_match(ours, ref)


def test_encoder_layer_causal_flag_matches_a_causal_bias():
    """``forward(causal=True)`` (the condition encoder's call) equals a causal bias in the layout."""
    torch.manual_seed(0)
    ours = EncoderLayer(D, HEADS, FFN, 0.0, "gelu", EPS).double().eval()
    _perturb_(ours, 2)
    ref = nn.TransformerEncoderLayer(D, HEADS, FFN, dropout=0.0, activation="gelu", layer_norm_eps=EPS,
                                     batch_first=True, dtype=torch.float64).eval()
    ref.load_state_dict(ours.state_dict())
    valid = _tokens(LENGTHS, 5, 1) != 0
    x = torch.randn(*valid.shape, D, dtype=torch.float64)
    layout = _layout(valid, "groups", causal=False)
    got = layout.to_padded(ours(layout.to_packed(x), layout, causal=True))
    with torch.no_grad():
        want = ref(x, src_mask=_causal(valid.shape[1]), src_key_padding_mask=~valid, is_causal=True)
    torch.testing.assert_close(got[valid], want[valid], atol=ATOL, rtol=1e-8)


def test_encoder_layer_training_attention_path_matches_torch(monkeypatch):
    """In training mode, attention is spelled out (scores, softmax, the fast dropout
    mask). With the mask made the identity, that path must equal PyTorch's."""
    layers = sys.modules[EncoderLayer.__module__]
    monkeypatch.setattr(layers, "dropout", lambda x, p, training, native=False: x)
    torch.manual_seed(0)
    ours = EncoderLayer(D, HEADS, FFN, 0.5, "gelu", EPS).double().train()
    _perturb_(ours, 3)
    ref = nn.TransformerEncoderLayer(D, HEADS, FFN, dropout=0.0, activation="gelu", layer_norm_eps=EPS,
                                     batch_first=True, dtype=torch.float64).eval()
    ref.load_state_dict(ours.state_dict())
    valid = _tokens(LENGTHS, 5, 2) != 0
    x = torch.randn(*valid.shape, D, dtype=torch.float64)
    layout = _layout(valid, "groups", causal=True)
    got = layout.to_padded(ours(layout.to_packed(x), layout))
    with torch.no_grad():
        want = ref(x, src_mask=_causal(valid.shape[1]), src_key_padding_mask=~valid, is_causal=True)
    torch.testing.assert_close(got[valid], want[valid], atol=ATOL, rtol=1e-8)


def _decoder_ref(ours: DecoderLayer, act: str) -> nn.TransformerDecoderLayer:
    ref = nn.TransformerDecoderLayer(D, HEADS, FFN, dropout=0.0, activation=act, layer_norm_eps=EPS,
                                     batch_first=True, dtype=torch.float64)
    state = {k.replace("cross_attn.", "multihead_attn."): v for k, v in ours.state_dict().items()}
    ref.load_state_dict(state)
    return ref


@pytest.mark.parametrize("act", ["gelu", "relu"])
@pytest.mark.parametrize("mode", MODES)
def test_decoder_layer_matches_torch(mode, act):
    torch.manual_seed(0)
    ours = DecoderLayer(D, HEADS, FFN, 0.3, act, EPS).double().eval()
    _perturb_(ours, 4)
    ref = _decoder_ref(ours, act).train()
    src_valid = _tokens(LENGTHS, 5, 3) != 0
    tgt_valid = _tokens([3, 5, 2, 1, 4, 3], 5, 4) != 0  # same rows, own lengths
    memory = torch.randn(*src_valid.shape, D, dtype=torch.float64)
    y = torch.randn(*tgt_valid.shape, D, dtype=torch.float64)
    enc, dec = _layout(src_valid, mode), _layout(tgt_valid, mode)

    cross = ours.cross_kv(enc.to_packed(memory), enc)
    got = dec.to_padded(ours(dec.to_packed(y), dec, cross))
    t = tgt_valid.shape[1]
    want = ref(y, memory, tgt_mask=_causal(t), tgt_is_causal=True,
               tgt_key_padding_mask=~tgt_valid, memory_key_padding_mask=~src_valid)
    torch.testing.assert_close(got[tgt_valid], want[tgt_valid], atol=ATOL, rtol=1e-8)

    w = torch.randn(*got[tgt_valid].shape, dtype=torch.float64)
    (got[tgt_valid] * w).sum().backward()
    (want[tgt_valid] * w).sum().backward()
    _grads_match(ours, ref, {"cross_attn.": "multihead_attn."})


def test_decoder_layer_training_attention_path_matches_torch(monkeypatch):
    layers = sys.modules[DecoderLayer.__module__]
    monkeypatch.setattr(layers, "dropout", lambda x, p, training, native=False: x)
    torch.manual_seed(0)
    ours = DecoderLayer(D, HEADS, FFN, 0.5, "gelu", EPS).double().train()
    _perturb_(ours, 5)
    ref = _decoder_ref(ours, "gelu").eval()
    src_valid = _tokens(LENGTHS, 5, 5) != 0
    tgt_valid = _tokens([3, 5, 2, 1, 4, 3], 5, 6) != 0
    memory = torch.randn(*src_valid.shape, D, dtype=torch.float64)
    y = torch.randn(*tgt_valid.shape, D, dtype=torch.float64)
    enc, dec = _layout(src_valid, "groups"), _layout(tgt_valid, "groups")
    got = dec.to_padded(ours(dec.to_packed(y), dec, ours.cross_kv(enc.to_packed(memory), enc)))
    with torch.no_grad():
        want = ref(y, memory, tgt_mask=_causal(tgt_valid.shape[1]), tgt_is_causal=True,
                   memory_key_padding_mask=~src_valid)
    torch.testing.assert_close(got[tgt_valid], want[tgt_valid], atol=ATOL, rtol=1e-8)


# -- the whole encoder and decoder stacks of a Regenerator ---------------------


def _model() -> Regenerator:
    torch.manual_seed(0)
    config = tiny_config(d_model=D, n_heads=HEADS, ffn_dim=FFN, cond_ffn_dim=FFN, enc_layers=2, dec_layers=2)
    model = Regenerator(20, config).double().eval()
    _perturb_(model, 6)
    return model


def _stack_refs(model: Regenerator) -> tuple[nn.TransformerEncoder, nn.TransformerDecoder]:
    c = model.config
    kw = dict(dropout=0.0, activation=c.activation, layer_norm_eps=c.layer_norm_eps, batch_first=True,
              dtype=torch.float64)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(D, HEADS, FFN, **kw), c.enc_layers,
                                norm=nn.LayerNorm(D, eps=c.layer_norm_eps, dtype=torch.float64),
                                enable_nested_tensor=False)
    dec = nn.TransformerDecoder(nn.TransformerDecoderLayer(D, HEADS, FFN, **kw), c.dec_layers,
                                norm=nn.LayerNorm(D, eps=c.layer_norm_eps, dtype=torch.float64))
    enc.layers.load_state_dict(model.encoder_layers.state_dict())
    enc.norm.load_state_dict(model.encoder_norm.state_dict())
    dec.layers.load_state_dict({k.replace("cross_attn.", "multihead_attn."): v
                                for k, v in model.decoder_layers.state_dict().items()})
    dec.norm.load_state_dict(model.decoder_norm.state_dict())
    return enc.eval(), dec.eval()


@pytest.mark.parametrize("packed,groups", [(True, 1), (True, 3), (False, 1)])
@pytest.mark.parametrize("causal", [False, True])
def test_encode_and_decode_hidden_match_torch_stacks(packed, groups, causal):
    model = _model()
    enc_ref, dec_ref = _stack_refs(model)
    src = _tokens([9, 3, 6, 9, 2], model.vocab, 7)
    tgt = _tokens([4, 2, 5, 1, 3], model.vocab, 8)
    s, t = src.shape[1], tgt.shape[1]
    with torch.no_grad():
        memory, layout, valid = model.encode(src, causal, packed, groups)
        dec = Layout.packed(tgt != 0, groups) if packed else Layout.dense(*tgt.shape)
        emb = model.embed(tgt, torch.arange(t))
        cross = [layer.cross_kv(memory, layout) for layer in model.decoder_layers]
        hidden = dec.to_padded(model.decode_hidden(dec.to_packed(emb), dec, cross))

        x = model.embedding(src) + model.position(torch.arange(s))
        want_mem = enc_ref(x, mask=_causal(s) if causal else None, src_key_padding_mask=~valid,
                           is_causal=causal)
        want_hidden = dec_ref(emb, want_mem, tgt_mask=_causal(t), tgt_is_causal=True,
                              memory_key_padding_mask=~valid)
    torch.testing.assert_close(layout.to_padded(memory)[valid], want_mem[valid], atol=ATOL, rtol=1e-8)
    real = tgt != 0
    torch.testing.assert_close(hidden[real], want_hidden[real], atol=ATOL, rtol=1e-8)


def test_the_check_can_fail():
    """A one-position shift of the causal mask is caught: the comparison has teeth."""
    model = _model()
    enc_ref, _ = _stack_refs(model)
    src = _tokens([9, 3, 6, 9, 2], model.vocab, 9)
    s = src.shape[1]
    with torch.no_grad():
        memory, layout, valid = model.encode(src, True, True, 3)
        x = model.embedding(src) + model.position(torch.arange(s))
        shifted = torch.ones(s, s, dtype=torch.bool).triu(2)  # sees one future token
        want = enc_ref(x, mask=shifted, src_key_padding_mask=~valid)
    assert not torch.allclose(layout.to_padded(memory)[valid], want[valid], atol=1e-6)
