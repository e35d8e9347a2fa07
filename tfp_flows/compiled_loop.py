"""The steps of one `steps_per_execution` block as one XLA loop: `FlowModel`'s train function.

Keras runs a block of k steps (`compile(steps_per_execution=k, jit_compile=True)`) as
a graph loop that reads a batch and launches the compiled step, k times. Every launch
hands XLA all the variables again (weights, optimizer slots, metric and seed states),
which for a small flow costs about as much as the step's arithmetic
(benchmarks/RESULTS.md). `make_train_function` reads the block's k batches first and
runs the k steps as one `tf.while_loop` inside one XLA computation: the same steps on
the same batches in the same order, so the same weights, seeds, metrics and logs, and
one launch per block.

* Cost: the block's batches are held at once. A block whose batches would take more
  than `BUFFER_BYTES` runs one compiled step per batch, as Keras does.
* A batch whose shape differs from the block's first (the smaller last batch of an
  epoch) and the batches after it run one compiled step each, in order.
* The loop takes k batches also for a shorter block (the extra ones are not run), so
  XLA compiles it once per batch shape.
* It applies with `jit_compile=True`, k > 1, one replica and a `tf.data` iterator of
  dense tensors whose shape is known but for the batch size, to steps without
  convolutions; otherwise the train function is Keras' own. XLA's CPU backend leaves
  the convolutions of a loop body (their gradients' layouts) off its Eigen kernels:
  a Glow step ran 5x slower in the loop than as Keras' separate calls
  (benchmarks/RESULTS.md).
"""

import tensorflow as tf

__all__ = ["BUFFER_BYTES", "make_train_function"]

# 256 MiB: 100 batches of 256 RGB 32x32 float32 images fit, 100 of 64x64 do not.
BUFFER_BYTES = 256 * 2**20


def _compilable(element_spec):
  """Whether every component is a dense tensor with a known shape but for the batch size."""
  for spec in tf.nest.flatten(element_spec):
    if not isinstance(spec, tf.TensorSpec) or spec.shape.rank is None:
      return False
    if spec.shape.rank == 0 or not spec.shape[1:].is_fully_defined():
      return False
  return True


def _has_convolutions(function, element_spec):
  """Whether `function` traced for `element_spec` holds a convolution (library included)."""
  graph = function.get_concrete_function(element_spec).graph
  types = {op.type for op in graph.get_operations()}
  for library_function in graph.as_graph_def().library.function:
    types |= {node.op for node in library_function.node_def}
  return any(t.startswith(("Conv", "DepthwiseConv")) for t in types)


def make_train_function(model, keras_function, logs_fn):
  """A train function running each block of `model.steps_per_execution` steps as one XLA loop.

  Args:
    model: a compiled Keras model with `jit_compile=True`, `steps_per_execution` > 1,
      one replica and a built optimizer (no variable may be created inside the loop).
    keras_function: Keras' own train function, used where the loop does not apply
      (`train_on_batch`'s Python iterator, a block too large to hold, other specs).
    logs_fn: returns the logs of the last step from the metrics' states, without
      updating them (the values `model.train_step` returns).

  Returns:
    `function(iterator) -> logs`, raising `StopIteration` when the iterator is empty,
    as Keras' train function does.
  """
  steps = int(model.steps_per_execution)
  if steps < 2:
    raise ValueError(f"steps_per_execution must be at least 2; got {steps}.")
  if not model.optimizer.built:
    raise ValueError("Build the optimizer (optimizer.build(model.trainable_variables)) "
                     "before making the train function: the loop cannot create variables.")

  one_step = tf.function(model.train_step, jit_compile=True, reduce_retracing=True)

  @tf.function(jit_compile=True)
  def run_block(batches, count):
    def body(step):
      model.train_step(tf.nest.map_structure(lambda batch: batch[step], batches))
      return step + 1
    tf.while_loop(lambda step: step < count, body, [tf.constant(0)])
    return logs_fn()

  def stepwise(read, start, stop, logs):
    """Runs `one_step(read(i))` for i in [start, stop); the logs of the last one."""
    def body(i, _):
      return i + 1, one_step(read(i))
    return tf.while_loop(lambda i, _: i < stop, body, [start, logs])[1]

  def buffered(iterator, first):
    """Reads the block's other batches, then runs the loop and the odd-shaped rest."""
    structure, flat_first = first, tf.nest.flatten(first)
    arrays = [tf.TensorArray(t.dtype, size=steps, infer_shape=False,
                             element_shape=tf.TensorShape([None]).concatenate(t.shape[1:]))
              .write(0, t) for t in flat_first]
    rows = tf.shape(flat_first[0])[0]

    def read_next(count, more, uniform, arrays):
      optional = iterator.get_next_as_optional()
      more = optional.has_value()

      def write():
        flat = tf.nest.flatten(optional.get_value())
        same = tf.equal(tf.shape(flat[0])[0], rows)
        return [a.write(count, t) for a, t in zip(arrays, flat)], same
      arrays, same = tf.cond(more, write, lambda: (arrays, tf.constant(False)))
      # The uniform run is the prefix of batches shaped like the first.
      uniform = tf.where(same & tf.equal(uniform, count), count + 1, uniform)
      return count + tf.cast(more, tf.int32), more, uniform, arrays

    count, _, uniform, arrays = tf.while_loop(
        lambda count, more, uniform, arrays: more & (count < steps), read_next,
        [tf.constant(1), tf.constant(True), tf.constant(1), arrays])
    # k batches whatever the run's length (the extra ones repeat its last and do not
    # run), so XLA compiles the loop once per batch shape.
    indices = tf.minimum(tf.range(steps), uniform - 1)
    padded = [a.gather(indices) for a in arrays]
    logs = run_block(tf.nest.pack_sequence_as(structure, padded), uniform)
    read = lambda i: tf.nest.pack_sequence_as(structure, [a.read(i) for a in arrays])
    return count, stepwise(read, uniform, count, logs)

  def streamed(iterator, first):
    """One compiled step per batch, reading as it goes: Keras' loop, for large blocks."""
    logs = one_step(first)

    def body(count, optional, logs):
      logs = one_step(optional.get_value())
      more = count + 1 < steps
      optional = tf.cond(more, iterator.get_next_as_optional, lambda: optional)
      return count + 1, optional, logs
    count, _, logs = tf.while_loop(
        lambda count, optional, _: (count < steps) & optional.has_value(), body,
        [tf.constant(1), iterator.get_next_as_optional(), logs])
    return count, logs

  @tf.function
  def run_execution(iterator):
    optional = iterator.get_next_as_optional()

    def run():
      first = optional.get_value()
      size = tf.add_n([tf.size(t, tf.int64) * t.dtype.size for t in tf.nest.flatten(first)])
      return tf.cond(size * steps <= BUFFER_BYTES, lambda: buffered(iterator, first),
                     lambda: streamed(iterator, first))
    return tf.cond(optional.has_value(), run, lambda: (tf.constant(0), logs_fn()))

  applies = {}  # element spec -> whether the loop applies, decided at its first batch

  def function(iterator):
    if not isinstance(iterator, tf.data.Iterator):
      return keras_function(iterator)
    spec = iterator.element_spec
    key = repr(spec)
    if key not in applies:
      # The step traced here is the one the odd-shaped batches reuse.
      applies[key] = _compilable(spec) and not _has_convolutions(one_step, spec)
    if not applies[key]:
      return keras_function(iterator)
    count, logs = run_execution(iterator)
    if count == 0:
      raise StopIteration
    return logs

  return function
