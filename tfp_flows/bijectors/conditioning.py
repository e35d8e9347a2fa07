"""Routing a conditional input through TFP's per-bijector keyword arguments.

The public home of `is_conditional`, `conditional_kwargs` and `stable_name` (TFP routes
keyword arguments through `tfb.Chain` by bijector name, so a routed bijector needs a
name TFP keeps as given). They reach TFP's private `_Invert` type and naming rule, so
they are implemented in `tfp_flows.bijectors._tfp_glue`.
"""

from tfp_flows.bijectors._tfp_glue import conditional_kwargs, is_conditional, stable_name

__all__ = ["is_conditional", "conditional_kwargs", "stable_name"]
