"""The steps of one `steps_per_execution` block as one XLA loop: `FlowModel`'s train function.

Keras runs a block of k steps (`compile(steps_per_execution=k, jit_compile=True)`) as
a graph loop that reads a batch and launches the compiled step, k times. Every launch
hands XLA all the variables again (weights, optimizer slots, metric and seed states),
which for a small flow costs about as much as the step's arithmetic
(benchmarks/RESULTS.md). `make_train_function` reads the block's k batches first and
runs the k steps as one `tf.while_loop` inside one XLA computation: the same steps on
the same batches in the same order, so the same weights, seeds, metrics and logs, and
one launch per block.

* Cost: the block's batches are held at once, at most `BUFFER_BYTES` of them; a
  larger block runs as several loops over the batches that fit.
* A batch shaped unlike the run before it (the smaller last batch of an epoch) runs as
  one compiled step, in order.
* Python calls the loop, not a graph: an XLA call inside a graph's `tf.cond` cost VI
  `fit` half its speed.
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


def _has_convolutions(graph):
  """Whether `graph` holds a convolution, its function library included."""
  types = {op.type for op in graph.get_operations()}
  for library_function in graph.as_graph_def().library.function:
    types |= {node.op for node in library_function.node_def}
  return any(t.startswith(("Conv", "DepthwiseConv")) for t in types)


def make_train_function(model, keras_function, logs_fn, reads_batches=True):
  """A train function running each block of `model.steps_per_execution` steps as one XLA loop.

  Args:
    model: a compiled Keras model with `jit_compile=True`, `steps_per_execution` > 1,
      one replica and a built optimizer (no variable may be created inside the loop).
    keras_function: Keras' own train function, used where the loop does not apply
      (`train_on_batch`'s Python iterator, steps with convolutions, other specs).
    logs_fn: returns the logs of the last step from the metrics' states, without
      updating them (the values `model.train_step` returns).
    reads_batches: False for an objective that ignores its batches (it draws its own
      samples): each block then reads one batch instead of k.

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

  one_step = tf.function(model.train_step, jit_compile=True)

  @tf.function(jit_compile=True)
  def run_block(batches, count):
    def body(step):
      model.train_step(tf.nest.map_structure(lambda batch: batch[step], batches))
      return step + 1
    tf.while_loop(lambda step: step < count, body, [tf.constant(0)])
    return logs_fn()

  def make_execution(element_spec):
    """`run(iterator) -> logs` for one block of batches of `element_spec`, or None."""
    if not _compilable(element_spec):
      return None
    # One trace of the step, for the check and for the batches that run alone.
    step = one_step.get_concrete_function(element_spec)
    if _has_convolutions(step.graph):
      return None
    flat_specs = tf.nest.flatten(element_spec)

    @tf.function
    def read_block(iterator, remaining):
      """Reads up to `remaining` batches; the run shaped like the first, padded, and what ended it.

      Reading stops at a batch shaped unlike the first (returned as `odd`), at the end
      of the data, or when one more batch would take the run past `BUFFER_BYTES`. The
      run is padded to k batches (the extra ones repeat its last and do not run), so
      XLA compiles the loop once per batch shape; a run cut by the buffer is not.
      """
      arrays = [tf.TensorArray(spec.dtype, size=steps, infer_shape=False,
                               element_shape=spec.shape) for spec in flat_specs]
      empty = [tf.zeros([0, *spec.shape[1:]], spec.dtype) for spec in flat_specs]

      def read_next(count, more, rows, size, odd, has_odd, ended, arrays):
        optional = iterator.get_next_as_optional()
        has_value = optional.has_value()
        flat = tf.cond(has_value, lambda: tf.nest.flatten(optional.get_value()),
                       lambda: empty)
        batch_rows = tf.shape(flat[0])[0]
        batch_size = tf.add_n([tf.size(t, tf.int64) * t.dtype.size for t in flat])
        rows = tf.where(tf.equal(count, 0), batch_rows, rows)
        size = tf.where(tf.equal(count, 0), batch_size, size)
        in_run = has_value & tf.equal(batch_rows, rows)
        arrays = tf.cond(in_run, lambda: [a.write(count, t) for a, t in zip(arrays, flat)],
                         lambda: arrays)
        has_odd = has_value & ~in_run
        odd = [tf.cond(has_odd, lambda t=t: t, lambda o=o: o) for t, o in zip(flat, odd)]
        count += tf.cast(in_run, tf.int32)
        fits = tf.cast(count + 1, tf.int64) * size <= BUFFER_BYTES
        more = in_run & fits & (count < remaining)
        return count, more, rows, size, odd, has_odd, ~has_value, arrays

      zero = tf.constant(0)
      count, _, _, size, odd, has_odd, ended, arrays = tf.while_loop(
          lambda count, more, *_: more, read_next,
          [zero, remaining > 0, zero, tf.constant(0, tf.int64), empty, tf.constant(False),
           tf.constant(False), arrays],
          shape_invariants=[tf.TensorShape([])] * 4 +
          [[tf.TensorShape([None]).concatenate(t.shape[1:]) for t in flat_specs]] +
          [tf.TensorShape([])] * 2 + [[tf.TensorShape(None)] * len(flat_specs)])
      padded_length = tf.where(tf.cast(steps, tf.int64) * size <= BUFFER_BYTES, steps, count)
      indices = tf.minimum(tf.range(padded_length), count - 1)
      padded = tf.cond(count > 0, lambda: [a.gather(indices) for a in arrays],
                       lambda: [tf.zeros([steps, *t.shape], t.dtype) for t in empty])
      return count, padded, odd, has_odd, ended

    def run(iterator):
      if not reads_batches:  # the objective ignores the batch: read one, run k steps
        batch = next(iterator)
        return run_block(tf.nest.map_structure(
            lambda t: tf.repeat(t[tf.newaxis], steps, axis=0), batch), tf.constant(steps))
      remaining, logs = steps, None
      while remaining > 0:
        count, padded, odd, has_odd, ended = read_block(iterator, tf.constant(remaining))
        count = int(count)
        if count:
          logs = run_block(tf.nest.pack_sequence_as(element_spec, padded), tf.constant(count))
        if has_odd:
          logs = step(tf.nest.pack_sequence_as(element_spec, odd))
          count += 1
        remaining -= count
        if ended or not count:
          break
      if logs is None:
        raise StopIteration
      return logs

    return run

  executions = {}  # repr(element spec) -> its run function, or None for Keras' loop

  def function(iterator):
    if not isinstance(iterator, tf.data.Iterator):
      return keras_function(iterator)
    key = repr(iterator.element_spec)
    if key not in executions:
      executions[key] = make_execution(iterator.element_spec)
    if executions[key] is None:
      return keras_function(iterator)
    return executions[key](iterator)

  return function
