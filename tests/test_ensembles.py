"""The strategies' weights against shared/specs/multi_teacher_ensembles.md, by hand (plain loops / numpy)."""
import math

import numpy as np
import pytest
import torch

from distiller_zoo import ensemble_weights, kd_loss

from logit_cases import make_inputs
from references import np_softmax


def kl_np(t, s, T):
    pt, ps = np_softmax(t / T), np_softmax(s / T)
    return T * T * float(np.sum(pt * (np.log(pt) - np.log(ps))))


def test_kd_loss_per_sample_matches_hand_formula_and_batchmean():
    t, s, y = make_inputs(1, B=5, C=7)
    T = 4.0
    per = kd_loss(s, t[0], T)
    expected = [kl_np(t[0, i].double().numpy(), s[i].double().numpy(), T) for i in range(5)]
    assert per.shape == (5,)
    np.testing.assert_allclose(per.numpy(), expected, rtol=1e-5)
    batchmean = torch.nn.KLDivLoss(reduction="batchmean")(
        torch.log_softmax(s / T, 1), torch.softmax(t[0] / T, 1)) * T * T
    assert per.mean().item() == pytest.approx(batchmean.item(), rel=1e-5)


@pytest.mark.parametrize("M", [2, 3, 5])
def test_average_weights(M):
    t, s, y = make_inputs(M)
    w = ensemble_weights("AVERAGE_LOSS", t, y, s)
    assert torch.allclose(w, torch.full_like(w, 1.0 / M))


@pytest.mark.parametrize("M", [2, 3, 5])
def test_ebkd_weights_match_entropy_formula(M):
    t, s, y = make_inputs(M)
    w = ensemble_weights("EBKD", t, y, s)
    B = t.shape[1]
    for i in range(B):
        H = []
        for m in range(M):
            p = np_softmax(t[m, i].double().numpy())
            H.append(-float(np.sum(p * np.log(p))))
        for m in range(M):
            assert w[m, i].item() == pytest.approx((1 - H[m] / sum(H)) / M, rel=1e-5, abs=1e-6)
    # a sample's weights sum to (M - 1) / M
    assert torch.allclose(w.sum(0), torch.full((B,), (M - 1) / M), atol=1e-6)


@pytest.mark.parametrize("M", [2, 3, 5])
def test_camkd_weights_match_confidence_formula(M):
    t, s, y = make_inputs(M)
    w = ensemble_weights("CAMKD", t, y, s)
    B = t.shape[1]
    for i in range(B):
        ce = [-math.log(np_softmax(t[m, i].double().numpy())[y[i]]) for m in range(M)]
        soft = np_softmax(np.array(ce))
        for m in range(M):
            assert w[m, i].item() == pytest.approx((1 - soft[m]) / ((M - 1) * M), rel=1e-5, abs=1e-6)
    assert torch.allclose(w.sum(0), torch.full((B,), 1.0 / M), atol=1e-6)


def test_camkd_ensemble_loss_equals_reference_expression():
    """sum_{m,i} w_ref[m,i] KL[m,i] / (B*M) with w_ref = (1 - softmax(CE)) / (M - 1)."""
    M, T = 3, 4.0
    t, s, y = make_inputs(M)
    B = t.shape[1]
    w = ensemble_weights("CAMKD", t, y, s, kd_T=T)
    L = torch.stack([kd_loss(s, t[m], T) for m in range(M)])
    ours = (w * L).sum() / B
    ce = torch.stack([torch.nn.functional.cross_entropy(t[m], y, reduction="none") for m in range(M)])
    w_ref = (1 - torch.softmax(ce, 0)) / (M - 1)
    assert ours.item() == pytest.approx(((w_ref * L).sum() / (B * M)).item(), rel=1e-6)


def test_camkd_needs_two_teachers():
    t, s, y = make_inputs(1)
    with pytest.raises(ValueError, match="at least 2"):
        ensemble_weights("CAMKD", t, y, s)


def test_unknown_method_is_one_line_error():
    t, s, y = make_inputs(2)
    with pytest.raises(ValueError, match="unknown ensemble method 'FOO'") as e:
        ensemble_weights("FOO", t, y, s)
    assert "\n" not in str(e.value)


def test_ensemble_weights_use_the_command_line_defaults():
    """``ensemble_weights`` builds its strategy from the parser's defaults (one source of truth), and
    its keyword options are those flags: EVIDENTIAL's certainty weights follow --evidential_tau."""
    import train_student
    from distiller_zoo import ENSEMBLES, default_options
    from distiller_zoo.base import EnsembleInputs
    t, s, y = make_inputs(3, seed=4)
    run_defaults = ENSEMBLES["EVIDENTIAL"](train_student.build_parser().parse_args([]))
    losses = torch.stack([kd_loss(s, tm, 4.0) for tm in t])
    expected = run_defaults.weights(EnsembleInputs(teacher_logits=t, labels=y, student_logits=s, losses=losses))
    assert torch.equal(ensemble_weights("EVIDENTIAL", t, y, s), expected)
    sharper = ensemble_weights("EVIDENTIAL", t, y, s, evidential_tau=0.01)
    assert not torch.allclose(sharper, expected, atol=1e-3)
    assert (sharper.max(0).values > expected.max(0).values).all()        # smaller tau: sharper weights
    with pytest.raises(TypeError, match="evidential_tua"):
        default_options(evidential_tua=1.0)
