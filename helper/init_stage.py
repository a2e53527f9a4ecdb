"""Connector pre-training before distillation: RepDistiller's ``--init_epochs`` stage for FT's
paraphraser and AB's/FSP's connectors (``Distiller.init_stage_modules``)."""
from __future__ import annotations

import torch

from distiller_zoo.base import Batch

from .distributed import average_gradients
from .errors import NonFiniteLoss
from .student_step import StudentObjective

INIT_STAGE_EPOCH_BASE = 1_000_000   # loader epochs of the init stage: distinct from training epochs


def run_init_stage(objective: StudentObjective, loader, config, log) -> None:
    """Pre-train connectors before distillation (RepDistiller's ``--init_epochs`` stage for FT's
    paraphraser and AB's/FSP's connectors): every teacher's distiller that has an init stage is
    trained on its ``init_stage_loss``, all teachers at once, with SGD at the distiller's init
    learning rate. The student runs in eval mode except for modules a distiller trains."""
    pairs = [(m, d) for term in objective.terms for m, d in enumerate(term.distillers)
             if d.init_stage_modules(objective.student) is not None]
    if not pairs or config.init_epochs <= 0:
        return
    modules = []
    for _, d in pairs:
        modules += [mod for mod in d.init_stage_modules(objective.student) if all(mod is not x for x in modules)]
    params, seen = [], set()
    for mod in modules:
        for p in mod.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    lr = min(d.init_stage_lr(config, objective.student) for _, d in pairs)
    optimizer = torch.optim.SGD(params, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)
    log(f"==> init stage: {config.init_epochs} epochs training {type(pairs[0][1]).__name__} connectors "
        f"for {len(pairs)} teacher(s), lr {lr}")
    for epoch in range(1, config.init_epochs + 1):
        objective.student.eval()
        for mod in modules:
            mod.train()
        loader.set_epoch(INIT_STAGE_EPOCH_BASE + epoch)
        sums = torch.zeros(len(pairs), dtype=torch.float64, device=config.device)
        n = 0
        for batch in loader:
            images = batch[0][0] if isinstance(batch[0], (tuple, list)) else batch[0]
            b = Batch(images=images, labels=batch[1], index=batch[2] if len(batch) > 2 else None, epoch=0)
            s_out, t_outs = objective.outputs(images)
            losses = torch.stack([d.init_stage_loss(s_out, t_outs[m], b) for m, d in pairs])
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            average_gradients(params)        # the same connectors on every rank under torchrun
            optimizer.step()
            sums += losses.detach().double() * images.shape[0]
            n += images.shape[0]
        values = (sums / max(n, 1)).tolist()
        if not all(map(lambda v: v == v and abs(v) != float("inf"), values)):
            raise NonFiniteLoss(f"init stage: non-finite connector loss at epoch {epoch} of --init_epochs "
                                f"{config.init_epochs}; stopping")
        log(f" * init epoch {epoch}/{config.init_epochs}: loss " + ", ".join(
            f"teacher {m}: {v:.4f}" for (m, _), v in zip(pairs, values)))
