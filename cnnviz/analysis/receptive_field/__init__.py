"""Receptive fields: analytical (graph walk), measured (gradient support) and effective (Luo).

Three views of "how far does a unit see":

* :func:`receptive_fields` computes, for every conv and pooling layer, the theoretical receptive
  field by walking the ``torch.fx`` graph of the model (Araujo, Norris & Sim, "Computing Receptive
  Fields of Convolutional Neural Networks", Distill 2019). Per spatial axis and layer ``l``::

      r_l = r_{l-1} + (k_l - 1) * S_{l-1}     (size;   k_l = d_l * (kernel - 1) + 1 with dilation)
      S_l = S_{l-1} * s_l                     (jump, the effective stride)
      P_l = P_{l-1} + p_l * S_{l-1}           (effective padding)

  so output unit ``i`` sees the input interval ``[i * S - P, i * S - P + r - 1]``. Where paths
  merge (ResNet additions, Inception concatenations) the largest field over all paths is taken
  (the hull of the intervals), and merges of paths with different jumps or centres are flagged
  as *misaligned*. A global-context path (a squeeze-and-excitation gate: global pool -> fc ->
  sigmoid -> multiply) makes every later field the whole input; such layers are flagged
  (:attr:`ReceptiveField.global_context`) and also get their *local* field, with the gates'
  global paths cut (:attr:`ReceptiveField.local`, ``region(..., local=True)``).
* :func:`measure_receptive_field` measures it independently: on the linearised model (max pools
  become average pools, activations and normalisation identities, every weight a positive
  constant, products of two input-dependent values their mean; done by a ``TorchFunctionMode``
  during one guarded forward pass, the model's own weights are not used) the input gradient of
  a unit is non-zero exactly on its receptive field. ``local=True`` cuts the global spatial
  reductions and measures the local field.
* :func:`effective_receptive_field` is the effective receptive field of Luo et al. (2016): the
  mean absolute input gradient of a layer's centre unit over real probe images, on the real
  model, summarised by the share of the theoretical field that holds 90% of its mass
  (:attr:`ERFResult.ratio`, at most 1).

Regions are half-open, like Python slices: ``(top, bottom, left, right)`` means rows
``top .. bottom - 1`` and columns ``left .. right - 1``, so ``image[..., top:bottom, left:right]``
is the patch.

Modules: ``geometry`` (the record and the interval arithmetic), ``ops`` (how each operation
moves positions), ``walker`` and ``graph`` (the ``torch.fx`` walk), ``measure`` (the gradient
measurement), ``effective`` (the effective field).
"""

from cnnviz.analysis.receptive_field.effective import ERFResult, effective_receptive_field
from cnnviz.analysis.receptive_field.geometry import ReceptiveField, ReceptiveFieldError
from cnnviz.analysis.receptive_field.graph import receptive_fields, shape_run
from cnnviz.analysis.receptive_field.measure import (
    MeasuredReceptiveField,
    measure_receptive_field,
    measure_receptive_fields,
)

__all__ = [
    "ERFResult",
    "MeasuredReceptiveField",
    "ReceptiveField",
    "ReceptiveFieldError",
    "effective_receptive_field",
    "measure_receptive_field",
    "measure_receptive_fields",
    "receptive_fields",
    "shape_run",
]
