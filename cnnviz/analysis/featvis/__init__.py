"""Feature visualization by optimization: the image each unit fires for.

After Olah, Mordvintsev and Schubert, "Feature Visualization" (Distill, 2017) and the Lucid
library. Starting from near-grey noise, the input image is changed by gradient ascent until it
maximally drives one channel of a conv or pooling layer (or one class logit). Many channels are
optimised at once as one batch: one image per channel.

**What is maximised.** The objective is read where the activation maps are read
(:mod:`cnnviz.analysis.readout`): for a conv layer, *after* the normalisation and activation that
follow it (``conv → bn → relu`` is read after the ReLU, also when the ReLU is an ``F.relu`` in
``forward`` or a shared module), so the image shows what the unit fires for; pooling layers are
read as they are. Of that map, ``objective="mean"`` (the default) averages the *interior* units:
those whose receptive field (:func:`cnnviz.analysis.receptive_field.receptive_fields`) lies
inside the image, not clipped by the border. ``objective="center"`` takes the single centre unit
(the unit a top-k dataset patch of the channel shows).

Why both matter, on a first-layer filter ``w`` (a linear map of the image): the mean of its
*pre-activation* map over all positions telescopes to the image's borders (for an edge filter
the interior cancels), so the optimum is a saturated border around a flat field. After a ReLU
each unit counts only when its patch matches ``w``, and the sum of ReLUs is maximised by placing
the filter's own pattern (its positive weights white, negative black) at as many units as fit:
the image is ``w`` tiled, a grating for an edge filter, a colour field for a colour-opponent
filter. Border units would instead reward the constant padding. Measured on a 3x3 Sobel-x
filter with ReLU: the image optimised for the pre-activation mean reaches 0.58x (32 px) and
0.32x (64 px) of the post-ReLU mean of the best of 64 uniform random images; this objective
reaches 3.0x and 3.1x, with stripes whose horizontal gradient energy is 4-16x the vertical
(``tests/analysis/test_featvis.py`` checks such known answers: Sobel x/y, a diagonal edge, a
colour-opponent filter, BatchNorm and ``F.relu`` between conv and read).

Three ingredients make the result an image rather than adversarial noise:

* **Fourier parametrisation with 1/f scaling.** The optimised parameters are the image's 2-D
  Fourier coefficients, each scaled by ``1 / max(f, 1/max(H, W))``, so a gradient step changes
  low frequencies about as much as natural images vary in them and high-frequency noise is
  suppressed (a preconditioner, not a constraint).
* **Colour decorrelation.** For 3-channel inputs, the three optimised "colour" planes are mixed by
  a fixed 3x3 matrix: the square root of the colour correlation of ImageNet, as published by
  Lucid, normalised by its largest column norm. The planes therefore are roughly decorrelated
  colour components. A sigmoid maps the result into the valid ``[0, 1]`` pixel range. Inputs with
  another channel count get only the spatial (Fourier) part.
* **Transformation robustness.** Every step the image goes through random padding, jitter,
  scaling and rotation (Lucid's "standard transforms") before the model sees it, so only
  patterns that survive small shifts and rescalings are reinforced. The transforms are
  differentiable (one ``affine_grid``/``grid_sample`` per step, each image its own draw) and
  their randomness comes from a dedicated :class:`torch.Generator` seeded with ``seed``; the
  global RNG is never drawn from (and is forked anyway).

**Optimiser.** Adam, with each image's gradient scaled to unit root-mean-square before the
step and ``eps=1`` (so: an ``eps`` relative to the gradient's RMS). With Adam's usual tiny
``eps`` every Fourier coefficient moves by a full step whatever its gradient, so coefficients
the objective barely cares about fill the image with broadband structure; a first-layer edge
filter then gets a labyrinth of edges (measured: gradient energy along the filter's axis only
2x that across it, for any ``lr``, number of steps, preconditioner cut-off or squash). With the
relative ``eps`` a coefficient whose gradient is far below the RMS moves in proportion to it:
the same filter gets straight stripes (4-16x) and the objective ends higher, also for deep
layers (trained LeNet-5 on Shapes, 256 steps, against Adam's usual ``eps`` at ``lr=0.05``:
+14 to +19 % per layer for ``"mean"``, +1 to +19 % for ``"center"``, with ``lr=0.15``).

Dead starts: a unit behind a ReLU that is negative for the initial image has zero gradient and
would never move; reading after the ReLU makes this the rule for ``"center"``. As Lucid does,
every ReLU gets a "redirected" gradient while optimising (``relu_redirect=True``): ``nn.ReLU``
modules through a forward hook, ``F.relu``/``torch.relu``/``Tensor.relu`` (and their in-place
forms) called outside an ``nn.ReLU`` through a :class:`~torch.overrides.TorchFunctionMode`
(entered only when the model makes such calls). For an image whose ReLU gradient is zero
everywhere, the gradient passes wherever it pushes a negative input up. Forward values are
unchanged.

A plain pixel parametrisation (``param="pixel"``: a logit per pixel, then a sigmoid) is
available for comparison: it optimises the same objective but tends towards high-frequency
patterns.

The image lives in ``[0, 1]`` pixel space. When the model was trained on normalised data, pass
the data's per-channel ``mean`` and ``std`` (``ShapesDataModule.mean``/``.std``): the model
then sees ``(image - mean) / std``, exactly as it saw its training data.
:attr:`FeatVisResult.images` are in ``[0, 1]``; :meth:`FeatVisResult.normalized` gives what the
model saw (without the random transforms). The image is optimised in float32 whatever the
model's precision: each forward casts it to the dtype (bf16, fp16, fp64) and memory format
(``channels_last``) of the model's parameters; results are float32.

Layers that would get the same image as another selected layer are not optimised twice by
:func:`visualize_layers` (:func:`duplicate_layers`): a pooling layer whose input is exactly
the tensor read for another selected layer (nothing in between) and that passes it on unchanged
(kernel 1 and stride 1, or an adaptive pool to the same size), or, with ``objective="mean"``,
pools it globally (an adaptive pool to 1x1, or a pool whose single window covers the whole map:
the global pool after the last conv of most classifiers), or averages it in windows side by side
that cover exactly the layer's averaged units (LeNet-5's 2x2 average pools: the mean of the
means is the mean). Its result is the other layer's images, with :attr:`FeatVisResult.same_as`
naming that layer and the activations measured on the pooling layer itself. (A global *max*
pool, or a global pool of a padded conv whose border units the conv's objective leaves out, is
not exactly the same objective; its image is still the conv's "what the unit fires for", and
optimising it separately would only exploit one unit or the padding.)

Defaults and why:

* ``steps=256``, ``lr=0.15`` (Adam with the relative ``eps`` above). Lucid uses ``lr=0.05``
  with 512 steps at 128 px and Adam's usual ``eps``; with the relative ``eps`` typical steps are
  about half as large, and on a trained LeNet-5 (Shapes, 32 px, 256 steps) ``lr=0.15`` reaches
  a higher objective in every layer than 0.05 or 0.1. At the 28–64 px of the small case-study
  models the objective of conv and pooling channels levels off within 128–256 steps; unbounded
  deep units and logits still creep up from 256 to 512 steps (see ``history``). For 224 px
  ImageNet-size models use ``steps=512`` as Lucid does (and a GPU). ``scripts/bench_featvis.py``
  times LeNet-5: about 17 CPU-seconds for all 164 channels on one thread.
* Image size: ``input_shape`` defaults to the model's ``expected_input_shape`` (every cnnviz
  model has one), i.e. the full input the model was built for, so the optimised image and
  dataset patches are judged with the same receptive field.
* Transform magnitudes: Lucid's values at 128 px and above (pad 12 with grey, random crops of 8
  then 4 pixels, i.e. shifts of up to ±4 then ±2 pixels, scale 0.9–1.1, rotation ±10°; drawn
  uniformly here rather than from Lucid's short lists). Below 128 px the pixel magnitudes (pad,
  shifts) scale with ``min(H, W) / 128``, at least one pixel: a 32 px image is padded by 3 and
  shifted by up to ±1 then ±1 pixels. Scale and rotation are dimensionless and stay as they
  are.
* Interior units: where no unit's (local) receptive field fits inside the image along an axis,
  the centre unit along that axis is used; where the receptive fields cannot be computed (the
  model cannot be traced by ``torch.fx``), every unit is, and
  :attr:`FeatVisResult.units_reason` says so.

Long runs can be followed and stopped: ``progress(steps_done)`` is called after every step and
``should_stop()`` is checked before every step; when it returns ``True`` the images optimised so
far are returned (:attr:`FeatVisResult.stopped_at`), with every guarantee of a normal return.

Caveats: a conv with no activation after it is read before any (its readout's
``pre_activation`` is set; the linear-filter degeneracy above then applies). When a module is
called several times in one forward, the call the readout names counts (the first, for pooling
layers). Results are deterministic for a fixed ``seed``, ``batch_size`` and device, but depend
on how channels are grouped into batches (one generator per call, drawn batch after batch).
Bounded activations cap what any image can reach: a pooled ``tanh`` unit cannot exceed 1, so for
saturating channels the optimised image and the best dataset patches tie (up to rounding)
instead of the image winning clearly.

Modules: ``core`` (the public functions), ``result`` (:class:`FeatVisResult`), ``image`` (the
parametrisations and transforms), ``_relu`` (the redirected ReLU), ``_settings`` (argument
checks), ``_reading`` (what is read and which units count), ``_duplicates`` (layers that would
get another's image), ``_optimise`` (the loop).
"""

from cnnviz.analysis.featvis.core import duplicate_layers, visualize_channels, visualize_layers
from cnnviz.analysis.featvis.image import COLOR_CORRELATION_SQRT
from cnnviz.analysis.featvis.image import _transform as _transform  # tests call it
from cnnviz.analysis.featvis.result import FeatVisResult
from cnnviz.analysis.featvis.result import Objective as Objective
from cnnviz.analysis.featvis.result import Param as Param
from cnnviz.analysis.featvis.result import Units as Units

__all__ = [
    "COLOR_CORRELATION_SQRT",
    "FeatVisResult",
    "duplicate_layers",
    "visualize_channels",
    "visualize_layers",
]
