"""Closed-loop user simulator: exploration policies played against the synthetic world."""

from explore.sim.choice import ChoiceModel
from explore.sim.experiment import run_experiment
from explore.sim.experiment import summarise
from explore.sim.policies import Policy
from explore.sim.policies import plan_table
from explore.sim.simulator import SimConfig
from explore.sim.simulator import simulate
from explore.sim.statistics import paired_difference
from explore.sim.statistics import paired_ratio_difference

__all__ = [
    "ChoiceModel", "Policy", "SimConfig", "paired_difference", "paired_ratio_difference",
    "plan_table", "run_experiment", "simulate", "summarise",
]
