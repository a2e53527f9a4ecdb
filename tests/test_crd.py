"""CRD (distiller_zoo/CRD.py): the value by hand, the memory bank and its checkpoint, negative sampling, learning."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from distiller_zoo import DISTILLERS
from distiller_zoo.base import Batch, NetOutput

from connector_cases import check_term, context, options, outputs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def crd_setup(N=40, mode="exact", K=6, B=5, seed=0):
    torch.manual_seed(seed)
    labels = torch.arange(N) % 4
    opt = options("crd", nce_k=K, feat_dim=5, mode=mode)
    d = DISTILLERS["crd"](context([(3, 4, 4), (7,)], [(3, 4, 4), (9,)], opt, num_data=N, labels=labels))
    return d, labels


def contrast_loss_reference(x, N):
    bsz, m = x.shape[0], x.size(1) - 1
    Pn = 1 / float(N)
    P_pos = x[:, 0]
    log_D1 = torch.log(P_pos / (P_pos + m * Pn + 1e-7))
    P_neg = x[:, 1:]
    log_D0 = torch.log((m * Pn) / (P_neg + m * Pn + 1e-7))
    return -(log_D1.sum() + log_D0.sum()) / bsz


def test_crd_value_memory_update_and_constant_Z():
    N, B, K, T = 40, 5, 6, 0.07
    d, labels = crd_setup(N=N, K=K, B=B)
    s, t = outputs([(3, 4, 4), (7,)], B, 1), outputs([(3, 4, 4), (9,)], B, 2)
    idx = torch.tensor([3, 17, 22, 8, 39])
    mem_s, mem_t = d.memory_s.clone(), d.memory_t.clone()
    torch.manual_seed(5)
    contrast = d.contrast_indices(idx)
    assert contrast.shape == (B, K + 1) and torch.equal(contrast[:, 0], idx)
    term = d(s, t, Batch(torch.zeros(B), labels[idx], index=idx), contrast=contrast)

    def embed(lin, f):
        x = F.linear(f.view(f.shape[0], -1), lin.weight, lin.bias)
        return x / x.pow(2).sum(1, keepdim=True).pow(0.5)
    v1, v2 = embed(d.embed_s.linear, s.feats[-1]), embed(d.embed_t.linear, t.feats[-1])
    out_v2 = torch.exp(torch.bmm(mem_s[contrast.view(-1)].view(B, K + 1, -1), v2.view(B, -1, 1)) / T)
    out_v1 = torch.exp(torch.bmm(mem_t[contrast.view(-1)].view(B, K + 1, -1), v1.view(B, -1, 1)) / T)
    Z1, Z2 = out_v1.mean() * N, out_v2.mean() * N
    expected = contrast_loss_reference(out_v1 / Z1, N) + contrast_loss_reference(out_v2 / Z2, N)
    check_term(term, expected.item(), B)
    assert term.anchor is s.feats[-1]
    assert torch.allclose(d.z, torch.stack([Z1, Z2]).detach())
    # momentum update of the batch's rows only
    upd = 0.5 * mem_s[idx] + 0.5 * v1.detach()
    assert torch.allclose(d.memory_s[idx], upd / upd.norm(dim=1, keepdim=True), atol=1e-6)
    others = torch.ones(N, dtype=torch.bool)
    others[idx] = False
    assert torch.equal(d.memory_s[others], mem_s[others]) and torch.equal(d.memory_t[others], mem_t[others])
    assert not torch.equal(d.memory_t[idx], mem_t[idx])
    # Z is estimated once (first batch), then kept
    z = d.z.clone()
    d(s, t, Batch(torch.zeros(B), labels[idx], index=idx))
    assert torch.equal(d.z, z)
    # eval mode leaves the banks alone
    d.eval()
    before = d.memory_s.clone()
    d(s, t, Batch(torch.zeros(B), labels[idx], index=idx))
    assert torch.equal(d.memory_s, before)


# -- CRD machinery ------------------------------------------------------------------------------------
def test_crd_sampling_exact_and_relax():
    N, K = 40, 12
    d, labels = crd_setup(N=N, K=K)
    idx = torch.arange(N).repeat(5)
    c = d.contrast_indices(idx)
    assert torch.equal(c[:, 0], idx)                                      # exact: the sample itself
    assert (labels[c[:, 1:]] != labels[idx][:, None]).all()               # never the anchor's class
    assert all(len(set(row.tolist())) == K for row in c[:, 1:])           # without replacement
    assert len(set(c[:, 1:].flatten().tolist())) == N                     # every sample can be a negative
    d, labels = crd_setup(N=N, K=K, mode="relax")
    c = d.contrast_indices(idx)
    assert (labels[c[:, 0]] == labels[idx]).all() and not torch.equal(c[:, 0], idx)
    assert (labels[c[:, 1:]] != labels[idx][:, None]).all()


def test_crd_nce_k_clipped_with_warning_and_needs_indices():
    with pytest.warns(UserWarning, match="nce_k 100 exceeds the 30 negatives"):
        d, labels = crd_setup(N=40, K=100)
    assert d.K == 30
    B = 4
    s, t = outputs([(3, 4, 4), (7,)], B, 1), outputs([(3, 4, 4), (9,)], B, 2)
    with pytest.raises(ValueError, match="indices"):
        d(s, t, Batch(torch.zeros(B), torch.zeros(B, dtype=torch.long)))
    with pytest.raises(ValueError, match="labels"):
        DISTILLERS["crd"](context([(3, 4, 4), (7,)], [(3, 4, 4), (9,)], options("crd"), num_data=40))
    assert DISTILLERS["crd"].needs_index


def test_crd_bank_is_checkpointed_and_round_trips():
    N, B = 40, 5
    d, labels = crd_setup(N=N)
    s, t = outputs([(3, 4, 4), (7,)], B, 1), outputs([(3, 4, 4), (9,)], B, 2)
    idx = torch.tensor([0, 5, 9, 21, 33])
    d(s, t, Batch(torch.zeros(B), labels[idx], index=idx))
    state = d.state_dict()
    assert {"memory_s", "memory_t", "z"} <= set(state) and "labels" not in state
    d2, _ = crd_setup(N=N, seed=7)
    assert not torch.equal(d2.memory_s, d.memory_s)
    d2.load_state_dict(state)
    assert torch.equal(d2.memory_s, d.memory_s) and torch.equal(d2.memory_t, d.memory_t) and torch.equal(d2.z, d.z)
    contrast = d.contrast_indices(idx)
    l1 = d(s, t, Batch(torch.zeros(B), labels[idx], index=idx), contrast=contrast).per_sample
    l2 = d2(s, t, Batch(torch.zeros(B), labels[idx], index=idx), contrast=contrast).per_sample
    assert torch.allclose(l1, l2)
    # the index decides which bank rows are the positives
    other = (idx + 1) % N
    contrast2 = contrast.clone()
    contrast2[:, 0] = other
    l3 = d2(s, t, Batch(torch.zeros(B), labels[idx], index=other), contrast=contrast2).per_sample
    assert not torch.allclose(l1, l3)


def test_crd_objective_falls_as_embeddings_and_bank_learn():
    """A linear 'student' on fixed inputs against class-structured 'teacher' features: a few
    epochs of SGD on the CRD loss alone bring it well down (the e2e test only checks it stays
    finite: on real networks the bank-fill phase makes it rise first)."""
    N, B, K = 40, 10, 20
    torch.manual_seed(0)
    labels = torch.arange(N) % 4
    d = DISTILLERS["crd"](context([(8,)], [(6,)], options("crd", nce_k=K, feat_dim=8), num_data=N, labels=labels))
    X = torch.randn(N, 8)
    T = torch.randn(4, 6)[labels] + 0.3 * torch.randn(N, 6)
    student = nn.Linear(8, 8)
    opt = torch.optim.SGD(list(student.parameters()) + list(d.parameters()), lr=0.05, momentum=0.9)
    epochs = []
    for _ in range(12):
        total = 0.0
        for idx in torch.randperm(N).split(B):
            s = NetOutput(feats=[student(X[idx])], logits=torch.zeros(B, 4))
            t = NetOutput(feats=[T[idx]], logits=torch.zeros(B, 4))
            loss = d(s, t, Batch(X[idx], labels[idx], index=idx)).per_sample.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        epochs.append(total / (N // B))
    assert epochs[-1] < 0.6 * epochs[0], epochs
