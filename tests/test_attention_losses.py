"""AT, NST and KDSVD (distiller_zoo/AT.py, NST.py, KDSVD.py) against plain-loop references, and their map pairing."""
import math

import pytest
import torch

from distiller_zoo import DISTILLERS

from feature_cases import S_SHAPES, T_SHAPES, check_shares, context, hand_feats, run_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# independent references (plain loops on the hand-built maps of feature_cases.py)
def ref_block_pool(x, size):
    """Average over non-overlapping k x k blocks (an integer factor), written out."""
    n, c, h, _ = x.shape
    k = h // size
    out = torch.zeros(n, c, size, size, dtype=x.dtype)
    for a in range(size):
        for b in range(size):
            out[:, :, a, b] = x[:, :, a * k:(a + 1) * k, b * k:(b + 1) * k].mean((2, 3))
    return out


def ref_same_size(a, b):
    if a.shape[-1] > b.shape[-1]:
        a = ref_block_pool(a, b.shape[-1])
    elif b.shape[-1] > a.shape[-1]:
        b = ref_block_pool(b, a.shape[-1])
    return a, b


def ref_attention_layer(fs, ft):
    """Per sample: mean over positions of (Q_s/||Q_s|| - Q_t/||Q_t||)^2, Q = sum_c A_c^2 (paper)."""
    fs, ft = ref_same_size(fs, ft)
    out = []
    for i in range(fs.shape[0]):
        qs = (fs[i] ** 2).sum(0).flatten()
        qt = (ft[i] ** 2).sum(0).flatten()
        out.append(float(((qs / qs.norm() - qt / qt.norm()) ** 2).mean()))
    return out


def ref_nst_layer(fs, ft):
    """Per sample: squared MMD of the channels' normalised maps with k(x, y) = (x . y)^2."""
    fs, ft = ref_same_size(fs, ft)
    out = []
    for i in range(fs.shape[0]):
        S = [v / v.norm() for v in fs[i].flatten(1)]
        T = [v / v.norm() for v in ft[i].flatten(1)]

        def kmean(X, Y):
            return sum(float(x @ y) ** 2 for x in X for y in Y) / (len(X) * len(Y))
        out.append(kmean(T, T) + kmean(S, S) - 2 * kmean(S, T))
    return out


def ref_kdsvd(fs_list, ft_list, k=1):
    """Per-relation per-sample losses, one sample and one layer at a time (Lee et al. / RepDistiller)."""
    n = fs_list[0].shape[0]
    per_rel = []
    for i in range(n):
        dfv_s, dfv_t, rows = None, None, []
        for fs, ft in zip(fs_list, ft_list):
            def rsv(f, m, i=i):
                x = f[i].reshape(f.shape[1], -1).T                   # positions x channels
                _, sv, vh = torch.linalg.svd(x, full_matrices=False)
                v = vh.T[:, :m]
                return sv[:m] / sv[:m].norm(), v / v.norm(dim=0, keepdim=True)
            st, vt = rsv(ft, k)
            _, vs = rsv(fs, k + 3)
            cols = []
            for c in range(k):                                       # best student vector, signed
                cos = [float(vs[:, j] @ vt[:, c]) for j in range(vs.shape[1])]
                j = max(range(len(cos)), key=lambda q: abs(cos[q]))
                cols.append(vs[:, j] * math.copysign(1.0, cos[j]))
            vs = torch.stack(cols, 1) * st
            vt = vt * st
            if dfv_s is not None:
                loss = 0.0
                for a in range(vs.shape[0]):
                    for b in range(dfv_s.shape[0]):
                        for c in range(k):
                            rs = math.exp(-float(vs[a, c] - dfv_s[b, c]) ** 2 / 8)
                            rt = math.exp(-float(vt[a, c] - dfv_t[b, c]) ** 2 / 8)
                            loss += (rs - rt) ** 2
                rows.append(loss)
            dfv_s, dfv_t = vs, vt
        per_rel.append(rows)
    return torch.tensor(per_rel, dtype=torch.float64).T              # [L-1, n]


# ---------------------------------------------------------------------------------------------
# values
# ---------------------------------------------------------------------------------------------
MULTI_LAYER_CASES = [            # (pairing, swap student/teacher shapes, expected pairs)
    ("last", False, [(1, 2), (2, 3), (3, 4)]),          # equal sizes
    ("first", False, [(1, 1), (2, 2), (3, 3)]),         # teacher maps larger: teacher pooled
    ("first", True, [(1, 1), (2, 2), (3, 3)]),          # student maps larger: student pooled
    ("resolution", True, [(2, 1), (3, 2), (4, 3)]),
]


@pytest.mark.parametrize("name,ref", [("attention", ref_attention_layer), ("nst", ref_nst_layer)])
@pytest.mark.parametrize("pairing,swap,pairs", MULTI_LAYER_CASES)
def test_multi_layer_losses_match_reference(name, ref, pairing, swap, pairs):
    s_feats, t_feats = hand_feats(S_SHAPES, seed=1), hand_feats(T_SHAPES, seed=2)
    if swap:
        s_feats, t_feats = t_feats, s_feats
    d, term = run_loss(name, s_feats, t_feats, feat_pairing=pairing)
    assert d.pairs == pairs
    rows = [ref(s_feats[i], t_feats[j]) for i, j in pairs]
    assert term.per_layer.shape == (len(pairs), 5)
    torch.testing.assert_close(term.per_layer, torch.tensor(rows, dtype=torch.float64), rtol=1e-9, atol=1e-12)
    # RepDistiller's value: the sum over layers of each layer's batch mean
    check_shares(term, [sum(r[i] for r in rows) for i in range(5)],
                 batch_value=sum(sum(r) / len(r) for r in rows))
    torch.testing.assert_close(term.per_layer.sum(0), term.per_sample)
    assert term.anchor is s_feats[pairs[-1][0]]


def test_kdsvd_matches_reference():
    s_shapes = [(4, 8, 8), (4, 8, 8), (6, 4, 4), (8, 2, 2), (8,)]
    t_shapes = [(4, 16, 16), (4, 16, 16), (6, 8, 8), (8, 4, 4), (8,)]
    s_feats, t_feats = hand_feats(s_shapes, seed=11), hand_feats(t_shapes, seed=12)
    d, term = run_loss("kdsvd", s_feats, t_feats)
    assert d.pairs == [(1, 1), (2, 2), (3, 3)] and d.layer_ids == [2, 3]
    expected = ref_kdsvd([s_feats[i] for i in (1, 2, 3)], [t_feats[j] for j in (1, 2, 3)])
    assert term.per_layer.shape == (2, 5)
    torch.testing.assert_close(term.per_layer, expected, rtol=1e-8, atol=1e-12)
    check_shares(term, expected.sum(0).tolist())
    assert term.anchor is s_feats[3]


def test_kdsvd_zeroes_non_finite_svd_gradients_per_sample():
    """Repeated singular values make the SVD's derivative infinite; only those samples lose it."""
    shapes = [(8, 4, 4), (8, 4, 4), (8, 4, 4), (8,)]
    s_feats, t_feats = hand_feats(shapes, n=3, seed=13), hand_feats(shapes, n=3, seed=14)
    x = torch.zeros(3, 8, 4, 4, dtype=torch.float64)
    x[:, 0, 0, 0] = x[:, 1, 0, 1] = 1.0                       # two equal leading singular values
    x[1] = s_feats[2][1]                                        # sample 1 is ordinary
    s_feats[2] = x.requires_grad_(True)
    _, term = run_loss("kdsvd", s_feats, t_feats)
    term.per_sample.mean().backward()
    g = s_feats[2].grad.flatten(1)
    assert torch.isfinite(g).all()
    assert g[0].abs().sum() == 0 and g[2].abs().sum() == 0 and g[1].abs().sum() > 0


def test_kdsvd_refuses_pairs_with_different_channel_counts():
    with pytest.raises(ValueError, match="channel"):
        DISTILLERS["kdsvd"](context(S_SHAPES, T_SHAPES))
