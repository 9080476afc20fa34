"""Scheduler names users pick from (Replicate's names), shared by every model's inputs."""

from __future__ import annotations

from enum import Enum


class Scheduler(str, Enum):
    DDIM = "DDIM"
    K_EULER = "K_EULER"
    DPM_SOLVER_MULTISTEP = "DPMSolverMultistep"
    K_EULER_ANCESTRAL = "K_EULER_ANCESTRAL"
    PNDM = "PNDM"
    KLMS = "KLMS"
