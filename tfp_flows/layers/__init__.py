"""Keras 3 layers that own weights and build flow bijectors from them (`.bijector`)."""

from tfp_flows.layers.act_norm import ActNorm
from tfp_flows.layers.autoregressive import (AffineAutoregressive, Autoregressive,
                                            AutoregressiveLayer, SplineAutoregressive)
from tfp_flows.layers.coupling import AdditiveCoupling, AffineCoupling, Coupling, CouplingLayer
from tfp_flows.layers.coupling_scan import CouplingScan
from tfp_flows.layers.dequantize import Dequantize
from tfp_flows.layers.factor_out import FactorOut
from tfp_flows.layers.ffjord import FFJORD
from tfp_flows.layers.flow_layer import FlowChain, FlowLayer
from tfp_flows.layers.gaussian_prior import GaussianPrior
from tfp_flows.layers.glow_step import GlowStep
from tfp_flows.layers.invertible_conv1x1 import InvertibleConv1x1
from tfp_flows.layers.permute import Permute
from tfp_flows.layers.residual_block import ResidualBlock
from tfp_flows.layers.spline_coupling import SplineCoupling
from tfp_flows.layers.squeeze import Squeeze
from tfp_flows.layers.tarflow import NoiseAugmentation, TarFlowBlock

__all__ = [
    "ActNorm", "AdditiveCoupling", "AffineAutoregressive", "AffineCoupling", "Autoregressive",
    "AutoregressiveLayer", "Coupling", "CouplingLayer", "CouplingScan", "Dequantize", "FFJORD",
    "FactorOut", "FlowChain", "FlowLayer", "GaussianPrior", "GlowStep", "InvertibleConv1x1",
    "Permute", "ResidualBlock", "SplineAutoregressive", "SplineCoupling", "Squeeze",
    "NoiseAugmentation", "TarFlowBlock",
]
