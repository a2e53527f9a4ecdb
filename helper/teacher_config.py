"""``train_teacher.py``'s flags resolved, once, into the frozen configuration of each trial."""
from __future__ import annotations

from typing import List, Optional, Tuple

from models import get_model_cfg, imagenet_model_dict, model_dict

from . import distributed
from .config import RunConfig
from .config_files import given_flags
from .distributed import DistContext
from .execution import backend_description
from .options import fail, model_options, resolve_common, trial_problem


MAX_TRIAL_COUNT = 10_000


def parse_trials(parser, trials: Optional[str], trial: str) -> List[str]:
    """``--trials`` as labels: a count N (0..N-1) or a list ``0,1,2``; else ``[--trial]``. Each label
    is a trial label (``options.trial_problem``: its own seed)."""
    if trials is None:
        return [str(trial)]
    text = trials.strip()
    if text.isascii() and text.isdigit() and "," not in text:
        count = int(text)
        if not 1 <= count <= MAX_TRIAL_COUNT:
            fail(parser, f"--trials count must be from 1 to {MAX_TRIAL_COUNT}, got {text}")
        return [str(i) for i in range(count)]
    labels = [t.strip() for t in text.split(",") if t.strip()]
    if not labels or len(set(labels)) != len(labels):
        fail(parser, f"--trials expects a count or distinct comma-separated labels like 0,1,2, got {text!r}")
    for t in labels:
        problem = trial_problem(t)
        if problem:
            fail(parser, f"--trials label {t!r}: {problem}")
    return labels


def resolve(parser, ns, ctx: Optional[DistContext] = None, device: Optional[str] = None) -> Tuple[RunConfig, ...]:
    """One frozen configuration per trial (``--trials``), from the parsed flags ``ns``; ``device``
    the device asked for when it is not ``--device``'s (``--gpu_id``). Each trial's ``given_flags``
    records its flags as given, with its own ``--trial`` and without ``--trials`` (so that ``--config
    args.json`` repeats that trial)."""
    ctx = distributed.context_from_env() if ctx is None else ctx
    imagenet = ns.dataset == "imagenet"
    table = imagenet_model_dict if imagenet else model_dict
    if ns.model not in table:
        fail(parser, f"--model {ns.model!r} is not a {'ImageNet' if imagenet else 'CIFAR-sized'} model; "
                     f"expected one of: {', '.join(sorted(table))}")
    common = resolve_common(parser, ns, default_lr=get_model_cfg(ns.model, imagenet).default_lr, device=device)
    try:
        model_options(ns.drop_path, ns.model, imagenet)
        per_rank = distributed.rank_settings(ctx, common["device"], ns.batch_size)
    except ValueError as exc:
        fail(parser, str(exc))
    trials = parse_trials(parser, ns.trials, ns.trial)
    base = RunConfig.from_namespace(ns, **common, **per_rank, trial_list=trials)
    base = base.replace(backend_mode=backend_description(base.deterministic, base.device))
    return tuple(base.replace(trial=t, given_flags=given_flags(parser, ns, trial=t, trials=None)) for t in trials)
