"""``CaseStudyModule``: one LightningModule that trains any classifier with lecture recipes."""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from typing_extensions import override

__all__ = ["CaseStudyModule"]

Optimizer = Literal["sgd", "adam", "adamw"]
Scheduler = Literal["none", "cosine", "step", "onecycle"]


def _build(
    model: str | nn.Module, model_kwargs: dict[str, Any], data_info: dict[str, Any]
) -> nn.Module:
    if isinstance(model, nn.Module):
        if model_kwargs:
            raise ValueError("`model_kwargs` only applies when `model` is a registry name")
        return model
    if not isinstance(model, str):
        raise TypeError(
            f"`model` must be a cnnviz model name or an nn.Module; got {type(model).__name__}"
        )
    from cnnviz import models

    # Facts about the data fill in what the user did not set; `create` names any argument the
    # model does not take (e.g. text data given to an image model).
    kwargs = {**data_info, **model_kwargs}
    return models.create(model, **kwargs)


class CaseStudyModule(pl.LightningModule):
    """Train a classifier — a cnnviz case-study model by name, or any ``nn.Module``.

    Logs ``train/loss``, ``train/acc``, ``val/loss`` and ``val/acc`` per epoch (and the loss
    per step on the progress bar). Recipes from the lecture: SGD with momentum 0.9 and weight
    decay, or Adam; a cosine, step or one-cycle learning-rate schedule.

    Args:
        model: A registry name (``"lenet5"``, see ``cnnviz.models.available()``) or a module
            whose forward returns logits ``[N, num_classes]``.
        model_kwargs: Keyword arguments for the registry constructor (e.g. ``{"input_size": 64}``).
        data_info: Facts about the data (``num_classes``, ``in_channels``, ``input_size``...),
            normally linked from the data module by ``cnnviz fit``; used for the constructor
            arguments the model accepts and ``model_kwargs`` does not set.
        optimizer: ``"sgd"`` (momentum, Nesterov off), ``"adam"`` or ``"adamw"``.
        lr: Learning rate.
        momentum: SGD momentum.
        weight_decay: L2 weight decay.
        scheduler: ``"none"``, ``"cosine"`` (over ``max_epochs``), ``"step"`` (``step_size``,
            ``gamma``) or ``"onecycle"`` (per step).
        step_size: Epochs between decays for ``"step"``.
        gamma: Decay factor for ``"step"``.
        label_smoothing: Cross-entropy label smoothing.

    Example:
        >>> module = CaseStudyModule("lenet5", data_info={"num_classes": 9, "in_channels": 3})
        >>> module = CaseStudyModule(torchvision.models.resnet18(num_classes=9))
    """

    def __init__(
        self,
        model: str | nn.Module = "lenet5",
        model_kwargs: dict[str, Any] | None = None,
        data_info: dict[str, Any] | None = None,
        optimizer: Optimizer = "sgd",
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        scheduler: Scheduler = "cosine",
        step_size: int = 10,
        gamma: float = 0.1,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if optimizer not in ("sgd", "adam", "adamw"):
            raise ValueError(f"`optimizer` must be 'sgd', 'adam' or 'adamw'; got {optimizer!r}")
        if scheduler not in ("none", "cosine", "step", "onecycle"):
            raise ValueError(
                f"`scheduler` must be 'none', 'cosine', 'step' or 'onecycle'; got {scheduler!r}"
            )
        if not lr > 0:
            raise ValueError(f"`lr` must be > 0; got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"`momentum` must be in [0, 1); got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"`weight_decay` must be >= 0; got {weight_decay}")
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"`label_smoothing` must be in [0, 1); got {label_smoothing}")
        self.save_hyperparameters(ignore=["model"] if isinstance(model, nn.Module) else None)
        self.model_name = model if isinstance(model, str) else type(model).__name__
        self.net = _build(model, dict(model_kwargs or {}), dict(data_info or {}))

    @property
    def expected_input_shape(self) -> tuple[int, ...] | None:
        """The wrapped model's input shape without the batch dimension, when it declares one."""
        return getattr(self.net, "expected_input_shape", None)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        acc = (logits.detach().argmax(dim=1) == y).float().mean()
        on_step = stage == "train"
        self.log(
            f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, batch_size=len(y)
        )
        self.log(
            f"{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y)
        )
        return loss

    @override
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    @override
    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "test")

    @override
    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return torch.softmax(self(x), dim=1)

    @override
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        params = self.parameters()
        if hp.optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay
            )
        elif hp.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.scheduler == "none":
            return opt
        if hp.scheduler == "onecycle":
            total = int(self.trainer.estimated_stepping_batches)
            sched = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=hp.lr, total_steps=max(total, 1)
            )
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        if hp.scheduler == "cosine":
            epochs = (
                self.trainer.max_epochs
                if self.trainer.max_epochs and self.trainer.max_epochs > 0
                else 10
            )
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
        else:
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=hp.step_size, gamma=hp.gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
