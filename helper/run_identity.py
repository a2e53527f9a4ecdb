"""What a run is: the settings that change its result, its folder name and hash, and the comparison
a ``--resume`` makes against them.

Everything that changes a run's result is a *result setting*: every flag of the script's parser
except those in ``NOT_RESULT`` (flags about where, how fast or how verbosely a run goes), plus
what is not a flag (the teachers' architectures and checkpoint contents). The folder name shows
the result flags whose value differs from the parser's default, and a student's name ends with a
short hash of all its result settings, so two runs that differ in anything that changes the result
never share a folder.

The hash stays the same across versions of the toolkit: the settings that existed when it was
introduced (``HASHED_ALWAYS``) always enter it; a flag added later enters it only when it is not at
its default, so a new flag leaves every earlier run's name (and its ``--resume``) as it was.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, Iterable, List, Optional

from .runlog import to_jsonable

# The ONE list of flags that do not change a run's result: they may differ between a run and its
# --resume, they are not in the folder name or the configuration hash. ``epochs`` is here because
# a finished run may be extended with --resume --epochs N. Execution choices (device, amp,
# channels_last, fused teachers, compile, deterministic kernels) change floating-point details
# only; they follow the device, which may change on resume.
NOT_RESULT = frozenset({
    "help", "print_freq", "save_freq", "quiet", "resume", "overwrite", "take_over_lock", "save_dir", "device",
    "num_workers", "epochs", "data_folder", "download", "verify", "skip_validation", "tag", "amp", "channels_last",
    "fuse_teachers", "fold_bn", "compile", "deterministic", "command", "backend_mode", "trials", "trial_list",
    # teachers are identified by what their checkpoints hold (teacher_digests), not by name or path
    "teachers", "path_t", "model_t", "teacher_paths", "teacher_names", "teacher_acc", "ensemble_acc",
    # the students trained alongside (train_student.py's groups): a student in a group is
    # bit-identical to its solo run, so the group is no part of its configuration
    "group",
    # where the flags came from (--config files, tools/train.py's mdistiller file) and CA-MKD's /
    # RepDistiller's flags that change nothing here or only the device (helper/reference_flags.py)
    "config", "mdistiller_cfg", "gpu_id", "multiprocessing_distributed", "dist_url", "dali", "tb_freq", "c_embed",
    # the record of the flags as given (helper/config_files.py): the resolved settings say the run
    "given_flags",
})

# The result settings of train_teacher.py and train_student.py when the hash was introduced: they
# enter the hash whatever their value. Never add to this set (that would change every run's
# name); a setting that is not here enters the hash only when it is not at its default.
HASHED_ALWAYS = frozenset("""
C aekt_T aekt_alpha aekt_beta aekt_layer aekt_layer_lr aekt_warmup aekt_weight aekt_wmax alpha
base_temp batch_size beta beta_delay_epochs cc_form classify_weight convs cosine cuda_graphs
dataset decay_loops decay_max decay_min distill distill_decay dkd_T dkd_alpha dkd_beta
dkd_warmup drop_last drop_path ekd_T ekd_activation ekd_expectation ekd_prior ekd_reverse
ekd_w_ce ekd_w_dir ekd_w_kd ekd_warmup ensemble_method eval_batch_size evidential_T
evidential_calibrate evidential_gauge evidential_mode evidential_pool evidential_prior
evidential_tau factor feat_dim feat_pairing gamma hint_layer init_epochs kd_T kd_weight
learning_rate logit_stand loss lr_decay_epochs lr_decay_rate main_phase_loss min_lr mode model
model_s momentum nce_k nce_m nce_t nesterov optimizer policy_homo policy_lr_ratio policy_tau
policy_weight_decay preact rkd_angle_weight rkd_dist_weight seed spot_adaptive spot_mode
student_img_size svm_norm sync_bn synthetic_classes synthetic_size synthetic_test
synthetic_train t_end t_start teacher_num train_view trial val_split warmup_epochs weight_decay
teacher_archs teacher_digests
""".split())

# flags that CA-MKD's fixed part of a student's name already shows
NAME_PREFIX_FLAGS = ("model_s", "dataset", "distill", "gamma", "alpha", "beta", "trial", "teacher_num",
                     "ensemble_method")
MAX_NAME = 200
EXTRA_NAMES = {"teacher_digests": "the teachers' checkpoints", "teacher_archs": "the teachers' architectures"}


def folder_safe(text: str) -> str:
    """``text`` usable inside a folder name on any OS: ':' (and anything but letters, digits and
    - _ . = ~ , +) becomes '~', CA-MKD's Windows separator."""
    return "".join(ch if ch.isalnum() or ch in "-_.=~,+" else "~" for ch in str(text))


def show(value) -> str:
    """A setting as the folder name and messages write it (lists comma-separated)."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _plain(text: str) -> str:
    """'32.0' -> '32' in messages (numbers are compared as floats)."""
    return text[:-2] if text.endswith(".0") and text[:-2].lstrip("-").isdigit() else text


def parser_defaults(parser) -> Dict[str, Any]:
    return {a.dest: a.default for a in parser._actions if a.dest != "help"}


def option_name(parser, dest: str) -> str:
    """How a user types ``dest``: its first long option (``--kd_T``), else its short one."""
    for a in parser._actions:
        if a.dest == dest and a.option_strings:
            longs = [o for o in a.option_strings if o.startswith("--")]
            return (longs or a.option_strings)[0]
    return dest


def normalised(value):
    """Numbers as floats (``--kd_T 4`` typed or left at its default 4 is one setting)."""
    if isinstance(value, dict):
        return {k: normalised(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalised(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def result_settings(parser, config, extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Every setting that changes the result: the parser's flags minus ``NOT_RESULT`` (their
    resolved values, as args.json stores them), plus ``extra`` (e.g. the teachers' digests)."""
    out = {d: getattr(config, d) for d in parser_defaults(parser) if d not in NOT_RESULT and d in config}
    out.update(extra or {})
    return normalised(to_jsonable(out))


def config_hash(settings: Dict[str, Any], defaults: Optional[Dict[str, Any]] = None) -> str:
    """8 hex digits of SHA-256 over the result settings (stable across runs, machines and versions:
    a setting outside ``HASHED_ALWAYS`` counts only when it differs from its parser default)."""
    defaults = normalised(to_jsonable(defaults or {}))
    payload = {k: v for k, v in settings.items()
               if k in HASHED_ALWAYS or k not in defaults or json.dumps(v) != json.dumps(defaults[k])}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:8]


def changed_flags(parser, config, skip: Iterable[str] = (), defaults: Optional[Dict[str, Any]] = None) -> List[str]:
    """``name~value`` (``name`` alone for a switch turned on) for each result flag whose value
    differs from the parser's default (``defaults`` overrides a default resolved later, e.g. the
    model's learning rate), in the parser's order."""
    skip = set(skip) | NOT_RESULT
    base = dict(parser_defaults(parser), **(defaults or {}))
    parts = []
    for dest, default in base.items():
        if dest in skip or dest not in config:
            continue
        value = getattr(config, dest)
        if value == default or (isinstance(value, (list, tuple)) and show(value) == show(default)):
            continue
        parts.append(dest if value is True else f"{dest}~{show(value)}")
    return [folder_safe(p) for p in parts]


def bounded(name: str, settings: Dict[str, Any], defaults: Optional[Dict[str, Any]] = None) -> str:
    """Folder names stay under file-system limits: a long one is cut and the hash keeps it unique."""
    if len(name) <= MAX_NAME:
        return name
    return name[:MAX_NAME - 11] + "_h" + config_hash(settings, defaults)


def file_digest(path: str) -> str:
    """16 hex digits of SHA-256 of a file's bytes (a teacher is what its checkpoint holds)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


# -- the two scripts' folder names ---------------------------------------------------------------
def teacher_identity(parser, config):
    """``(folder name, result settings)`` of a teacher trial: RepDistiller's
    ``<model>_<dataset>_lr_<lr>_decay_<wd>_trial_<t>``, then every result flag not at its default
    (``seed~5``, ``loss~focal``, ``cosine`` ...), then ``--tag``."""
    settings = result_settings(parser, config)
    name = folder_safe(f"{config.model}_{config.dataset}_lr_{config.learning_rate}_decay_{config.weight_decay}"
                       f"_trial_{config.trial}")
    parts = [name] + changed_flags(parser, config, skip=("model", "dataset", "learning_rate", "weight_decay",
                                                          "trial"))
    parts += [config.tag] if config.tag else []
    return bounded("_".join(parts), settings, parser_defaults(parser)), settings


def student_identity(parser, config, teacher_archs, teacher_digests, default_lr: float):
    """``(folder name, result settings)`` of a student: CA-MKD's
    ``S~student_data_distill_r~.._a~.._b~.._trial`` and the teachers, then every result flag not at
    its default, ``--tag``, and ``h`` + the hash of all result settings (teachers' checkpoints
    included). Folder-safe: ':' becomes '~' (CA-MKD's Windows separator)."""
    settings = result_settings(parser, config, {"teacher_archs": list(teacher_archs),
                                                "teacher_digests": list(teacher_digests)})
    defaults = parser_defaults(parser)
    name = (f"S~{config.model_s}_{config.dataset}_{config.distill}_r~{config.gamma}_a~{config.alpha}"
            f"_b~{config.beta}_{config.trial}")
    arch_str = "_".join(sorted(set(teacher_archs)))
    name += f"_{config.teacher_num}_{arch_str}_{config.ensemble_method}" if config.teacher_num > 1 else f"_{arch_str}"
    parts = [folder_safe(name)]
    parts += changed_flags(parser, config, skip=NAME_PREFIX_FLAGS, defaults={"learning_rate": default_lr})
    parts += [config.tag] if config.tag else []
    parts.append("h" + config_hash(settings, defaults))
    return bounded("_".join(parts), settings, defaults), settings


# -- resume: the settings against the saved ones -------------------------------------------------
def differences(parser, now: Dict[str, Any], saved: Dict[str, Any]) -> List[str]:
    """``--flag saved -> now`` for every result setting that differs (a flag newer than the saved
    run counts only if it is not at its default)."""
    defaults = parser_defaults(parser)
    out = []
    for key, value in now.items():
        if key not in saved:
            if key in defaults and json.dumps(value) == json.dumps(normalised(to_jsonable(defaults[key]))):
                continue
            old = "(not set)"
        elif json.dumps(normalised(saved[key]), sort_keys=True) == json.dumps(value, sort_keys=True):
            continue
        else:
            old = show(saved[key])
        name = EXTRA_NAMES.get(key) or option_name(parser, key)
        out.append(f"{name} {_plain(old)} -> {_plain(show(value))}")
    return out
