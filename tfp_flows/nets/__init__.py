"""Keras networks used as conditioners and vector fields."""

from tfp_flows.nets.glow_conv_net import GlowConvNet
from tfp_flows.nets.mlp import MLP

__all__ = ["GlowConvNet", "MLP"]
