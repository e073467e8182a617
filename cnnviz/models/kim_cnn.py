"""Kim's sentence-classification CNN (Kim, 2014)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from cnnviz.models._base import (
    InputCheckMixin,
    check_choice,
    check_positive_int,
    check_probability,
)

__all__ = ["KimCNN"]

_SIZES = (64, 32, 128, 256)
_WINDOWS = (3, 4, 5)


class KimCNN(InputCheckMixin, nn.Module):
    """CNN-rand/static of Kim (2014): embedding, 1-D convs of widths 3/4/5, max-over-time.

    Input: token ids, a ``LongTensor`` of shape ``(N, L)`` (canonical ``L = input_size = 64``;
    id 0 is padding). Layers::

        embedding                          (N, L, embed_dim), then transposed to (N, embed_dim, L)
        branches.window{k}.conv            num_maps @ width k (k = 3, 4, 5)  -> (N, 100, L - k + 1)
        branches.window{k}.relu
        branches.window{k}.pool            AdaptiveMaxPool1d(1): max over time -> (N, 100, 1)
        (concatenate, flatten)             (N, 300)
        dropout                            p = 0.5
        fc                                 (N, num_classes)

    Max-over-time pooling makes the model accept any length ``L >= 5`` (the widest window);
    ``input_size`` only records the length it is built for (``expected_input_shape``). The
    paper's l2-norm constraint on ``fc`` weights is left to the optimiser. ``embed_dim`` may be
    smaller than the paper's 300 (word2vec) for quick CPU runs; ``input_size=32`` is the small
    variant (same layers).

    Args:
        vocab_size: Number of token ids (10,000).
        embed_dim: Embedding size (300).
        input_size: Sequence length: 64 (canonical), 32, 128 or 256.
        num_classes: Number of output logits (2).
        num_maps: Feature maps per window width (100).
        dropout: Dropout probability before ``fc`` (0.5).

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If an argument is out of range or ``input_size`` is not supported.

    Example:
        >>> model = KimCNN(vocab_size=100, embed_dim=16)
        >>> model(torch.zeros(2, 64, dtype=torch.long)).shape
        torch.Size([2, 2])
    """

    def __init__(
        self,
        vocab_size: int = 10_000,
        embed_dim: int = 300,
        input_size: int = 64,
        num_classes: int = 2,
        num_maps: int = 100,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        owner = "kim_cnn"
        check_positive_int(owner, "vocab_size", vocab_size)
        check_positive_int(owner, "embed_dim", embed_dim)
        check_positive_int(owner, "input_size", input_size)
        check_choice(owner, "input_size", input_size, _SIZES)
        check_positive_int(owner, "num_classes", num_classes)
        check_positive_int(owner, "num_maps", num_maps)
        check_probability(owner, "dropout", dropout)
        self.model_name = owner
        self.expected_input_shape = (input_size,)
        self.min_input_size = max(_WINDOWS)
        self.supported_input_sizes = _SIZES
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.branches = nn.ModuleDict(
            {
                f"window{k}": nn.Sequential(
                    OrderedDict(
                        conv=nn.Conv1d(embed_dim, num_maps, kernel_size=k),
                        relu=nn.ReLU(),
                        pool=nn.AdaptiveMaxPool1d(1),
                    )
                )
                for k in _WINDOWS
            }
        )
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(num_maps * len(_WINDOWS), num_classes)

    def check_input(self, x: Any) -> None:
        """Raise unless ``x`` is an integer tensor of token ids of shape ``(N, L)``, L >= 5.

        Ids are range-checked only for CPU tensors (a check on GPU would synchronise).

        Raises:
            TypeError: If ``x`` is not a tensor or not of an integer dtype.
            ValueError: If its rank or length does not fit, or an id is outside
                ``[0, vocab_size)``.
        """
        if self._skip_input_check(x):
            return
        built = self.expected_input_shape[0]
        shape = f"(N, L) with L >= {self.min_input_size} (built for (N, {built}))"
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"kim_cnn expects a LongTensor of token ids {shape}; got {type(x).__name__}."
            )
        if x.dtype not in (torch.int64, torch.int32):
            raise TypeError(
                f"kim_cnn expects a LongTensor of token ids {shape}; got dtype {x.dtype}. "
                "Tokenise the text to integer ids (x.long())."
            )
        if x.dim() != 2 or x.shape[1] < self.min_input_size:
            got = "(" + ", ".join(str(d) for d in x.shape) + ")"
            raise ValueError(f"kim_cnn expects input of shape {shape}; got {got}.")
        if x.device.type == "cpu" and x.numel() and (x.min() < 0 or x.max() >= self.vocab_size):
            raise ValueError(
                f"kim_cnn: token ids must lie in [0, {self.vocab_size}) (`vocab_size`); got ids "
                f"in [{int(x.min())}, {int(x.max())}]. Build the model with a larger `vocab_size`."
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``(N, num_classes)`` for token ids ``x`` of shape ``(N, L)``."""
        self.check_input(x)
        emb = self.embedding(x).transpose(1, 2)
        pooled = [branch(emb) for branch in self.branches.values()]
        features = torch.cat(pooled, dim=1).flatten(1)
        return self.fc(self.dropout(features))
