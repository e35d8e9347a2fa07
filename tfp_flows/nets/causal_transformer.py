"""A causal Transformer over tokens, the conditioner of TarFlow blocks, with a key/value cache."""

import math

import keras
from keras import ops
import tensorflow as tf

from tfp_flows.numerics import checks
from tfp_flows.numerics import integer_check

__all__ = ["CausalTransformer", "checked_architecture"]


def checked_architecture(channels, num_layers, heads, expansion, num_classes):
  """`(channels, num_layers, heads, expansion, num_classes)` as checked ints.

  Layers that build a `CausalTransformer` later (at `build`, once the token count is
  known) check their arguments with this at construction.

  Raises:
    ValueError: for non-positive sizes, `heads` not dividing `channels`, or fewer than
      two classes.
  """
  channels = checks.int_at_least("channels", channels)
  heads = checks.int_at_least("heads", heads)
  if channels % heads:
    raise ValueError(f"heads={heads} must divide channels={channels}.")
  return (channels, checks.int_at_least("num_layers", num_layers), heads,
          checks.int_at_least("expansion", expansion),
          None if num_classes is None else checks.int_at_least("num_classes", num_classes, 2))


@keras.saving.register_keras_serializable(package="tfp_flows")
class CausalTransformer(keras.layers.Layer):
  """Pre-norm causal Transformer: tokens `[N, T, d]` -> parameters `[N, T, d, P]`, row i from tokens < i.

  TarFlow's conditioner (Zhai et al. 2024, https://arxiv.org/abs/2412.06329). The input
  sequence is the learned start token followed by the embedded tokens `0..T-2`, so the
  output at position `i` has seen tokens `< i` only (teacher forcing with a shift):

  ```none
  e_0 = s + p_0 + c(label),   e_i = W_in x_{i-1} + b_in + p_i + c(label)    (i >= 1)
  per layer:  e <- e + Attn(LN(e)) (causal mask: position i attends to j <= i)
              e <- e + W_2 GELU(W_1 LN(e))                     (MLP, width expansion*C)
  params_i = W_out LN(e_i) + b_out,    reshaped to [d, P]
  ```

  `s` (start token), `p` (positions) and the class table `c` (`num_classes + 1` rows, the
  last the "no label" row that label -1 selects, for classifier-free guidance) are
  learned. Labels must be integers (or whole floats) in `[-1, num_classes)`; any other
  is an `InvalidArgumentError` eagerly and in graphs, and makes its row NaN under XLA.
  `W_out` and `b_out` start at zero, so the output is 0 and the flow built on it
  starts as the identity. Every sublayer gets this layer's dtype policy (float64 works;
  under a mixed policy the weights are float32 and `call` and `step` both compute in the
  16-bit type).

  Incremental decoding (`initial_cache`, `step`) runs the same weights one position at a
  time, keeping each layer's keys and values of the positions already read in a cache
  `[T, N, heads, head_dim]`: a step attends over the cache in O(T) instead of re-running
  the prefix, and equals the parallel pass to float round-off.

  Args:
    num_tokens: T.
    token_size: d, the numbers per token.
    params_per_dim: P, the outputs per token number (2 for an affine transformer).
    channels: model width C.
    num_layers: attention + MLP layers.
    heads: attention heads; must divide `channels`.
    expansion: MLP width factor.
    num_classes: number of labels for a class-conditional net, or None.
  """

  def __init__(self, num_tokens, token_size, params_per_dim=2, channels=128, num_layers=2,
               heads=4, expansion=4, num_classes=None, **kwargs):
    super().__init__(**kwargs)
    self.num_tokens = checks.int_at_least("num_tokens", num_tokens)
    self.token_size = checks.int_at_least("token_size", token_size)
    self.params_per_dim = checks.int_at_least("params_per_dim", params_per_dim)
    (self.channels, self.num_layers, self.heads, self.expansion,
     self.num_classes) = checked_architecture(channels, num_layers, heads, expansion,
                                              num_classes)
    self.head_dim = self.channels // self.heads
    policy = self.dtype_policy

    def dense(units, name, zero=False):
      init = "zeros" if zero else "glorot_uniform"
      return keras.layers.Dense(units, kernel_initializer=init, bias_initializer="zeros",
                                dtype=policy, name=name)

    def norm(name):
      return keras.layers.LayerNormalization(epsilon=1e-6, dtype=policy, name=name)

    self.proj_in = dense(self.channels, "proj_in")
    layers = range(self.num_layers)
    self.attn_norms = [norm(f"attn_norm_{l}") for l in layers]
    self.qkvs = [dense(3 * self.channels, f"qkv_{l}") for l in layers]
    self.attn_outs = [dense(self.channels, f"attn_out_{l}") for l in layers]
    self.mlp_norms = [norm(f"mlp_norm_{l}") for l in layers]
    self.mlp_ins = [dense(self.expansion * self.channels, f"mlp_in_{l}") for l in layers]
    self.mlp_outs = [dense(self.channels, f"mlp_out_{l}") for l in layers]
    self.out_norm = norm("out_norm")
    self.proj_out = dense(self.token_size * self.params_per_dim, "proj_out", zero=True)

  def build(self, tokens_shape=None, labels_shape=None):
    """Creates every weight (the sublayers' included) for tokens `[N, T, d]`."""
    del labels_shape
    init = keras.initializers.RandomNormal(stddev=0.01)
    self.start_token = self.add_weight(shape=(self.channels,), initializer=init,
                                       name="start_token")
    self.positions = self.add_weight(shape=(self.num_tokens, self.channels),
                                     initializer=init, name="positions")
    if self.num_classes is not None:
      self.class_table = self.add_weight(shape=(self.num_classes + 1, self.channels),
                                         initializer=init, name="class_table")
    self.proj_in.build((None, self.token_size))
    for l in range(self.num_layers):
      for layer in (self.attn_norms[l], self.qkvs[l], self.attn_outs[l], self.mlp_norms[l],
                    self.mlp_ins[l]):
        layer.build((None, self.channels))
      self.mlp_outs[l].build((None, self.expansion * self.channels))
    self.out_norm.build((None, self.channels))
    self.proj_out.build((None, self.channels))
    super().build(tokens_shape)

  def _class_embedding(self, labels):
    """`[N, C]` rows of the class table; label -1 (or no labels) takes the no-label row."""
    if self.num_classes is None:
      if labels is not None:
        raise ValueError("This CausalTransformer has num_classes=None: it takes no labels.")
      return 0.0
    if labels is None:
      return self.class_table[self.num_classes]
    labels = tf.reshape(labels, [-1])
    ok = integer_check.integers_in_range(
        labels, self.num_classes, lower=-1, message=(
            f"{self.name}: class labels must be integers in [0, {self.num_classes}), or -1 "
            "for no label; pass labels in that range."))
    labels = tf.cast(tf.where(ok, labels, -tf.ones_like(labels)), tf.int32)
    rows = tf.where(labels < 0, self.num_classes, labels)
    return integer_check.nan_where_not(ok, ops.take(self.class_table, rows, axis=0))

  def _mlp(self, l, e):
    hidden = ops.gelu(self.mlp_ins[l](self.mlp_norms[l](e)), approximate=False)
    return self.mlp_outs[l](hidden)

  def _qkv(self, l, e):
    """Queries, keys, values of layer `l`: `[..., C]` -> three `[..., heads, head_dim]`."""
    qkv = self.qkvs[l](self.attn_norms[l](e))
    qkv = ops.reshape(qkv, [*ops.shape(qkv)[:-1], 3, self.heads, self.head_dim])
    return qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]

  def call(self, tokens, labels=None):
    """Parameters `[N, L, d, P]` of the first L <= T tokens in one pass (row i from tokens < i).

    A prefix (L < T) gives the same rows as the full sequence: later tokens cannot reach
    earlier rows (Gauss-Seidel-Jacobi sampling evaluates prefixes only).
    """
    tokens = ops.cast(tokens, self.compute_dtype)
    batch_size, length = ops.shape(tokens)[0], tokens.shape[1]
    start = ops.broadcast_to(self.start_token, [batch_size, 1, self.channels])
    e = ops.concatenate([start, self.proj_in(tokens[:, :-1])], axis=1)
    class_embedding = self._class_embedding(labels)
    if self.num_classes is not None:
      class_embedding = ops.reshape(class_embedding, [-1, 1, self.channels])
    e = e + self.positions[:length] + class_embedding
    causal = ops.tril(ops.ones([length, length], "bool"))
    scale = 1.0 / math.sqrt(self.head_dim)
    for l in range(self.num_layers):
      q, k, v = self._qkv(l, e)  # [N, L, heads, head_dim]
      scores = ops.einsum("nihd,njhd->nhij", q, k) * scale
      scores = ops.where(causal, scores, float("-inf"))
      attended = ops.einsum("nhij,njhd->nihd", ops.softmax(scores, axis=-1), v)
      e = e + self.attn_outs[l](ops.reshape(attended, [batch_size, length, self.channels]))
      e = e + self._mlp(l, e)
    params = self.proj_out(self.out_norm(e))
    return ops.reshape(params, [batch_size, length, self.token_size, self.params_per_dim])

  def initial_cache(self, batch_size, labels=None):
    """Empty key/value caches: per layer a pair of zeros `[T, N, heads, head_dim]`."""
    del labels
    shape = [self.num_tokens, batch_size, self.heads, self.head_dim]
    return tuple((ops.zeros(shape, self.compute_dtype), ops.zeros(shape, self.compute_dtype))
                 for _ in range(self.num_layers))

  def step(self, cache, index, previous_token, labels=None):
    """Parameters `[N, d, P]` of token `index` after reading token `index - 1`.

    Args:
      cache: from `initial_cache` or the previous step.
      index: scalar int tensor, the position decoded now.
      previous_token: `[N, d]`, token `index - 1` (ignored at index 0: the start token).
      labels: int labels `[N]` for a class-conditional net.

    Returns:
      `(params, cache)` with the keys and values of position `index` written.
    """
    dtype = self.compute_dtype
    previous_token = ops.cast(previous_token, dtype)
    batch_size = ops.shape(previous_token)[0]
    # Outside `__call__` Keras does not cast this layer's own weights to the compute
    # dtype; under a mixed policy (float32 weights, 16-bit activations) cast them here.
    start = ops.broadcast_to(ops.cast(self.start_token, dtype), [batch_size, self.channels])
    e = ops.where(index == 0, start, self.proj_in(previous_token))
    e = (e + ops.cast(ops.take(self.positions, index, axis=0), dtype)
         + ops.cast(self._class_embedding(labels), dtype))
    index = ops.cast(index, "int32")
    # int32 throughout: under floatx float64 Keras' arange defaults to int64.
    filled = ops.reshape(ops.arange(self.num_tokens, dtype="int32") <= index, [1, 1, -1])
    position = ops.reshape(index, [1, 1])
    scale = 1.0 / math.sqrt(self.head_dim)
    new_cache = []
    for l, (keys, values) in enumerate(cache):
      q, k, v = self._qkv(l, e)  # [N, heads, head_dim]
      # A scatter (not slice_update, whose XLA op has no gradient): samples stay
      # differentiable in z.
      keys = ops.scatter_update(keys, position, k[None])
      values = ops.scatter_update(values, position, v[None])
      scores = ops.einsum("nhd,tnhd->nht", q, keys) * scale
      scores = ops.where(filled, scores, float("-inf"))
      attended = ops.einsum("nht,tnhd->nhd", ops.softmax(scores, axis=-1), values)
      e = e + self.attn_outs[l](ops.reshape(attended, [batch_size, self.channels]))
      e = e + self._mlp(l, e)
      new_cache.append((keys, values))
    params = self.proj_out(self.out_norm(e))
    return (ops.reshape(params, [batch_size, self.token_size, self.params_per_dim]),
            tuple(new_cache))

  def get_config(self):
    return {**super().get_config(), "num_tokens": self.num_tokens,
            "token_size": self.token_size, "params_per_dim": self.params_per_dim,
            "channels": self.channels, "num_layers": self.num_layers, "heads": self.heads,
            "expansion": self.expansion, "num_classes": self.num_classes}
