"""Distillation losses, ensemble strategies and their registries.

Every module of this package registers what it defines when imported; importing the package
imports them all, so adding a method is adding one file.

Public functions for people who bring their own loop::

    from distiller_zoo import ensemble_weights, kd_loss, standardize, dkd_loss, default_options
"""
import importlib as _importlib
import pkgutil as _pkgutil

from .registry import CLASSIFICATION_LOSSES, DISTILLERS, ENSEMBLES  # noqa: F401
from .base import (Batch, BuildContext, Distiller, EnsembleInputs, EnsembleStrategy,  # noqa: F401
                   NetOutput, TeacherLoss, combine)
from .KD import kd_loss, standardize  # noqa: F401
from .DKD import dkd_loss  # noqa: F401
from .defaults import default_options  # noqa: F401
from .ensemble_api import ensemble_weights, get_strategy  # noqa: F401

for _module in _pkgutil.walk_packages(__path__, prefix=__name__ + "."):
    _importlib.import_module(_module.name)
