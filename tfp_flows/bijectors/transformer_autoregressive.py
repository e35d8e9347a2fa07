"""TarFlow's bijector: an affine autoregressive flow over image patches, Transformer-conditioned."""

import collections

import tensorflow as tf

from tfp_flows.bijectors import _tfp_glue
from tfp_flows.bijectors import network_bijector
from tfp_flows.bijectors import transformers as transformers_lib
from tfp_flows.numerics import checks

__all__ = ["TransformerAutoregressive", "TokenSolveResult", "SAMPLING_METHODS"]


SAMPLING_METHODS = ("kv_cache", "jacobi", "naive")

TokenSolveResult = collections.namedtuple(
    "TokenSolveResult", ["value", "log_det", "converged", "num_iterations"])
TokenSolveResult.__doc__ = """One sampling solve (`forward`) of a `TransformerAutoregressive`.

Fields:
  value: the data-side image, NaN in the rows that did not converge.
  log_det: `log|det d value / d z|` per event.
  converged: bool per event: the row met the stopping rule (always True for "kv_cache"
    and "naive", which are exact after one pass per token).
  num_iterations: the conditioner evaluations spent: T decoding steps for "kv_cache"; T
    full passes plus one for the log-det for "naive"; for "jacobi" the sweeps summed over
    token blocks plus one pass for the log-det.
"""


class TransformerAutoregressive(_tfp_glue.OnePassLogDet, network_bijector.NetworkBijector):
  """Affine autoregressive flow over the patches of an image (one TarFlow block).

  The image `[H, W, C]` is cut into `T = (H / P) (W / P)` patches of `P x P x C`, read
  in raster order (reversed with `reverse=True`, so stacked blocks alternate direction),
  each flattened to a token of `d = P P C` numbers. A causal conditioner gives for token
  `i` the parameters `(a_i, mu_i)` from the data tokens before it (token 0 from a
  learned start token alone), and the elementwise `transformer` (default: TarFlow's
  affine map, `AffineTransformer("exp")` with log-scale `a` softly clamped) moves it:

  ```none
  inverse (data x -> base z, log_prob):  z_i = (x_i - mu_i) exp(-a_i),  (a, mu)_i = h(x_{<i})
  forward (base z -> data x, sampling):  x_i = z_i exp(a_i) + mu_i,     one token at a time
  log|det dx/dz| = sum_i sum_k a_ik      (triangular Jacobian in token order)
  ```

  Density evaluation is the cheap direction: `inverse` is one parallel pass of the
  conditioner over all tokens (teacher forcing). Sampling (`forward`) is sequential in
  tokens, with one of three solvers (`sampling=`):

  * "kv_cache" (default): a `tf.while_loop` over tokens that feeds one token per step to
    `decoder.step`, which keeps the attention keys and values of earlier tokens, so a
    step costs O(T) and a sample O(T^2) in attention (O(T) in everything else);
  * "jacobi": fixed-point iterations `x <- T(z; h(x))` from `x = z`, all tokens of a
    block in parallel, blocks of `block_size` tokens solved one after another
    (Gauss-Seidel over blocks, Jacobi inside; one block of all tokens is plain Jacobi).
    A block stops when no token of a row moves by more than
    `tolerance * max(1, max|z_row|)` in a sweep. After `B` sweeps a block of `B` tokens
    is exact (sweep k fixes token k given its exact prefix), so `max_iterations=None`
    (= B) always converges; a smaller cap may not, and a row that did not meet the rule
    is NaN (and an `InvalidArgumentError` with `validate_args`), never a silent answer.
    `forward_solve` reports the sweeps used;
  * "naive": T full conditioner passes, each fixing the next token (the cost the KV cache
    removes: O(T^3) attention); a reference for tests and benchmarks.

  #### Conditioner contract

  `conditioner(tokens[, conditional_input]) -> params`: tokens `[N, L, d]` in this block's
  order (L = T, or a prefix L < T in Jacobi sampling), params
  `[N, L, d, transformer.num_params]`, row i a function of tokens `< i` (and of the
  conditional input). `decoder` (needed for "kv_cache") has
  `initial_cache(batch_size[, conditional_input])` returning a nest of tensors of fixed
  shapes, and `step(cache, index, previous_token[, conditional_input]) -> (params_i,
  cache)` giving `[N, d, num_params]` for token `index` after reading token `index - 1`
  (`previous_token [N, d]`, ignored at index 0). `tfp_flows.nets.CausalTransformer`
  provides both. The conditional input (class labels, one per event) is broadcast to the
  events' batch shape (a label shape that does not broadcast to it is an error) and
  flattened with it.

  All-zero conditioner output gives the identity.

  #### References

  [1]: Zhai et al. Normalizing Flows are Capable Generative Models (TarFlow).
       https://arxiv.org/abs/2412.06329
  [2]: Liu, Qin. Accelerate TarFlow Sampling with GS-Jacobi Iteration.
       https://arxiv.org/abs/2505.12849
  [3]: Papamakarios, Pavlakou, Murray. Masked Autoregressive Flow for Density
       Estimation. https://arxiv.org/abs/1705.07057
  """

  def __init__(self, conditioner, image_shape, patch_size, transformer=None, decoder=None,
               reverse=False, conditional=False, sampling="kv_cache", block_size=None,
               tolerance=1e-5, max_iterations=None, validate_args=False,
               dtype=tf.float32, name="transformer_autoregressive"):
    """Creates the bijector.

    Args:
      conditioner: callable `(tokens[, conditional_input]) -> params` (see above).
      image_shape: `[H, W, C]` of one event.
      patch_size: `P`, dividing H and W.
      transformer: a `tfp_flows.bijectors.transformers.Transformer`; default
        `AffineTransformer("exp", clamp=4.0)`.
      decoder: the incremental decoder of "kv_cache" sampling (see above), or None.
      reverse: read the tokens in reverse raster order.
      conditional: whether the conditioner takes `conditional_input`.
      sampling: "kv_cache", "jacobi" or "naive" (see above).
      block_size: tokens per Gauss-Seidel block of "jacobi"; None for one block (Jacobi).
      tolerance: "jacobi" stopping rule, relative to `max(1, max|z_row|)`.
      max_iterations: cap on the Jacobi sweeps per block; None for the block size.
      validate_args: check inputs and conditioner outputs are finite, and raise when a
        Jacobi solve did not converge.
      dtype: float dtype.
      name: bijector name.

    Raises:
      ValueError: for bad arguments, or "kv_cache" sampling without a decoder.
    """
    parameters = dict(locals())
    transformer = transformer or transformers_lib.AffineTransformer("exp", clamp=4.0)
    image_shape = [int(d) for d in image_shape]
    if len(image_shape) != 3 or min(image_shape) < 1:
      raise ValueError(f"image_shape must be [H, W, C] of positive sizes; got "
                       f"{image_shape!r}.")
    patch_size = checks.int_at_least("patch_size", patch_size)
    if image_shape[0] % patch_size or image_shape[1] % patch_size:
      raise ValueError(f"patch_size={patch_size} must divide the image height and width; "
                       f"got image_shape={image_shape}.")
    checks.one_of("sampling", sampling, SAMPLING_METHODS)
    if sampling == "kv_cache" and decoder is None:
      raise ValueError("sampling='kv_cache' needs a decoder (initial_cache, step), such as "
                       "a tfp_flows.nets.CausalTransformer; pass decoder= or use "
                       "sampling='jacobi'.")
    num_tokens = (image_shape[0] // patch_size) * (image_shape[1] // patch_size)
    self._block_size = num_tokens if block_size is None else checks.int_at_least(
        "block_size", block_size)
    self._max_iterations = None if max_iterations is None else checks.int_at_least(
        "max_iterations", max_iterations)
    self._tolerance = checks.positive_float("tolerance", tolerance)
    self._decoder = decoder
    self._image_shape = image_shape
    self._patch_size = patch_size
    self._num_tokens = num_tokens
    self._token_size = patch_size * patch_size * image_shape[2]
    self._reverse = bool(reverse)
    self._sampling = sampling
    super().__init__(
        conditional=conditional, conditioner=conditioner, transformer=transformer,
        forward_min_event_ndims=3, dtype=tf.as_dtype(dtype), validate_args=validate_args,
        parameters=parameters, name=name)

  @property
  def num_tokens(self):
    return self._num_tokens

  @property
  def token_size(self):
    return self._token_size

  @property
  def sampling(self):
    return self._sampling

  # --- image <-> tokens ------------------------------------------------------------

  def _to_tokens(self, x):
    """`[..., H, W, C]` -> `([N, T, d], batch_shape)` in this block's token order."""
    height, width, channels = self._image_shape
    p = self._patch_size
    if x.shape.rank is not None:
      if x.shape.rank < 3 or not x.shape[-3:].is_compatible_with(self._image_shape):
        raise ValueError(f"{self.name} expects images of shape {self._image_shape}; got "
                         f"shape {x.shape}.")
      if not x.shape[-3:].is_fully_defined():  # known only when the call runs
        x = tf.ensure_shape(x, x.shape[:-3].concatenate(self._image_shape))
    if self.validate_args:
      x = tf.debugging.assert_all_finite(x, f"{self.name}: input is not finite.")
    batch_shape = tf.shape(x)[:-3]
    x = tf.reshape(x, [-1, height // p, p, width // p, p, channels])
    x = tf.transpose(x, [0, 1, 3, 2, 4, 5])
    tokens = tf.reshape(x, [-1, self._num_tokens, self._token_size])
    return (tokens[:, ::-1] if self._reverse else tokens), batch_shape

  def _from_tokens(self, tokens, batch_shape):
    height, width, channels = self._image_shape
    p = self._patch_size
    tokens = tokens[:, ::-1] if self._reverse else tokens
    x = tf.reshape(tokens, [-1, height // p, width // p, p, p, channels])
    x = tf.transpose(x, [0, 1, 3, 2, 4, 5])
    return tf.reshape(x, tf.concat([batch_shape, self._image_shape], 0))

  def _flat_conditional_input(self, conditional_input, batch_shape):
    """The labels broadcast to the events' batch shape and flattened with it."""
    self._check_conditional_input(conditional_input)
    if conditional_input is None:
      return ()
    return (tf.reshape(tf.broadcast_to(conditional_input, batch_shape), [-1]),)

  # --- density direction: one parallel pass -----------------------------------------

  def _params(self, tokens, context):
    params = tf.convert_to_tensor(self._conditioner(tokens, *context), dtype=self.dtype)
    expected = [self._token_size, self._transformer.num_params]
    if params.shape.rank is not None and params.shape[-2:].as_list() != expected:
      raise ValueError(f"The conditioner must return shape [N, T, {expected[0]}, "
                       f"{expected[1]}]; got {params.shape.as_list()}.")
    if self.validate_args:
      params = tf.debugging.assert_all_finite(
          params, f"{self.name}: conditioner output is not finite.")
    return params

  def _inverse_and_log_det(self, x, conditional_input):
    tokens, batch_shape = self._to_tokens(x)
    context = self._flat_conditional_input(conditional_input, batch_shape)
    z, log_det = self._transformer.inverse(tokens, self._params(tokens, context))
    ildj = tf.reshape(tf.reduce_sum(log_det, axis=[1, 2]), batch_shape)
    return self._from_tokens(z, batch_shape), ildj

  # --- sampling direction -------------------------------------------------------------

  def forward_solve(self, z, conditional_input=None):
    """Samples `x = forward(z)` and reports the solve: a `TokenSolveResult`."""
    z = tf.convert_to_tensor(z, self.dtype)
    tokens, batch_shape = self._to_tokens(z)
    context = self._flat_conditional_input(conditional_input, batch_shape)
    solve = {"kv_cache": self._solve_kv_cache, "jacobi": self._solve_jacobi,
             "naive": self._solve_naive}[self._sampling]
    x, log_det, converged, num_iterations = solve(tokens, context)
    x, log_det = checks.nan_unless(converged, [x, log_det], self.validate_args, message=(
        f"{self.name}: Jacobi sampling did not reach tolerance {self._tolerance} within "
        f"{self._max_iterations} sweeps per block; raise max_iterations (None: the "
        "block size, always exact) or use sampling='kv_cache'."))
    return TokenSolveResult(self._from_tokens(x, batch_shape),
                            tf.reshape(log_det, batch_shape),
                            tf.reshape(converged, batch_shape), num_iterations)

  def _solve_kv_cache(self, z, context):
    if z.shape[0] is not None and z.shape[0] > 0:
      return self._decode_kv_cache(z, context)
    # The decoder writes its cache with scatters, which cannot address an empty batch
    # (not even in an untaken branch, under XLA): a batch that may be empty is decoded
    # with one extra row of zeros, dropped afterwards.
    size = tf.shape(z)[0]
    pad = tf.maximum(1 - size, 0)

    def padded(t):
      return tf.pad(t, tf.concat([[[0, pad]], tf.zeros([t.shape.rank - 1, 2], tf.int32)], 0))

    x, log_det, converged, num_iterations = self._decode_kv_cache(
        padded(z), tuple(padded(c) for c in context))
    return x[:size], log_det[:size], converged[:size], num_iterations

  def _decode_kv_cache(self, z, context):
    num_tokens = self._num_tokens
    batch_size = tf.shape(z)[0]
    z_by_token = tf.transpose(z, [1, 0, 2])

    def body(i, previous, cache, xs, log_det):
      params, cache = self._decoder.step(cache, i, previous, *context)
      params = tf.convert_to_tensor(params, self.dtype)
      x_i, log_det_i = self._transformer.forward(z_by_token[i], params)
      return i + 1, x_i, cache, xs.write(i, x_i), log_det + tf.reduce_sum(log_det_i, -1)

    xs = tf.TensorArray(self.dtype, size=num_tokens, element_shape=[None, self._token_size])
    _, _, _, xs, log_det = tf.while_loop(
        lambda i, *_: i < num_tokens, body,
        (tf.constant(0), tf.zeros_like(z[:, 0]), self._decoder.initial_cache(
            batch_size, *context), xs, tf.zeros([batch_size], self.dtype)),
        maximum_iterations=num_tokens)
    x = tf.transpose(xs.stack(), [1, 0, 2])
    return x, log_det, tf.ones([batch_size], tf.bool), tf.constant(num_tokens)

  def _solve_naive(self, z, context):
    num_tokens = self._num_tokens
    positions = tf.range(num_tokens)[tf.newaxis, :, tf.newaxis]

    def body(i, x):
      # Token i's parameters read tokens < i, all final by now: one full pass per token.
      x_new, _ = self._transformer.forward(z, self._params(x, context))
      return i + 1, tf.where(positions == i, x_new, x)

    _, x = tf.while_loop(lambda i, x: i < num_tokens, body, (tf.constant(0), z),
                         maximum_iterations=num_tokens)
    _, log_det = self._transformer.forward(z, self._params(x, context))
    return (x, tf.reduce_sum(log_det, axis=[1, 2]), tf.ones(tf.shape(z)[:1], tf.bool),
            tf.constant(num_tokens + 1))

  def _solve_jacobi(self, z, context):
    """Gauss-Seidel over token blocks, Jacobi sweeps inside each (Liu & Qin, Alg. 1)."""
    tolerance = tf.cast(self._tolerance, self.dtype) * tf.maximum(
        tf.ones([], self.dtype), tf.reduce_max(tf.abs(z), axis=[1, 2]))
    x = z
    converged = tf.ones(tf.shape(z)[:1], tf.bool)
    total = tf.constant(0)
    for start in range(0, self._num_tokens, self._block_size):
      end = min(start + self._block_size, self._num_tokens)
      cap = self._max_iterations or end - start
      prefix, z_block = x[:, :start], z[:, start:end]

      def body(i, block, change, prefix=prefix, z_block=z_block, start=start):
        del change
        # Causality: tokens after the block cannot affect it, so the pass stops at `end`.
        params = self._params(tf.concat([prefix, block], axis=1), context)[:, start:]
        block_new, _ = self._transformer.forward(z_block, params)
        return i + 1, block_new, tf.reduce_max(tf.abs(block_new - block), axis=[1, 2])

      iterations, block, change = tf.while_loop(
          lambda i, block, change: tf.reduce_any(change > tolerance), body,
          (tf.constant(0), z_block, tf.fill(tf.shape(z)[:1], tf.constant(
              float("inf"), self.dtype))), maximum_iterations=cap)
      # B sweeps make a block of B tokens exact, whatever the last change was.
      converged &= (change <= tolerance) | (iterations >= end - start)
      total += iterations
      x = tf.concat([prefix, block, z[:, end:]], axis=1)
    _, log_det = self._transformer.forward(z, self._params(x, context))
    return x, tf.reduce_sum(log_det, axis=[1, 2]), converged, total + 1

  def _forward_and_log_det(self, z, conditional_input):
    result = self.forward_solve(z, conditional_input)
    return result.value, result.log_det
