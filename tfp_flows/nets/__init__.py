"""Keras networks used as conditioners and vector fields."""

from tfp_flows.nets.causal_transformer import CausalTransformer
from tfp_flows.nets.glow_conv_net import GlowConvNet
from tfp_flows.nets.lip_swish import LipSwish
from tfp_flows.nets.lip_swish import lip_swish
from tfp_flows.nets.made import MADE
from tfp_flows.nets.mlp import MLP
from tfp_flows.nets.spectral_norm import spectral_norm_exact
from tfp_flows.nets.spectral_norm_conv import SpectralNormConv2D
from tfp_flows.nets.spectral_norm_dense import SpectralNormDense
from tfp_flows.nets.time_conditioned import TimeConditionedConvNet
from tfp_flows.nets.time_conditioned import TimeConditionedMLP
from tfp_flows.nets.time_layers import ConcatSquashConv2D
from tfp_flows.nets.time_layers import ConcatSquashDense
from tfp_flows.nets.time_layers import TimeConcatConv2D
from tfp_flows.nets.time_layers import TimeConcatDense

__all__ = ["CausalTransformer", "ConcatSquashConv2D", "ConcatSquashDense", "GlowConvNet",
           "LipSwish", "MADE", "MLP", "SpectralNormConv2D", "SpectralNormDense",
           "TimeConcatConv2D", "TimeConcatDense", "TimeConditionedConvNet",
           "TimeConditionedMLP", "lip_swish", "spectral_norm_exact"]
