"""The connector init stage (helper/init_stage.py): what trains, that its loss falls, the student's gradient share."""
import pytest
import torch

from distiller_zoo import DISTILLERS
from distiller_zoo.base import Batch
from helper.init_stage import run_init_stage

from connector_cases import context, make_task, options, outputs

INIT_STAGE = ("abound", "factor", "fsp")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class TinyLoader:
    def __init__(self, labels, batches=2, B=8, seed=3):
        g = torch.Generator().manual_seed(seed)
        self.batches = []
        for _ in range(batches):
            idx = torch.randperm(len(labels), generator=g)[:B]
            self.batches.append((torch.randn(B, 3, 32, 32, generator=g), labels[idx], idx))

    def set_epoch(self, epoch):
        pass

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


@torch.no_grad()
def init_losses(task, loader):
    """Every teacher's init-stage loss over the loader, in the init stage's modes."""
    task.model.eval()
    pairs = [(m, d) for m, d in enumerate(task.terms[1].distillers)]
    for _, d in pairs:
        for mod in d.init_stage_modules(task.model):
            mod.train()
    sums = torch.zeros(len(pairs), dtype=torch.float64)
    for x, y, idx in loader:
        s_out, t_outs = task.objective.outputs(x)
        sums += torch.stack([d.init_stage_loss(s_out, t_outs[m], Batch(x, y, idx)) for m, d in pairs]).double()
    return (sums / len(loader)).tolist()


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before, module):
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


@pytest.mark.parametrize("distill", INIT_STAGE)
def test_init_stage_trains_connectors_and_lowers_the_init_loss(distill):
    task, labels, args = make_task(distill, ("resnet8x4", "vgg8"), init_epochs=4, momentum=0.9, weight_decay=5e-4)
    ds = task.terms[1].distillers
    init_mods = {"abound": lambda d: d.connectors, "fsp": lambda d: d.connectors, "factor": lambda d: d.paraphraser}
    before_conn = [snapshot(init_mods[distill](d)) for d in ds]
    before_student = snapshot(task.model)
    before_teachers = [snapshot(t) for t in task.teachers.models]
    before_translator = [snapshot(d.translator) for d in ds] if distill == "factor" else []
    loader = TinyLoader(labels)
    first = init_losses(task, loader)
    lines = []
    run_init_stage(task.objective, loader, args, lines.append)
    assert len([line for line in lines if "init epoch" in line]) == 4
    last = init_losses(task, loader)
    assert all(b < a for a, b in zip(first, last)), (first, last)
    assert all(changed(b, init_mods[distill](d)) for b, d in zip(before_conn, ds))
    if distill == "factor":
        assert "lr 0.01" in lines[0]
        assert not changed(before_student, task.model)                   # only the paraphraser trains
        assert not any(changed(b, d.translator) for b, d in zip(before_translator, ds))
    else:                                  # the student's feature modules train, its classifier does not
        feat_params = {id(p) for p in task.model.get_feat_modules().parameters()}
        moved = {name: not torch.equal(before_student[name], p) for name, p in task.model.named_parameters()}
        assert any(moved[n] for n, p in task.model.named_parameters() if id(p) in feat_params)
        assert not any(moved[n] for n, p in task.model.named_parameters() if id(p) not in feat_params)
    assert not any(changed(b, t) for b, t in zip(before_teachers, task.teachers.models))


def test_student_gradient_share_in_init_stage():
    """With M teachers the shared student gets the mean of the teachers' init gradients."""
    B = 3
    s_shapes, t_shapes = [(4, 8, 8), (6, 8, 8), (8, 4, 4), (8,)], [(4, 8, 8), (6, 8, 8), (8, 4, 4), (8,)]
    grads = []
    for M in (1, 2):
        torch.manual_seed(0)
        d = DISTILLERS["fsp"](context(s_shapes, t_shapes, options("fsp"), num_teachers=M))
        s, t = outputs(s_shapes, B, 1, grad=True), outputs(t_shapes, B, 2)
        loss = d.init_stage_loss(s, t, None)
        loss.backward()
        grads.append((loss.item(), s.feats[0].grad.clone()))
    assert grads[0][0] == pytest.approx(grads[1][0])
    assert torch.allclose(grads[0][1] / 2, grads[1][1], atol=1e-8)
