"""CUDA-only device bugs caught on the CPU: every training path runs with its model and data on a
pretend CUDA device (``tests/device_guard.py``), where an op that mixes a CUDA tensor with a CPU
tensor fails as it would on a GPU.

Covered: the teacher step, ``train_epoch``/``evaluate`` and ``DeviceSums``, the data loader with
every registered view, every registered ``--distill`` loss (with its connector init stage), every
registered ``--ensemble_method`` (EVIDENTIAL in both modes), spot-adaptive routing in every mode.
The parametrisations read the registries: a new loss, strategy or view is covered by registering it.
"""
import dataclasses

import pytest
import torch
import torch.nn as nn

import dataset
import train_student
import train_teacher
from dataset.augment import AUGMENTATIONS
from distiller_zoo import DISTILLERS, ENSEMBLES
from distiller_zoo.base import TeacherLoss
from distiller_zoo.registry import register_distiller
from distiller_zoo.routing import MODES
from helper.distributed import DistContext
from helper.evaluate import evaluate
from helper.execution import maybe_compile
from helper.meters import DeviceSums
from helper.student_config import StudentPlan
from helper.student_run import StudentRun
from helper.teacher_run import TeacherRun
from helper.teachers import TeacherEnsemble
from models import model_dict

from builders import as_if_on, student_plan, teacher_configs
from device_guard import DeviceMismatch, PretendCuda, place_of

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES, TRAIN, TEST, BATCH = 10, 16, 8, 8


def loaders(views=("standard",), with_index=False):
    return dataset.build_loaders("synthetic", batch_size=BATCH, device="cuda", seed=0, views=views,
                                 with_index=with_index, synthetic_train=TRAIN, synthetic_test=TEST,
                                 synthetic_classes=CLASSES)


def one_per_class(registry):
    """Registry names, one per registered class (aliases share a class)."""
    seen, names = set(), []
    for name in sorted(registry):
        if registry[name] not in seen:
            seen.add(registry[name])
            names.append(name)
    return names


@pytest.fixture(scope="module")
def teacher_files(tmp_path_factory):
    """Freshly initialised teacher checkpoints ({'model': state_dict}, RepDistiller's file names)."""
    folder = tmp_path_factory.mktemp("pretend_teachers")
    files = {}
    for k, arch in enumerate(("resnet8", "resnet8", "resnet14")):
        torch.manual_seed(k)
        path = folder / f"t{k}" / f"{arch}_best.pth"
        path.parent.mkdir()
        torch.save({"model": model_dict[arch](num_classes=CLASSES).state_dict()}, path)
        files.setdefault(arch, []).append(str(path))
    return files


def train_student_on_pretend_cuda(teacher_files, save_dir, distill, method, archs=("resnet8", "resnet8"), extra=(),
                                  spot=False, fuse=False):
    """A real run of train_student.py's builder and trainer (``StudentRun``) with ``--device cuda``
    on the pretend device: data, teachers, student, connector pre-training, one epoch, evaluation,
    checkpoints. Returns the epoch's record."""
    paths = [teacher_files[a].pop(0) for a in archs]
    try:
        plan = student_plan(
            "--distill", distill, "--ensemble_method", method, "--dataset", "synthetic", "--batch_size", str(BATCH),
            "--synthetic_train", str(TRAIN), "--synthetic_test", str(TEST), "--synthetic_classes", str(CLASSES),
            "--epochs", "1", "--init_epochs", "1", "--beta_delay_epochs", "0", "--print_freq", "1", "--feat_dim", "16",
            "--nce_k", "8", "--path_t", *paths, "--save_dir", str(save_dir), "--quiet",
            "--fuse_teachers" if fuse else "--no-fuse_teachers", *extra, *(["--spot_adaptive"] if spot else []))
    finally:
        for a, path in zip(archs, paths):
            teacher_files[a].append(path)
    plan = StudentPlan(tuple(dataclasses.replace(m, config=as_if_on(m.config, "cuda")) for m in plan.members))
    with PretendCuda():
        run = StudentRun(train_student.build_parser(), plan, train_student.resolve_teachers(train_student.build_parser(), plan.shared),
                         DistContext())
        try:
            run.train()
            trainer = run.students[0].member.trainer
            ev = evaluate([trainer.task.model] + trainer.task.teachers.models, trainer.loaders.test, "cuda")
        finally:
            run.close()
    record = trainer.record
    assert record["train_loss"] == record["train_loss"] and 0 <= ev["top1"][0] <= 100
    assert all(place_of(p) == "cuda" for p in trainer.task.trainable().parameters())
    return record


# -- the guard itself ---------------------------------------------------------------------------
def test_the_guard_fails_where_cuda_would():
    with PretendCuda():
        x = torch.randn(4).to("cuda")
        assert x.device.type == "cuda" and x.is_cuda
        y = torch.zeros(4, device=x.device) + x                 # made on the data's device: fine
        assert place_of(y) == "cuda" and place_of(y.cpu()) == "cpu"
        with pytest.raises(DeviceMismatch, match="stack"):
            torch.stack([x, torch.zeros(4)])                  # a factory without device= is on the CPU
        with pytest.raises(DeviceMismatch):
            x * torch.tensor(2.0)                             # stricter than CUDA: no CPU scalars either
        with pytest.raises(DeviceMismatch):
            x.numpy()
        with pytest.raises(DeviceMismatch, match="Generator"):
            torch.rand(4, generator=torch.Generator(), device=x.device)
        assert torch.equal(x[torch.tensor([0, 1])], x[:2])     # CPU index tensors are fine (CUDA takes them)


class LegacyDeviceSums(DeviceSums):
    """``DeviceSums.add`` as it was before issue 21: a number became a CPU tensor."""

    def add(self, name, value):
        value = value.detach() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
        value = value.double() if value.is_floating_point() else value
        self.sums[name] = self.sums[name] + value if name in self.sums else value.clone()


def test_device_sums_keep_numbers_and_tensors_on_the_device_of_the_sums():
    with PretendCuda():
        x = torch.arange(4.0).to("cuda")
        sums = DeviceSums()
        for _ in range(2):
            sums.add("loss", x.sum())
            sums.add("top1", (x > 1).sum())
            sums.add("n", 4)
        assert sums.read() == {"loss": 12.0, "top1": 4.0, "n": 8.0}
        assert all(place_of(t) == "cuda" for t in sums.sums.values())
        legacy = LegacyDeviceSums()
        legacy.add("loss", x.sum())
        legacy.add("n", 4)
        with pytest.raises(DeviceMismatch, match="stack"):     # issue 21, item 1
            legacy.read()
    with pytest.raises(ValueError, match="'n' is on cpu"):
        mixed = DeviceSums()
        mixed.add("loss", torch.zeros((), device="meta"))
        mixed.add("n", torch.tensor(3))


def test_numbers_alone_and_numbers_next_to_tensors_read_back():
    sums = DeviceSums()
    sums.add("n", 3)
    sums.add("n", 2.5)
    assert sums.read() == {"n": 5.5}
    sums.add("n", torch.tensor(1.0))
    sums.add("m", torch.tensor(2))
    assert sums.read() == {"n": 6.5, "m": 2.0}
    sums.reset()
    assert sums.read() == {}


def test_maybe_compile_returns_a_module_and_does_not_shadow_torch():
    """Issue 21, item 2: ``import torch._dynamo`` inside maybe_compile made ``torch`` a local name."""
    lines = []
    net = nn.Linear(3, 2)
    out = maybe_compile(net, lines.append, "the test net")
    assert getattr(out, "_orig_mod", out) is net


# -- the loop, the teacher step, the loader and its views ----------------------------------------
@pytest.mark.parametrize("view", sorted(AUGMENTATIONS))
def test_every_view_is_made_on_the_device_of_the_images(view):
    with PretendCuda():
        ld = loaders(("none", view), with_index=True)
        ld.train.set_epoch(1)
        (plain, augmented), labels, index = next(iter(ld.train))
        assert {place_of(plain), place_of(augmented), place_of(labels), place_of(index)} == {"cuda"}


def test_teacher_training_epoch_and_evaluation_run_on_the_device(tmp_path):
    """train_teacher.py's builder and trainer (``TeacherRun``) with ``--device cuda``."""
    trials = teacher_configs("--model", "resnet8", "--dataset", "synthetic", "--batch_size", str(BATCH),
                             "--synthetic_train", str(TRAIN), "--synthetic_test", str(TEST), "--synthetic_classes",
                             str(CLASSES), "--epochs", "1", "--print_freq", "1", "--save_dir", str(tmp_path), "--quiet")
    with PretendCuda():
        run = TeacherRun(train_teacher.build_parser(), [as_if_on(c, "cuda") for c in trials], DistContext())
        (name, summary), = run.train()
        model = model_dict["resnet8"](num_classes=CLASSES).to("cuda")
        ev = evaluate([model, model], dataset.build_loaders(
            "synthetic", batch_size=BATCH, device="cuda", seed=0, synthetic_train=TRAIN, synthetic_test=TEST,
            synthetic_classes=CLASSES).test, "cuda")
    assert name == "synthetic-resnet8-0" and 0 <= summary["last_acc"] <= 100
    assert 0 <= ev["ensemble_top1"] <= 100


def test_evidential_teacher_loss_runs_on_the_device():
    from distiller_zoo.registry import CLASSIFICATION_LOSSES
    for name, fn in sorted(CLASSIFICATION_LOSSES.items()):
        with PretendCuda():
            logits = torch.randn(4, CLASSES).to("cuda").requires_grad_()
            labels = torch.tensor([0, 1, 2, 3]).to("cuda")
            loss = fn(logits, labels)
            loss.mean().backward()
        assert place_of(loss) == "cuda", name


# -- every distiller, every strategy, routing ----------------------------------------------------
@pytest.mark.parametrize("distill", one_per_class(DISTILLERS))
def test_every_distiller_trains_on_the_device(distill, deterministic, teacher_files, tmp_path):
    """Under --deterministic too (a supported GPU path): no op whose CUDA backward would stop it."""
    train_student_on_pretend_cuda(teacher_files, tmp_path, distill, "CAMKD")


@pytest.mark.parametrize("method, extra", [(m, ()) for m in sorted(ENSEMBLES) if m != "EVIDENTIAL"]
                         + [("EVIDENTIAL", ("--evidential_mode", "pool")),
                            ("EVIDENTIAL", ("--evidential_mode", "weight"))])
@pytest.mark.parametrize("distill", ["kd", "inter"])
def test_every_strategy_trains_on_the_device(method, extra, distill, teacher_files, tmp_path):
    train_student_on_pretend_cuda(teacher_files, tmp_path, distill, method, extra=extra)


def test_every_strategy_is_covered():
    assert {"AVERAGE_LOSS", "EBKD", "AEKD", "CAMKD", "EVIDENTIAL"} <= set(ENSEMBLES)


@pytest.mark.parametrize("mode", MODES)
def test_spot_adaptive_routing_trains_on_the_device(mode, teacher_files, tmp_path):
    train_student_on_pretend_cuda(teacher_files, tmp_path, "attention", "AVERAGE_LOSS", extra=("--spot_mode", mode),
                                  spot=True)


def test_fused_and_separate_teachers_run_on_the_device(teacher_files, tmp_path):
    for fuse in (True, False):
        train_student_on_pretend_cuda(teacher_files, tmp_path / str(fuse), "kd", "AVERAGE_LOSS", fuse=fuse)


# -- the guard catches a loss that makes a CPU tensor -----------------------------------------------
def test_a_distiller_that_adds_a_cpu_tensor_fails_the_guard(teacher_files, tmp_path):
    kd = DISTILLERS["kd"]

    class CpuOffset(kd):
        """KD plus a constant made without device= (the bug class the guard is for)."""

        def forward(self, s, t, batch):
            result = super().forward(s, t, batch)
            return TeacherLoss(per_sample=result.per_sample + torch.zeros(result.per_sample.shape[0]),
                            confidence_logits=result.confidence_logits, anchor=result.anchor,
                            anchor_grad=result.anchor_grad)

    register_distiller("test_cpu_offset")(CpuOffset)
    try:
        with pytest.raises(DeviceMismatch, match="add"):
            train_student_on_pretend_cuda(teacher_files, tmp_path, "test_cpu_offset", "AVERAGE_LOSS")
    finally:
        DISTILLERS.pop("test_cpu_offset")


# -- the CUDA-only data tests, run on the pretend device ---------------------------------------
@pytest.mark.parametrize("module, test", [("test_augment", "test_cpu_and_cuda_augment_identically"),
                                          ("test_augment", "test_strong_view_is_the_same_on_cpu_and_cuda"),
                                          ("test_data_loader", "test_cuda_loader_matches_cpu_loader")])
def test_cuda_only_data_tests_run_on_the_pretend_device(module, test):
    """The three tests that compare CPU and CUDA views skip in CPU CI; here they run with the
    pretend device, which checks their device handling (not CUDA's arithmetic: the GPU run does)."""
    import importlib
    fn = getattr(importlib.import_module(module), test)
    with PretendCuda():
        fn()


# -- fused teachers under the CUDA defaults (channels_last) ---------------------------------------
def test_fused_channels_last_teachers_have_no_batching_fallback():
    """Issue 21, item 5: vmap over channels_last maps fell back to a per-teacher loop for
    adaptive_avg_pool2d (a warning about aten::as_strided_); the fused path now runs without one
    and equals the separate forwards."""
    import warnings
    teachers = TeacherEnsemble([model_dict["resnet8"](num_classes=CLASSES) for _ in range(2)], ["a", "b"],
                               fuse=True).to("cpu", memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fused = teachers.outputs(x)
    assert not [w for w in caught if "batching rule" in str(w.message)]
    for out, model in zip(fused, teachers.models):
        torch.testing.assert_close(out.logits, model(x), rtol=1e-5, atol=1e-5)


# -- --deterministic on CUDA --------------------------------------------------------------------------
@pytest.fixture
def deterministic():
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)


def test_the_guard_knows_cuda_ops_without_a_deterministic_backward(deterministic):
    with PretendCuda():
        x = torch.randn(2, 3, 8, 8).to("cuda").requires_grad_()
        with pytest.raises(DeviceMismatch, match="adaptive_avg_pool2d"):
            torch.nn.functional.adaptive_avg_pool2d(x, 1)
        with torch.no_grad():
            torch.nn.functional.adaptive_avg_pool2d(x, 1)      # no backward, no error


@pytest.mark.parametrize("arch", sorted(model_dict))
def test_every_model_trains_under_deterministic_on_cuda(arch, deterministic):
    """--deterministic on a GPU: adaptive_avg_pool2d's CUDA backward has no deterministic version,
    so global pooling by it stopped every run; the models pool with a mean."""
    with PretendCuda():
        model = model_dict[arch](num_classes=CLASSES).to("cuda")
        size = getattr(model, "input_size", 32)
        x = torch.randn(2, 3, size, size).to("cuda")
        feats, logits = model(x, is_feat=True)
        logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("size, out", [((8, 8), (4, 4)), ((8, 8), (1, 1)), ((8, 6), (2, 3)), ((7, 7), (3, 3))])
def test_average_pool_to_is_adaptive_average_pooling(size, out):
    """connectors.average_pool_to: adaptive_avg_pool2d's values and gradients (avg_pool2d where the
    sizes divide, for a deterministic CUDA backward)."""
    from distiller_zoo.connectors import average_pool_to
    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 3, *out, dtype=torch.float64)
    ours = average_pool_to(x, out)
    (g_ours,) = torch.autograd.grad((ours * y).sum(), x)
    ref = torch.nn.functional.adaptive_avg_pool2d(x, out)
    (g_ref,) = torch.autograd.grad((ref * y).sum(), x)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-12, atol=1e-12)
