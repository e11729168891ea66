from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from models.batching import BatchIterator, eval_batches
from models.data.sequences import EvalRows, RowSource, Sequences, TrainRows
from models.recommenders import MODELS, ModelConfigError, SequentialRecommender, build_model
from models.recommenders.base import dropout
from models.recommenders.cl4srec import crop, info_nce, mask, reorder
from models.recommenders.gnn import build_item_graph, graph_inputs
from models.training import load_model, save_checkpoint

N = 30


def _rows(seed=0, n=24, lo=2, hi=9):
    rng = np.random.default_rng(seed)
    lists = [list(rng.integers(1, N + 1, size=rng.integers(lo, hi))) for _ in range(n)]
    return TrainRows.build(Sequences.from_lists(lists), RowSource.ORIGINAL, np.arange(1, n + 1))


def _model(name, **overrides):
    torch.manual_seed(0)
    return build_model(name, N, {"max_len": 8, **overrides}, train=_rows())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_contract_shapes_and_padding(name):
    model = _model(name)
    assert isinstance(model, SequentialRecommender)
    assert model.item_embeddings().shape == (N + 1, model.hidden_size)
    rows = _rows()
    batch = next(iter(BatchIterator(rows, 8, shuffle=False, transform=model.batch_transform())))
    model.eval()
    h = model(batch)
    B = len(batch)
    if name == "fmlp":
        assert h.shape == (B, 1, 64)
        assert torch.equal(model.last_hidden(batch), h[:, 0])
    else:
        T = batch.input.shape[1]
        assert h.shape == (B, T, 64)
        beyond = torch.arange(T)[None, :] >= batch.lengths[:, None]
        assert torch.all(h[beyond] == 0)
        assert torch.allclose(model.last_hidden(batch), h[torch.arange(B), batch.lengths - 1])
    model.train()
    pl = model.position_losses(batch)
    assert pl.loss.shape == pl.valid.shape == batch.target.shape
    assert pl.hidden.shape[:2] == batch.target.shape
    assert torch.all(pl.loss[~pl.valid] == 0) and torch.all(pl.loss[pl.valid] > 0)
    loss = model.training_loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.item_embeddings().shape[0] == N + 1
    # the padding row never learns
    grad = dict(model.named_parameters())["item_emb.weight"].grad
    assert torch.all(grad[0] == 0)


@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "fmlp"])
def test_training_loss_is_mean_position_loss(name):
    model = _model(name, dropout_rate=0.0)
    batch = next(iter(BatchIterator(_rows(), 8, shuffle=False, transform=model.batch_transform())))
    torch.manual_seed(5)
    pl = model.position_losses(batch)
    torch.manual_seed(5)
    loss = model.training_loss(batch)
    assert torch.allclose(loss, pl.loss.sum() / pl.valid.sum())
    ce = model.training_loss(batch, loss="ce")
    logits = pl.hidden[pl.valid] @ model.item_embeddings().T
    logits[:, 0] = float("-inf")
    expected = torch.nn.functional.cross_entropy(logits, batch.target[pl.valid])
    assert torch.allclose(ce, expected, atol=1e-6)
    with pytest.raises(ModelConfigError, match="loss"):
        model.training_loss(batch, loss="bpr")


def test_bce_matches_hand_computation_with_fixed_negatives():
    model = _model("sasrec")
    model.eval()
    batch = next(iter(BatchIterator(_rows(), 4, shuffle=False)))
    negs = torch.randint(1, N + 1, batch.target.shape)
    model.sample_negatives = lambda target: negs
    pl = model.position_losses(batch)
    h, E = pl.hidden, model.item_embeddings()
    pos = (h * E[batch.target]).sum(-1)
    neg = (h * E[negs]).sum(-1)
    expected = (torch.nn.functional.softplus(-pos) + torch.nn.functional.softplus(neg)) * pl.valid
    assert torch.allclose(pl.loss, expected, atol=1e-6)


@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "fmlp"])
def test_sampled_softmax_with_every_item_drawn_is_the_full_softmax(name):
    model = _model(name, dropout_rate=0.0)
    batch = next(iter(BatchIterator(_rows(), 8, shuffle=False, transform=model.batch_transform())))
    model.num_negatives = N  # every item: the same terms as 'ce', in another order
    full = model.position_losses(batch, "ce")
    sampled = model.position_losses(batch, "sampled_ce")
    assert torch.equal(full.valid, sampled.valid)
    assert torch.allclose(sampled.loss, full.loss, atol=1e-5)
    model.num_negatives = 10 * N  # more than the catalogue: capped at it
    assert torch.allclose(model.position_losses(batch, "sampled_ce").loss, full.loss, atol=1e-5)


def test_sampled_softmax_matches_hand_computation():
    model = _model("sasrec")
    model.eval()
    model.num_negatives = 7
    batch = next(iter(BatchIterator(_rows(), 6, shuffle=False)))
    torch.manual_seed(11)
    pl = model.position_losses(batch, "sampled_ce")
    torch.manual_seed(11)
    negatives = torch.randperm(N)[:7] + 1  # the draw position_losses made: 7 distinct items
    assert len(torch.unique(negatives)) == 7
    h, E = pl.hidden[pl.valid], model.item_embeddings()
    target = batch.target[pl.valid]
    expected = []
    for v in range(len(target)):
        others = [int(i) for i in negatives if int(i) != int(target[v])]  # its own target is masked
        logits = torch.stack([h[v] @ E[target[v]]] + [h[v] @ E[i] for i in others])
        expected.append(torch.logsumexp(logits, 0) - logits[0])
    assert torch.allclose(pl.loss[pl.valid], torch.stack(expected), atol=1e-5)
    assert torch.all(pl.loss[~pl.valid] == 0)
    assert any(int(t) in negatives.tolist() for t in target)  # the masking was exercised
    loss = model.training_loss(batch, "sampled_ce")
    loss.backward()
    assert torch.isfinite(loss)


def test_negatives_are_uniform_items_never_padding():
    model = _model("cl4srec")
    negs = model.sample_negatives(torch.ones(200, 50, dtype=torch.long))
    assert negs.min() >= 1 and negs.max() <= N  # never the pad id, never CL4SRec's mask token
    assert len(torch.unique(negs)) == N


def test_config_errors_are_clear():
    with pytest.raises(ModelConfigError, match="unknown model"):
        build_model("bert4rec", N)
    with pytest.raises(ModelConfigError, match="unknown field"):
        build_model("sasrec", N, {"hidden": 3})
    with pytest.raises(ModelConfigError, match="divisible"):
        build_model("sasrec", N, {"embed_dim": 65})
    with pytest.raises(ModelConfigError, match="dropout_rate"):
        build_model("gru4rec", N, {"dropout_rate": 1.5})
    with pytest.raises(ModelConfigError, match="num_items"):
        build_model("sasrec", 0)
    with pytest.raises(ModelConfigError, match="training rows"):
        build_model("gnn", N)
    with pytest.raises(ModelConfigError, match="max_len"):
        model = build_model("sasrec", N, {"max_len": 2})
        model(next(iter(BatchIterator(_rows(lo=5), 4, shuffle=False))))


def test_fmlp_last_slot_shortcut_matches_full_computation():
    model = _model("fmlp").eval()
    batch = next(iter(BatchIterator(_rows(), 8, shuffle=False, transform=model.batch_transform())))
    with torch.no_grad():
        x = model.drop(model.ln(model.item_emb(batch.input) + model.pos_emb.weight))
        for filt, ffn in zip(model.filters, model.ffns, strict=True):
            x = ffn(filt(x))  # every position, every layer
        assert torch.allclose(model(batch)[:, 0], x[:, -1], atol=1e-5)


def test_config_sizes_are_not_hard_coded():
    model = build_model("fmlp", N, {"max_len": 12, "embed_dim": 16, "ffn_size": 20})
    assert model.filters[0].complex_weight.shape == (1, 7, 16, 2)
    model = build_model("sasrec", N, {"embed_dim": 32, "head_num": 4, "max_len": 7})
    assert model.pos_emb.weight.shape == (7, 32)
    assert build_model("gru4rec", N).config.weight_decay == 1e-4
    assert build_model("sasrec", N).config.weight_decay == 0.0


def test_init_follows_spec():
    model = build_model("sasrec", 500, {"max_len": 50})
    w = model.item_emb.weight.detach()
    assert torch.all(w[0] == 0)
    assert abs(float(w[1:].std()) - 0.02) < 0.002
    fc = model.encoder.layers[0].fc1
    assert torch.all(fc.bias == 0) and abs(float(fc.weight.detach().std()) - 0.02) < 0.004
    # the attention in-projection keeps Xavier-uniform like nn.MultiheadAttention
    qkv = model.encoder.layers[0].attn.qkv.weight.detach()
    bound = (6 / (qkv.shape[0] + qkv.shape[1])) ** 0.5
    assert float(qkv.abs().max()) <= bound and float(qkv.std()) > 0.05


def test_fast_dropout_keep_rate_and_scale():
    x = torch.ones(400_000)
    for p in (0.2, 0.5):
        y = dropout(x, p, training=True)
        kept = y != 0
        assert abs(float(kept.float().mean()) - (1 - p)) < 0.005
        assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    assert dropout(x, 0.5, training=False) is x


def test_gnn_graph_matches_hand_computation():
    seqs = Sequences.from_lists([[1, 2, 3]])
    g = build_item_graph(seqs, 3, window=2, normalization="reference").toarray()
    a = np.zeros((4, 4))
    a[1, 2] += 1
    a[2, 3] += 1
    a[1, 3] += 0.5
    a = a + a.T + np.eye(4)
    d = (a != 0).sum(1)
    expected = a / d[:, None] + a / d[None, :]
    assert np.allclose(g, expected)
    sym = build_item_graph(seqs, 3, window=2, normalization="symmetric").toarray()
    w = a.sum(1)
    assert np.allclose(sym, a / np.sqrt(w[:, None] * w[None, :]))


def test_gnn_graph_sources():
    orig = TrainRows.build(
        Sequences.from_lists([[1, 2, 3], [4, 5]]), RowSource.ORIGINAL, np.array([1, 2])
    )
    regen = TrainRows.build(Sequences.from_lists([[3, 1, 2]]), RowSource.REGENERATED, np.array([0]))
    mixed = orig.concat(orig).concat(regen)  # the original rows twice (quirk Q1)
    old = graph_inputs(mixed, "old")
    assert old.to_lists() == [[1, 2], [4]]  # inputs of each user's original row, once
    assert graph_inputs(mixed, "new").to_lists() == [[1, 2], [4], [1, 2], [4], [3, 1]]
    m_old = build_model("gnn", 5, {"max_len": 4}, train=mixed)
    m_new = build_model("gnn", 5, {"max_len": 4, "graph": "new"}, train=mixed)
    assert m_old.graph_val.numel() < m_new.graph_val.numel()


def test_gnn_propagation_and_gradient_match_dense():
    model = _model("gnn")
    rows = _rows()
    g = build_item_graph(graph_inputs(rows, "old"), N, 2, "reference")
    dense = torch.tensor(g.toarray(), dtype=torch.float32)
    e = model.item_emb.weight
    out = model.propagate()
    x, acc = e, e
    for _ in range(3):
        x = dense @ x
        acc = acc + x
    assert torch.allclose(out, acc / 4, atol=1e-6)
    out.square().sum().backward()
    g1 = e.grad.clone()
    e.grad = None
    (acc / 4).square().sum().backward()
    assert torch.allclose(g1, e.grad, atol=1e-5)
    assert sp.issparse(g)


def test_gnn_eval_cache_follows_weight_updates():
    model = _model("gnn").eval()
    with torch.no_grad():
        first = model.input_table().clone()
        model.item_emb.weight.mul_(2)
        second = model.input_table()
    assert torch.allclose(second, first * 2, atol=1e-6)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_save_and_load_roundtrip(name, tmp_path):
    model = _model(name).eval()
    save_checkpoint(model, tmp_path / name)
    loaded = load_model(tmp_path / name)
    hist = Sequences.from_lists([[1, 2, 3], [4, 5]])
    rows = EvalRows(hist, np.array([6, 7]), np.array([1, 2]))
    (batch,) = eval_batches(rows, 4, model.batch_transform())
    with torch.no_grad():
        assert torch.allclose(model.last_hidden(batch), loaded.last_hidden(batch))
    assert loaded.config == model.config


def test_cl4srec_augmentations():
    torch.manual_seed(0)
    items = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 0, 0, 0, 0, 0]])
    lengths = torch.tensor([10, 5])
    for _ in range(20):
        c, cl = crop(items, lengths, 0.4)
        assert cl.tolist() == [4, 2]
        for r in range(2):
            kept = c[r, : cl[r]].tolist()
            row = items[r, : lengths[r]].tolist()
            start = row.index(kept[0])
            assert row[start : start + len(kept)] == kept
            assert torch.all(c[r, cl[r] :] == 0)
        m, ml = mask(items, lengths, 0.4, mask_token=99)
        assert torch.equal(ml, lengths)
        assert ((m == 99).sum(1)).tolist() == [4, 2]
        assert torch.all(m[items == 0] == 0)
        o, _ = reorder(items, lengths, 0.5)
        for r in range(2):
            n = int(lengths[r])
            assert sorted(o[r, :n].tolist()) == sorted(items[r, :n].tolist())
            moved = (o[r, :n] != items[r, :n]).nonzero().flatten()
            if len(moved):  # only one contiguous segment of ⌊0.5·len⌋ items moves
                assert int(moved.max() - moved.min()) < n // 2
            assert torch.all(o[r, n:] == 0)


def test_info_nce_matches_definition():
    torch.manual_seed(0)
    z1, z2 = torch.randn(3, 4), torch.randn(3, 4)
    z = torch.cat([z1, z2])
    total = 0.0
    for i in range(6):
        partner = (i + 3) % 6
        logits = torch.tensor([float(z[i] @ z[j]) for j in range(6) if j != i])
        others = [j for j in range(6) if j != i]
        total += float(-torch.log_softmax(logits, 0)[others.index(partner)])
    assert abs(float(info_nce(z1, z2, 1.0)) - total / 6) < 1e-5


def test_cl4srec_auxiliary_term():
    model = _model("cl4srec")
    batch = next(iter(BatchIterator(_rows(), 8, shuffle=False)))
    aux = model.auxiliary_loss(batch)
    assert aux is not None and aux.item() > 0
    assert model.mask_token == N + 1 and model.item_emb.weight.shape[0] == N + 2
    assert _model("sasrec").auxiliary_loss(batch) is None
    assert build_model("cl4srec", N, {"cl_weight": 0.0}).auxiliary_loss(batch) is None


def test_device_resolution():
    from models.recommenders.base import resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ModelConfigError, match="device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelConfigError, match="CUDA is not available"):
            resolve_device("cuda")
