"""The vision-transformer recipe (helper/schedule.py): warm-up then cosine to --min_lr, AdamW's weight-decay groups."""
import math

import pytest
import torch
import torch.nn as nn

from helper.schedule import build_optimizer, lr_at
from models import build_model

from builders import student_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_warmup_then_cosine_to_min_lr_as_timm():
    args = student_config("--dataset", "digits", "--learning_rate", "5e-4", "--min_lr", "5e-6", "--warmup_epochs", "20",
                          "--cosine", "--epochs", "300")
    # timm CosineLRScheduler(t_initial=300, lr_min=5e-6, warmup_t=20, warmup_lr_init=5e-7), t = epoch - 1
    assert lr_at(args, 1) == pytest.approx(5e-7)
    assert lr_at(args, 11) == pytest.approx(5e-7 + 10 * (5e-4 - 5e-7) / 20)
    t = 20
    assert lr_at(args, 21) == pytest.approx(5e-6 + 0.5 * (5e-4 - 5e-6) * (1 + math.cos(math.pi * t / 300)))
    assert lr_at(args, 300) > 5e-6 and lr_at(args, 300) == pytest.approx(5e-6, rel=0.01)
    # defaults leave RepDistiller's step schedule untouched
    plain = student_config("--dataset", "digits")
    assert lr_at(plain, 1) == 0.05 and lr_at(plain, 151) == pytest.approx(0.005)


def test_adamw_keeps_tokens_norms_and_biases_out_of_weight_decay():
    args = student_config("--dataset", "digits", "--optimizer", "adamw", "--weight_decay", "0.05",
                          "--learning_rate", "5e-4")
    model = build_model("deit_tiny", 10, img_size=32, patch_size=16)
    opt = build_optimizer(nn.ModuleList([model]), args)
    assert isinstance(opt, torch.optim.AdamW)
    no_decay = {id(p) for p in opt.param_groups[0]["params"]}
    decay = {id(p) for p in opt.param_groups[1]["params"]}
    assert opt.param_groups[0]["weight_decay"] == 0 and opt.param_groups[1]["weight_decay"] == 0.05
    assert id(model.cls_token) in no_decay and id(model.pos_embed) in no_decay
    assert id(model.norm.weight) in no_decay and id(model.fc.bias) in no_decay
    assert id(model.fc.weight) in decay and id(model.layers[0].attn.qkv_transform.weight) in decay
    assert len(no_decay) + len(decay) == len(list(model.parameters()))
    assert isinstance(build_optimizer(model, student_config("--dataset", "digits")), torch.optim.SGD)
