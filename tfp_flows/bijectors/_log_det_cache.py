"""Sharing a log-det computed together with a transform through TFP's bijector cache.

TFP computes `inverse(y)` and `inverse_log_det_jacobian(y)` in separate calls (so do
`tfd.TransformedDistribution.log_prob` and `tfb.Chain`). For bijectors whose value and
log-det come out of one expensive pass (a coupling's conditioner network), the pass
stores its log-det on the cache edge of the same input, where TFP's
`_call_*_log_det_jacobian` looks before calling `_*_log_det_jacobian` again. TFP keeps
the unreduced inverse log-det of one minimal event under the key 'ildj' for both
directions.
"""

__all__ = ["remember_inverse_log_det", "remember_forward_log_det"]


# pylint: disable=protected-access


def remember_inverse_log_det(bijector, y, ildj, kwargs):
  """Records `ildj` (one minimal event) for `bijector.inverse(y, **kwargs)`."""
  bijector._cache.inverse_attributes(y, **kwargs)["ildj"] = ildj


def remember_forward_log_det(bijector, x, fldj, kwargs):
  """Records `fldj` (one minimal event) for `bijector.forward(x, **kwargs)`."""
  bijector._cache.forward_attributes(x, **kwargs)["ildj"] = -fldj
