"""tfp_flows: normalizing-flow bijectors for TensorFlow Probability, as Keras 3 layers."""

__version__ = "0.1.0"

from tfp_flows import bijectors
from tfp_flows import callbacks
from tfp_flows import data
from tfp_flows import distributions
from tfp_flows import estimators
from tfp_flows import export
from tfp_flows import inference
from tfp_flows import layers
from tfp_flows import models
from tfp_flows import nets
from tfp_flows import objectives
from tfp_flows.flow import FlowModel

__all__ = ["FlowModel", "bijectors", "callbacks", "data", "distributions", "estimators", "export", "inference", "layers", "models",
           "nets", "objectives", "__version__"]
