"""The diffusers scheduler class behind each scheduler name users pick (``shared.inputs.schema.Scheduler``)."""

from __future__ import annotations

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from shared.inputs.schema import Scheduler

SCHEDULERS: dict[Scheduler, type[SchedulerMixin]] = {
    Scheduler.DDIM: DDIMScheduler,
    Scheduler.K_EULER: EulerDiscreteScheduler,
    Scheduler.DPM_SOLVER_MULTISTEP: DPMSolverMultistepScheduler,
    Scheduler.K_EULER_ANCESTRAL: EulerAncestralDiscreteScheduler,
    Scheduler.PNDM: PNDMScheduler,
    Scheduler.KLMS: LMSDiscreteScheduler,
}
