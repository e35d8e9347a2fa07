"""Random orders and permutations: stacked layers without a seed differ, seeded programs repeat."""

import keras
import pytest

import tfp_flows as tff


def _orders(make, count=4):
  keras.utils.set_random_seed(0)
  layers = [make() for _ in range(count)]
  tff.FlowModel(layers, event_shape=[6])
  return layers


@pytest.mark.parametrize("make, order_of", [
    (lambda: tff.layers.AffineAutoregressive(order="random", hidden_units=(8,)),
     lambda layer: layer.net.order),
    (lambda: tff.layers.SplineAutoregressive(order="random", num_bins=3, hidden_units=(8,)),
     lambda layer: layer.net.order),
    (lambda: tff.layers.Permute("random"), lambda layer: layer._indices),  # pylint: disable=protected-access
])
def test_stacked_random_layers_differ_and_a_seeded_program_repeats_them(make, order_of):
  # The default seed was 0: every stacked layer drew the same order, so a stack of
  # random-order MADEs stayed triangular at any depth, and [Permute("random"), coupling]
  # stacks left a coordinate that nothing depended on.
  layers = _orders(make)
  orders = [tuple(order_of(layer)) for layer in layers]
  assert len(set(orders)) == len(orders), orders
  assert [tuple(order_of(layer)) for layer in _orders(make)] == orders
  for layer in layers:
    clone = type(layer).from_config(layer.get_config())
    tff.FlowModel([clone], event_shape=[6])
    assert tuple(order_of(clone)) == tuple(order_of(layer))

