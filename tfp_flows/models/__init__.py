"""Presets that assemble a FlowModel."""

from tfp_flows.models.glow import Glow

__all__ = ["Glow"]
