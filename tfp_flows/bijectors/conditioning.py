"""Routing a conditional input through TFP's per-bijector keyword arguments.

The public home of `is_conditional` and `conditional_kwargs`; they reach TFP's private
`_Invert` type, so they are implemented in `tfp_flows.bijectors._tfp_glue`.
"""

from tfp_flows.bijectors._tfp_glue import conditional_kwargs, is_conditional

__all__ = ["is_conditional", "conditional_kwargs"]
