"""Presets that assemble a FlowModel."""

from tfp_flows.models.ffjord_flow import FFJORDFlow
from tfp_flows.models.glow import Glow
from tfp_flows.models.neural_spline_flow import NeuralSplineFlow
from tfp_flows.models.residual_flow import ResidualFlow
from tfp_flows.models.tarflow import TarFlow, TarFlowModel

__all__ = ["FFJORDFlow", "Glow", "NeuralSplineFlow", "ResidualFlow", "TarFlow",
           "TarFlowModel"]
