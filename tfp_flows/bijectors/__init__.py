"""Normalizing-flow bijectors: pure math, `tfp.bijectors.Bijector` subclasses."""

from tfp_flows.bijectors.conditioning import conditional_kwargs, is_conditional, stable_name
from tfp_flows.bijectors.act_norm import ActNorm
from tfp_flows.bijectors.autoregressive import Autoregressive
from tfp_flows.bijectors.conditional_affine import ConditionalAffine
from tfp_flows.bijectors.continuous import ContinuousFlow, ContinuousFlowResult
from tfp_flows.bijectors.coupling import Coupling, checkerboard_mask
from tfp_flows.bijectors.coupling_scan import CouplingScan
from tfp_flows.bijectors.factor_out import FactorOut
from tfp_flows.bijectors.invertible_conv1x1 import InvertibleConv1x1
from tfp_flows.bijectors.network_bijector import NetworkBijector
from tfp_flows.bijectors.preprocessing import Logit
from tfp_flows.bijectors.spline import (CircularRationalQuadraticTransformer,
                                        RationalQuadraticTransformer)
from tfp_flows.bijectors.residual import ResidualBlock
from tfp_flows.bijectors.squeeze import Squeeze
from tfp_flows.bijectors.transformer_autoregressive import (TokenSolveResult,
                                                          TransformerAutoregressive)
from tfp_flows.bijectors.transformers import (AdditiveTransformer, AffineTransformer,
                                              Transformer)
from tfp_flows.numerics.fixed_point import fixed_point_solve

__all__ = [
    "ActNorm", "AdditiveTransformer", "AffineTransformer", "Autoregressive",
    "CircularRationalQuadraticTransformer", "ConditionalAffine", "ContinuousFlow",
    "ContinuousFlowResult", "Coupling", "CouplingScan", "NetworkBijector",
    "FactorOut", "InvertibleConv1x1", "Logit", "RationalQuadraticTransformer",
    "ResidualBlock", "Squeeze", "TokenSolveResult", "Transformer", "TransformerAutoregressive",
    "checkerboard_mask",
    "conditional_kwargs", "fixed_point_solve", "is_conditional", "stable_name",
]
