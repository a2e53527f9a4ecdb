"""The student step: terms built from shapes, strategies x losses, gradients where they belong."""
import pytest
import torch
import torch.nn.functional as F

from distiller_zoo.base import Batch, NetOutput
from distiller_zoo.KD import kd_loss
from helper.distill import TermSpec, objective_terms, term_weights

from conftest import build_student_task, random_batch, student_options


def options(**kw):
    return student_options(**{"beta_delay_epochs": 0, "epochs": 10, **kw})


def make_run(archs=("resnet8", "resnet14", "resnet8x4"), student="resnet8", num_classes=10, seed=0, **kw):
    args = options(**kw)
    return build_student_task(args, archs, student, num_classes, seed), args


@pytest.mark.parametrize("method", ["AVERAGE_LOSS", "EBKD", "CAMKD", "AEKD"])
@pytest.mark.parametrize("distill", ["kd", "hint", "inter"])
def test_every_strategy_with_every_issue6_loss(method, distill):
    task, args = make_run(distill=distill, ensemble_method=method, beta=1.0)
    task.train_mode()
    x, y = random_batch()
    out = task.step((x, y), epoch=2)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in task.model.parameters() if p.requires_grad)
    for t in task.teachers.models:
        assert all(p.grad is None for p in t.parameters())
    shares = task.epoch_metrics()
    assert shares and all(0 <= v <= 1 for v in shares.values())


def test_kd_step_equals_hand_computed_objective():
    task, args = make_run(archs=("resnet8", "resnet14"), distill="kd", ensemble_method="CAMKD",
                          gamma=0.5, alpha=2.0)
    task.train_mode()
    x, y = random_batch()
    torch.manual_seed(5)
    out = task.step((x, y), epoch=1)
    # independent recomputation with the same module states (BN in train mode, same batch)
    s_logits = out.logits.detach()
    with torch.no_grad():
        t_logits = [t(x) for t in task.teachers.models]
    ce = torch.stack([F.cross_entropy(t, y, reduction="none") for t in t_logits])
    w = (1 - torch.softmax(ce, 0)) / (2 - 1)
    L = torch.stack([kd_loss(s_logits, t, 4.0) for t in t_logits])
    expected = 0.5 * F.cross_entropy(s_logits, y) + 2.0 * (w * L).sum() / (L.shape[1] * 2)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_camkd_inter_gradients_reach_student_and_embeddings_not_teachers():
    task, args = make_run(distill="inter", ensemble_method="CAMKD", alpha=0.0, beta=50.0)
    task.train_mode()
    before = [{k: v.clone() for k, v in t.state_dict().items()} for t in task.teachers.models]
    x, y = random_batch()
    out = task.step((x, y), epoch=2)
    out.loss.backward()
    embeds = [d.embed for d in task.terms[1].distillers]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for e in embeds for p in e.parameters()
               if p.dim() > 1)
    assert task.model.conv1.weight.grad.abs().sum() > 0
    for t, sd in zip(task.teachers.models, before):
        assert all(p.grad is None for p in t.parameters())
        assert all(torch.equal(sd[k], v) for k, v in t.state_dict().items())   # BN stats too


def test_inter_confidence_uses_student_feature_through_teacher_head():
    """The CA-MKD weights of the inter term come from CE(teacher_head(embed(student feature)), y)."""
    task, args = make_run(archs=("resnet8", "resnet14"), distill="inter", ensemble_method="CAMKD")
    task.model.eval()
    for term in task.terms:
        term.eval()
    x, y = random_batch()
    with torch.no_grad():
        feats, logits = task.model(x, is_feat=True)
        s_out = NetOutput(feats, logits, task.model.head, task.model)
        t_outs = task.teachers.outputs(x)
        loss, weights, results = task.terms[1](s_out, t_outs, Batch(x, y))
        u = [t.head(d.embed(feats[-2])) for t, d in zip(task.teachers.models, task.terms[1].distillers)]
        ce = torch.stack([F.cross_entropy(ui, y, reduction="none") for ui in u])
        expected_w = (1 - torch.softmax(ce, 0)) / 2
        mse = torch.stack([(d.embed(feats[-2]) - t.feats[-2]).pow(2).flatten(1).mean(1)
                           for d, t in zip(task.terms[1].distillers, t_outs)])
    assert torch.allclose(weights, expected_w, atol=1e-6)
    assert loss.item() == pytest.approx(((expected_w * mse).sum() / len(y)).item(), rel=1e-5)


def test_aekd_hint_weights_use_feature_gradients():
    task, args = make_run(distill="hint", ensemble_method="AEKD", beta=1.0)
    task.train_mode()
    x, y = random_batch()
    out = task.step((x, y), epoch=2)
    shares = task.epoch_metrics()
    assert sum(v for k, v in shares.items() if k.startswith("weight_hint")) == pytest.approx(1.0, abs=1e-5)
    out.loss.backward()


def test_loss_weight_schedule_follows_camkd():
    args = options(distill="inter", gamma=1.0, alpha=1.0, beta=50.0, epochs=240, beta_delay_epochs=1,
                   distill_decay=True)
    terms = objective_terms(args)
    assert terms == [TermSpec("kd", 1.0, "AVERAGE_LOSS", "logit"), TermSpec("inter", 50.0, "AVERAGE_LOSS", "feature")]
    assert term_weights(args, terms, 1) == (1.0, [1.0, 0.0])
    assert term_weights(args, terms, 120) == (1.0, [1.0, 50.0])
    gamma, (a, b) = term_weights(args, terms, 180)
    assert a == pytest.approx(60 / 120) and gamma == pytest.approx(0.5) and b == 50.0
    assert term_weights(args, terms, 240)[1][0] == 0.0


def test_objective_layout_special_cases_and_explicit_terms():
    """RepDistiller's ``--distill X -a -b`` is kd (-a) + X (-b) for a feature X and X (-a) alone for a
    logit X; explicit weights and strategies go to their own term."""
    lay = lambda **kw: [(t.loss, t.weight, t.ensemble, t.kind) for t in objective_terms(options(**kw))]
    assert lay(distill="dkd", alpha=2.0, beta=7.0) == [("dkd", 2.0, "AVERAGE_LOSS", "logit")]
    assert lay(distill="hint", alpha=0.5, beta=7.0) == [("kd", 0.5, "AVERAGE_LOSS", "logit"),
                                                        ("hint", 7.0, "AVERAGE_LOSS", "feature")]
    assert lay(distill="attention:1000+crd:0.8@AEKD", alpha=3.0, ensemble_method="EBKD") == [
        ("kd", 3.0, "EBKD", "logit"), ("attention", 1000.0, "EBKD", "feature"), ("crd", 0.8, "AEKD", "feature")]
    assert lay(distill="dkd:2+hint", beta=9.0) == [("dkd", 2.0, "AVERAGE_LOSS", "logit"),
                                                   ("hint", 9.0, "AVERAGE_LOSS", "feature")]


def test_three_terms_each_weighted_and_combined_by_its_own_strategy():
    task, args = make_run(distill="kd+hint:3+inter:0.5@CAMKD", ensemble_method="EBKD", gamma=0.7, alpha=2.0)
    assert [(t.key, type(t.strategy).__name__) for t in task.terms] == [
        ("kd", "EntropyWeights"), ("hint", "EntropyWeights"), ("inter", "ConfidenceAware")]
    task.train_mode()
    x, y = random_batch()
    out = task.step((x, y), epoch=2)
    m = out.metrics
    expected = 0.7 * m["loss_cls"] + 2.0 * m["loss_kd"] + 3.0 * m["loss_hint"] + 0.5 * m["loss_inter"]
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert all(m[f"loss_{k}"] > 0 for k in ("kd", "hint", "inter"))


def test_hint_with_cross_family_teachers():
    from models import model_dict as md
    if "vgg8" not in md:
        pytest.skip("vgg not registered yet")
    task, args = make_run(archs=("resnet8x4", "vgg8"), student="resnet8", distill="hint", beta=1.0)
    task.train_mode()
    x, y = random_batch()
    out = task.step((x, y), epoch=3)
    out.loss.backward()
    assert torch.isfinite(out.loss)
