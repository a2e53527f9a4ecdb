"""SP, RKD, PKT and CC (distiller_zoo/SP.py, RKD.py, PKT.py, CC.py) against plain-loop references: per-sample shares."""
import math

import pytest
import torch

from feature_cases import S_SHAPES, T_SHAPES, check_shares, hand_feats, run_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# independent references (plain loops on the hand-built maps of feature_cases.py)
def ref_similarity(fs, ft):
    """Rows of ||G~_t - G~_s||_F^2 / b^2 (Tung & Mori): row i = sum_j diff^2 / b."""
    b = fs.shape[0]

    def G(f):
        q = f.reshape(b, -1)
        g = [[float(q[i] @ q[j]) for j in range(b)] for i in range(b)]
        return [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in g]
    gs, gt = G(fs), G(ft)
    return [sum((gt[i][j] - gs[i][j]) ** 2 for j in range(b)) / b for i in range(b)]


def huber(x):
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def ref_rkd(fs, ft, wd=25.0, wa=50.0):
    """Per-sample shares of wd * mean_{ij} huber(d) + wa * mean_{ijk} huber(angle at vertex i)."""
    b = fs.shape[0]
    xs, xt = fs.reshape(b, -1), ft.reshape(b, -1)

    def dist(x):
        d = [[float((x[i] - x[j]).norm()) if i != j else 0.0 for j in range(b)] for i in range(b)]
        mu = sum(d[i][j] for i in range(b) for j in range(b) if i != j) / (b * (b - 1))
        return [[v / mu for v in row] for row in d]

    def angle(x, i, j, k):
        if j == i or k == i:
            return 0.0
        u, v = x[j] - x[i], x[k] - x[i]
        return float(u @ v / (u.norm() * v.norm()))
    ds, dt = dist(xs), dist(xt)
    out = []
    for i in range(b):
        ld = sum(huber(ds[i][j] - dt[i][j]) for j in range(b)) / b
        la = sum(huber(angle(xs, i, j, k) - angle(xt, i, j, k)) for j in range(b) for k in range(b)) / b ** 2
        out.append(wd * ld + wa * la)
    return out


def ref_pkt(fs, ft, eps=1e-7):
    """Rows of mean_{ij} p_t(j|i) log((p_t + eps) / (p_s + eps)), p(j|i) from (cos + 1) / 2 per row
    (the authors' code: diagonal included, mean over B^2)."""
    b = fs.shape[0]

    def P(f):
        x = [v / (v.norm() + eps) for v in f.reshape(b, -1)]
        k = [[(float(x[i] @ x[j]) + 1) / 2 for j in range(b)] for i in range(b)]
        return [[v / sum(row) for v in row] for row in k]
    ps, pt = P(fs), P(ft)
    return [sum(pt[i][j] * math.log((pt[i][j] + eps) / (ps[i][j] + eps)) for j in range(b)) / b for i in range(b)]


def ref_cc_chain(es, et):
    """RepDistiller's CC, mean_i sum_d |delta_i| |delta_{i+1}|, and each link split over its two
    samples (scaled by B/(B-1) so that the shares average to it)."""
    b = es.shape[0]
    delta = (es - et).abs()
    links = [float((delta[i] * delta[i + 1]).sum()) for i in range(b - 1)]
    batch = sum(links) / (b - 1)
    shares = [(b / (b - 1)) * ((links[i - 1] if i > 0 else 0) + (links[i] if i < b - 1 else 0)) / 2 for i in range(b)]
    return batch, shares


def ref_cc_paper(es, et, gamma=0.4, P=2):
    """Peng et al.: (1/n^2) ||psi_t - psi_s||^2 with the order-P Taylor-expanded Gaussian RBF."""
    b = es.shape[0]

    def psi(e):
        e = [v / v.norm() for v in e]
        return [[sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * float(e[i] @ e[j]) ** p
                     for p in range(P + 1)) for j in range(b)] for i in range(b)]
    ps, pt = psi(es), psi(et)
    return [sum((pt[i][j] - ps[i][j]) ** 2 for j in range(b)) / b for i in range(b)]


# ---------------------------------------------------------------------------------------------
# values
# ---------------------------------------------------------------------------------------------
def test_similarity_matches_reference():
    s_feats, t_feats = hand_feats(S_SHAPES, seed=3), hand_feats(T_SHAPES, seed=4)
    _, term = run_loss("similarity", s_feats, t_feats)
    check_shares(term, ref_similarity(s_feats[-2], t_feats[-2]))
    assert term.anchor is s_feats[-2]


def test_rkd_matches_reference():
    s_feats, t_feats = hand_feats(S_SHAPES, seed=5), hand_feats(T_SHAPES, seed=6)
    _, term = run_loss("rkd", s_feats, t_feats)
    check_shares(term, ref_rkd(s_feats[-1], t_feats[-1]))
    assert term.anchor is s_feats[-1]
    _, term = run_loss("rkd", s_feats, t_feats, rkd_dist_weight=1.0, rkd_angle_weight=0.0)
    check_shares(term, ref_rkd(s_feats[-1], t_feats[-1], 1.0, 0.0))


def test_pkt_matches_reference():
    s_feats, t_feats = hand_feats(S_SHAPES, seed=7), hand_feats(T_SHAPES, seed=8)
    s_feats[-1] = s_feats[-1] - 0.5                    # signed vectors: cosines of both signs
    _, term = run_loss("pkt", s_feats, t_feats)
    check_shares(term, ref_pkt(s_feats[-1], t_feats[-1]))
    assert term.anchor is s_feats[-1]


@pytest.mark.parametrize("form", ["repdistiller", "paper"])
def test_correlation_matches_reference(form):
    s_feats, t_feats = hand_feats(S_SHAPES, seed=9), hand_feats(T_SHAPES, seed=10)
    d, term = run_loss("correlation", s_feats, t_feats, feat_dim=6, cc_form=form)
    with torch.no_grad():
        es = s_feats[-1] @ d.embed_s.linear.weight.T + d.embed_s.linear.bias
        et = t_feats[-1] @ d.embed_t.linear.weight.T + d.embed_t.linear.bias
    assert es.shape == (5, 6)
    if form == "repdistiller":
        batch, shares = ref_cc_chain(es, et)
        check_shares(term, shares, batch_value=batch)
    else:
        check_shares(term, ref_cc_paper(es, et))
    assert term.anchor is s_feats[-1]


def test_relational_losses_with_one_sample_are_zero():
    s_feats, t_feats = hand_feats(S_SHAPES, n=1, seed=15), hand_feats(T_SHAPES, n=1, seed=16)
    for name in ("similarity", "correlation", "rkd", "pkt"):
        _, term = run_loss(name, s_feats, t_feats)
        assert term.per_sample.shape == (1,) and term.per_sample.abs().item() < 1e-12, name
