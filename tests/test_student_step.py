"""The student step: terms built from shapes, strategies x losses, gradients where they belong."""
import math

import pytest
import torch
import torch.nn.functional as F

from distiller_zoo.base import Batch, EnsembleStrategy, NetOutput
from distiller_zoo.KD import kd_loss
from distiller_zoo.ensembles.aekd import aekd_teacher_weights
from distiller_zoo.ensembles.evidential import calibrated_sharpness
from helper.objective import ObjectiveSchedule, TermSpec, objective_terms
from helper.student_step import loss_options

from builders import forward, random_batch, step_config, student_task
from conftest import assert_shares_are_the_step_weights, recording_term_weights


def options(**kw):
    return step_config(**{"beta_delay_epochs": 0, "epochs": 10, **kw})


def make_run(archs=("resnet8", "resnet14", "resnet8x4"), student="resnet8", num_classes=10, seed=0, **kw):
    args = options(teacher_num=len(archs), **kw)
    return student_task(args, archs, student, num_classes, seed), args


@pytest.mark.parametrize("method", ["AVERAGE_LOSS", "EBKD", "CAMKD", "AEKD"])
@pytest.mark.parametrize("distill", ["kd", "hint", "inter"])
def test_every_strategy_with_kd_hint_and_inter(method, distill):
    task, args = make_run(distill=distill, ensemble_method=method, beta=1.0)
    task.train_mode()
    x, y = random_batch()
    with recording_term_weights(task) as seen:
        out = forward(task, x, y, epoch=2)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in task.model.parameters() if p.requires_grad)
    for t in task.teachers.models:
        assert all(p.grad is None for p in t.parameters())
    assert_shares_are_the_step_weights([out], seen, steps=1)
    if method == "AVERAGE_LOSS":
        assert all(torch.allclose(v, torch.full((3,), 1 / 3)) for v in out.shares.values())


def test_kd_step_equals_hand_computed_objective():
    task, args = make_run(archs=("resnet8", "resnet14"), distill="kd", ensemble_method="CAMKD",
                          gamma=0.5, alpha=2.0)
    task.train_mode()
    x, y = random_batch()
    torch.manual_seed(5)
    out = forward(task, x, y, epoch=1)
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
    out = forward(task, x, y, epoch=2)
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
    """AEKD's weights of the hint term are the SVM dual of the teachers' (normalised) gradients at the
    student feature the hints read, recomputed here with autograd from the same modules."""
    task, args = make_run(distill="hint", ensemble_method="AEKD", beta=1.0)
    task.train_mode()
    x, y = random_batch()
    with recording_term_weights(task) as seen:
        out = forward(task, x, y, epoch=2)
    feats, logits = task.model(x, is_feat=True)             # train-mode BN: the same batch statistics
    t_feats = [t(x, is_feat=True)[0] for t in task.teachers.models]
    f_s = feats[args.hint_layer]
    grads = []
    for d, tf in zip(task.terms[1].distillers, t_feats):
        loss = (d.regressor(f_s) - tf[args.hint_layer].detach()).pow(2).flatten(1).mean(1).mean()
        grads.append(torch.autograd.grad(loss, f_s, retain_graph=True)[0].mean(0).flatten())
    expected = aekd_teacher_weights(torch.stack(grads), C=args.C, svm_norm=True)   # feature terms normalise
    got = seen["hint"][0]
    assert torch.allclose(got, expected[:, None].expand_as(got), atol=1e-5)
    assert expected.max() - expected.min() > 0.05                # not a uniform split that anything would match
    out.loss.backward()


def teacher_logits(task, x):
    with torch.no_grad():
        return torch.stack([t(x) for t in task.teachers.models]).float()


def strategy_weights_by_hand(method, t, y, s, args):
    """``[M, B]`` weights of each strategy from its paper's formula (independent of the code)."""
    M, B, _ = t.shape
    if method == "AVERAGE_LOSS":
        return torch.full((M, B), 1.0 / M)
    if method == "EBKD":
        p = torch.softmax(t, -1)
        H = -(p * p.log()).sum(-1)
        return (1 - H / H.sum(0)) / M
    if method == "CAMKD":
        ce = torch.stack([F.cross_entropy(t[m], y, reduction="none") for m in range(M)])
        return (1 - torch.softmax(ce, 0)) / ((M - 1) * M)
    if method == "AEKD":       # gradient of KD at the student logits: T (softmax(s/T) - softmax(t/T)) / B
        T = args.kd_T
        g = torch.stack([(T * (torch.softmax(s / T, 1) - torch.softmax(t[m] / T, 1)) / B).mean(0) for m in range(M)])
        return aekd_teacher_weights(g, C=args.C, svm_norm=args.svm_norm)[:, None].expand(M, B)
    if method == "EVIDENTIAL":  # certainty = 1 - u of each teacher's tempered Dirichlet, softmax over -u / tau
        beta = calibrated_sharpness(t, y)
        z = t / args.evidential_T
        z = (z - z.mean(-1, keepdim=True)) * beta[:, None, None]
        alpha = z.double().exp() + math.exp(args.evidential_prior)
        u = t.shape[-1] * math.exp(args.evidential_prior) / alpha.sum(-1)
        return torch.softmax(-u / args.evidential_tau, 0).float()
    raise AssertionError(method)


@pytest.mark.parametrize("method, extra", [("AVERAGE_LOSS", {}), ("EBKD", {}), ("CAMKD", {}), ("AEKD", {}),
                                           ("EVIDENTIAL", {"evidential_mode": "weight"})])
def test_the_step_weights_each_teachers_loss_by_its_strategy(method, extra):
    """The KD term of a step is (1/B) sum_i sum_m W[m, i] KD[m, i] with W from the strategy's formula;
    the uniform split would give a different loss (except for AVERAGE_LOSS, which is that split)."""
    task, args = make_run(distill="kd", ensemble_method=method, **extra)
    task.train_mode()
    x, y = random_batch()
    out = forward(task, x, y, epoch=2)
    s, t = out.logits.detach().float(), teacher_logits(task, x)
    L = torch.stack([kd_loss(s, tm, args.kd_T) for tm in t])
    W = strategy_weights_by_hand(method, t, y, s, args)
    expected = (W * L).sum() / L.shape[1]
    assert out.metrics["loss_kd"].item() == pytest.approx(expected.item(), rel=1e-5)
    uniform = L.mean()
    if method != "AVERAGE_LOSS":
        assert abs(expected - uniform) > 1e-3 * uniform


def test_evidential_pool_step_distils_the_pooled_teacher():
    """EVIDENTIAL pool: the KD term is KD to ONE virtual teacher, softmax of the pooled tempered
    evidence; not the mean of the teachers' KD losses."""
    task, args = make_run(distill="kd", ensemble_method="EVIDENTIAL", evidential_mode="pool")
    task.train_mode()
    x, y = random_batch()
    out = forward(task, x, y, epoch=2)
    s, t = out.logits.detach().float(), teacher_logits(task, x)
    beta = calibrated_sharpness(t, y)
    z = t / args.evidential_T
    log_e = (z - z.mean(-1, keepdim=True)) * beta[:, None, None]          # gauge "mean"
    pooled = torch.logsumexp(log_e, 0) - math.log(t.shape[0])             # pool "mean"
    expected = kd_loss(s, args.evidential_T * pooled, args.kd_T).mean()
    assert out.metrics["loss_kd"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert abs(expected - torch.stack([kd_loss(s, tm, args.kd_T) for tm in t]).mean()) > 1e-3 * expected


def test_loss_weight_schedule_follows_camkd():
    args = options(distill="inter", gamma=1.0, alpha=1.0, beta=50.0, epochs=240, beta_delay_epochs=1,
                   distill_decay=True)
    terms = objective_terms(args)
    schedule = ObjectiveSchedule.of(args)
    assert terms == [TermSpec("kd", 1.0, "AVERAGE_LOSS", "logit"), TermSpec("inter", 50.0, "AVERAGE_LOSS", "feature")]
    assert schedule.weights(terms, 1) == (1.0, [1.0, 0.0])
    assert schedule.weights(terms, 120) == (1.0, [1.0, 50.0])
    gamma, (a, b) = schedule.weights(terms, 180)
    assert a == pytest.approx(60 / 120) and gamma == pytest.approx(0.5) and b == 50.0
    assert schedule.weights(terms, 240)[1][0] == 0.0


def test_objective_layout_special_cases_and_explicit_terms():
    """RepDistiller's ``--distill X -a -b`` is kd (-a) + X (-b) for a feature X and X (-a) alone for a
    logit X; explicit weights and strategies go to their own term."""
    lay = lambda **kw: [(t.loss, t.weight, t.ensemble, t.kind) for t in objective_terms(options(**kw))]
    assert lay(distill="dkd", alpha=2.0, beta=7.0) == [("dkd", 2.0, "AVERAGE_LOSS", "logit")]
    assert lay(distill="hint", alpha=0.5, beta=7.0) == [("kd", 0.5, "AVERAGE_LOSS", "logit"),
                                                        ("hint", 7.0, "AVERAGE_LOSS", "feature")]
    assert lay(distill="attention:1000+crd:0.8@AEKD", alpha=3.0, ensemble_method="EBKD", teacher_num=2) == [
        ("kd", 3.0, "EBKD", "logit"), ("attention", 1000.0, "EBKD", "feature"), ("crd", 0.8, "AEKD", "feature")]
    assert lay(distill="dkd:2+hint", beta=9.0) == [("dkd", 2.0, "AVERAGE_LOSS", "logit"),
                                                   ("hint", 9.0, "AVERAGE_LOSS", "feature")]


def test_three_terms_each_weighted_and_combined_by_its_own_strategy():
    task, args = make_run(distill="kd+hint:3+inter:0.5@CAMKD", ensemble_method="EBKD", gamma=0.7, alpha=2.0)
    assert [(t.key, type(t.strategy).__name__) for t in task.terms] == [
        ("kd", "EntropyWeights"), ("hint", "EntropyWeights"), ("inter", "ConfidenceAware")]
    task.train_mode()
    x, y = random_batch()
    out = forward(task, x, y, epoch=2)
    m = out.metrics
    expected = 0.7 * m["loss_cls"] + 2.0 * m["loss_kd"] + 3.0 * m["loss_hint"] + 0.5 * m["loss_inter"]
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert all(m[f"loss_{k}"] > 0 for k in ("kd", "hint", "inter"))


def test_hint_with_cross_family_teachers():
    """A resnet8 student hinted by a resnet8x4 and a vgg8 teacher: one regressor per teacher, from the
    student's map to that teacher's (different) map; the term is the mean of their MSEs."""
    task, args = make_run(archs=("resnet8x4", "vgg8"), student="resnet8", distill="hint", beta=1.0)
    task.train_mode()
    x, y = random_batch()
    out = forward(task, x, y, epoch=3)
    feats, logits = task.model(x, is_feat=True)
    mse = []
    for d, t in zip(task.terms[1].distillers, task.teachers.models):
        t_map = t(x, is_feat=True)[0][args.hint_layer]
        r = d.regressor(feats[args.hint_layer])
        assert r.shape == t_map.shape                       # each regressor lands on its own teacher's map
        mse.append(F.mse_loss(r, t_map).item())
    assert task.terms[1].distillers[0].regressor is not task.terms[1].distillers[1].regressor
    assert out.metrics["loss_hint"].item() == pytest.approx(sum(mse) / 2, rel=1e-5)
    s, t = out.logits.detach(), teacher_logits(task, x)
    kd = torch.stack([kd_loss(s, tm, args.kd_T) for tm in t]).mean()
    assert out.loss.item() == pytest.approx((F.cross_entropy(s, y) + kd + sum(mse) / 2).item(), rel=1e-5)
    out.loss.backward()
    assert all(p.grad is not None for d in task.terms[1].distillers for p in d.regressor.parameters())


class RunningConfidence(EnsembleStrategy):
    """A toy strategy with state: weights from a running mean of each teacher's loss, and a count of
    epochs begun (what a strategy with memory, e.g. of teacher reliability, would keep)."""

    def __init__(self, opt):
        super().__init__(opt)
        self.epochs_begun, self.running = 0, None

    def epoch_begin(self, epoch, epochs):
        self.epochs_begun += 1

    def weights(self, inputs):
        mean = inputs.losses.mean(1)
        self.running = mean if self.running is None else 0.5 * self.running + 0.5 * mean
        return torch.softmax(-self.running, 0)[:, None].expand_as(inputs.losses).contiguous()

    def state_dict(self):
        return {"epochs_begun": self.epochs_begun, "running": self.running}

    def load_state_dict(self, state):
        self.epochs_begun, self.running = state["epochs_begun"], state["running"]


def test_a_stateful_strategy_is_checkpointed_and_restored():
    """The task's extra state (what --resume restores) carries each term's strategy state; after a
    save/load round trip the restored run takes the same next step as the original."""
    import io

    def run():
        task, args = make_run(archs=("resnet8", "resnet14"), distill="kd")
        task.terms[0].strategy = RunningConfidence(loss_options(args))
        task.train_mode()
        return task
    a, b = run(), run()
    x, y = random_batch()
    a.epoch_begin(1, 10)
    forward(a, x, y, epoch=1)
    forward(a, x.flip(3), y, epoch=1)
    buffer = io.BytesIO()
    torch.save(a.extra_state(), buffer)
    buffer.seek(0)
    b.load_extra_state(torch.load(buffer, weights_only=True))
    assert b.terms[0].strategy.epochs_begun == 1 and torch.equal(b.terms[0].strategy.running,
                                                                  a.terms[0].strategy.running)
    for task in (a, b):
        task.epoch_begin(2, 10)
    with recording_term_weights(a) as wa, recording_term_weights(b) as wb:
        forward(a, x, y, epoch=2)
        forward(b, x, y, epoch=2)
    assert torch.equal(wa["kd"][0], wb["kd"][0]) and b.terms[0].strategy.epochs_begun == 2
    fresh = run()
    with recording_term_weights(fresh) as wf:
        forward(fresh, x, y, epoch=2)
    assert not torch.equal(wf["kd"][0], wa["kd"][0])        # without the state the step differs
    with pytest.raises(ValueError, match="keeps no state"):
        make_run(distill="kd")[0].terms[0].strategy.load_state_dict({"running": 1})


def test_teachers_stay_compiled_after_to_and_fused_groups_are_compiled(monkeypatch):
    import helper.teachers
    from helper.teachers import TeacherEnsemble
    from models import model_dict
    compiled = []

    def fake_compile(fn, log, what):
        def run(*a, **kw):
            compiled.append(what)
            return fn(*a, **kw)
        return run
    monkeypatch.setattr(helper.teachers, "maybe_compile", fake_compile)
    x = random_batch(B=2)[0]
    for fuse, expected in [(False, ["teacher a", "teacher b", "teacher c"]), (True, ["teachers a, b (fused)", "teacher c"])]:
        ens = TeacherEnsemble([model_dict[m](num_classes=10) for m in ("resnet8", "resnet8", "resnet14")],
                              ["a", "b", "c"], fuse=fuse)
        ens.compile(print)
        ens.to("cpu")                                   # moving the teachers keeps them compiled
        compiled.clear()
        ens.outputs(x)
        assert compiled == expected
