"""Where a conv layer's maps are read: after the normalisation and activation that follow it.

What a unit "fires" is the activation that follows its conv, but in torchvision and timm blocks
the conv, its normalisation and its activation are rarely siblings in one ``nn.Sequential``:
``forward`` calls ``self.bn1``/``self.relu`` (torchvision's BasicBlock reuses one ``relu`` module
twice), ``F.relu``, or timm's ``BatchNormAct2d`` (normalisation and activation in one module).

:func:`find_readouts` therefore runs one guarded forward pass and follows each conv's output by
data flow — a :class:`~torch.overrides.TorchFunctionMode` sees every torch function, module
hooks see every module call — through normalisation, dropout/identity, one residual ``add`` and
channel concatenation, up to the first activation. The result says, per layer, which tensor to
read (:class:`Readout`): a module's output (which call of it) or a functional op's output (which
occurrence in one forward), and which channels of it. :class:`ReadoutHooks` reads those tensors
during later forward passes.

Modules: ``sites`` (what is read: :class:`ReadSite`, :class:`Readout`, :func:`raw_readout`),
``discovery`` (:func:`find_readouts`), ``_dataflow`` (the tracker it runs), ``_ops`` (the op
and module tables it follows), ``hooks`` (:class:`ReadoutHooks`).

Example:
    >>> readouts = find_readouts(model, probe, ["layer1.0.conv2"])
    >>> readouts["layer1.0.conv2"].describe()
    'read after bn2 → + residual → relu'
    >>> with observe(model), ReadoutHooks(model, readouts, lambda name, t: seen.append(t)):
    ...     model(probe)
"""

from cnnviz.analysis.readout._dataflow import _Discovery as _Discovery  # tests patch it
from cnnviz.analysis.readout.discovery import DISCOVERY_SAMPLES as DISCOVERY_SAMPLES
from cnnviz.analysis.readout.discovery import find_readouts
from cnnviz.analysis.readout.hooks import ReadoutHooks
from cnnviz.analysis.readout.sites import LayerRole as LayerRole
from cnnviz.analysis.readout.sites import Readout, ReadSite, Stage, raw_readout

__all__ = [
    "ReadSite",
    "Readout",
    "ReadoutHooks",
    "Stage",
    "find_readouts",
    "raw_readout",
]
