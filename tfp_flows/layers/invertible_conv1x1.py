"""Keras layer owning the weights of an invertible 1x1 convolution."""

import keras
import numpy as np
import scipy.linalg

from tfp_flows.bijectors import invertible_conv1x1
from tfp_flows.layers import flow_layer

__all__ = ["InvertibleConv1x1"]


@keras.saving.register_keras_serializable(package="tfp_flows")
class InvertibleConv1x1(flow_layer.FlowLayer):
  """Learned channel mixing, initialised to a random rotation (Glow Sec. 3.2).

  With `lu=True` (default) the weights are Glow's LU factors of that rotation: a fixed
  permutation and sign, trainable strict-lower L, strict-upper U and log|diag U|, so the
  matrix stays invertible and log|det| costs O(C). With `lu=False` the weight is the plain
  C x C matrix (log|det| by QR, O(C^3), XLA-compilable).

  Args:
    lu: LU parameterisation (True) or plain matrix (False).
    seed: int seed of the random rotation (drawn with numpy so it is reproducible and
      saved with the layer's config).
  """

  def __init__(self, lu=True, seed=0, **kwargs):
    super().__init__(**kwargs)
    self.lu = bool(lu)
    self.seed = int(seed)

  def build(self, input_shape):
    channels = int(input_shape[-1])
    rng = np.random.default_rng(self.seed)
    rotation = np.linalg.qr(rng.normal(size=(channels, channels)))[0].astype("float32")
    if not self.lu:
      self.weight = self.add_weight(shape=(channels, channels), name="weight",
                                    initializer=keras.initializers.Constant(rotation))
    else:
      permutation_matrix, lower, upper = scipy.linalg.lu(rotation.astype("float64"))
      # The bijector's permutation convention: P[i, :] = e_{perm[i]}.
      perm = np.argmax(permutation_matrix, axis=1).astype("int32")
      diag = np.diag(upper)
      constant = lambda v: keras.initializers.Constant(v.astype("float32"))
      self.permutation = self.add_weight(shape=(channels,), dtype="int32",
                                         trainable=False, name="permutation",
                                         initializer=keras.initializers.Constant(perm))
      self.sign = self.add_weight(shape=(channels,), trainable=False, name="sign",
                                  initializer=constant(np.sign(diag)))
      self.lower = self.add_weight(shape=(channels, channels), name="lower",
                                   initializer=constant(np.tril(lower, -1)))
      self.upper = self.add_weight(shape=(channels, channels), name="upper",
                                   initializer=constant(np.triu(upper, 1)))
      self.log_abs_diag = self.add_weight(shape=(channels,), name="log_abs_diag",
                                          initializer=constant(np.log(np.abs(diag))))
    super().build(input_shape)

  def make_bijector(self):
    if not self.lu:
      return invertible_conv1x1.InvertibleConv1x1(weight=self.weight, name=self.bijector_name())
    # Only the strict triangles of lower/upper are read by the bijector, so gradients
    # reach exactly the free parameters.
    return invertible_conv1x1.InvertibleConv1x1(
        permutation=self.permutation, lower=self.lower, upper=self.upper,
        log_abs_diag=self.log_abs_diag, sign=self.sign, name=self.bijector_name())

  def get_config(self):
    return {**super().get_config(), "lu": self.lu, "seed": self.seed}

