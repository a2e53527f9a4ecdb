"""Spot-adaptive routing (Song et al., "Spot-adaptive Knowledge Distillation", IEEE TIP 2022),
for one teacher or several: per sample and per spot, distil from which teacher or not at all.

``spots`` says where every loss reads, ``router`` holds the policy, the adapters and the graft
pass and turns decisions into the masks that multiply the ensemble strategy's weights,
``gumbel`` samples the decisions. ``helper/spot_adaptive.py`` puts them in the student step;
``docs/spot_adaptive.md`` has the formulation.
"""
from .adapters import adapter  # noqa: F401
from .gumbel import gumbel_softmax  # noqa: F401
from .router import MODES, Decision, Routing, SpotPolicy, SpotRouter  # noqa: F401
from .spots import OUTPUT, Spot, SpotPlan, distiller_rows, plan_spots, probe_reads  # noqa: F401
