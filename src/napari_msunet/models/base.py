"""The encoder-decoder skeleton the three networks share, and explicit padding helpers.

U-Net, MS U-Net and Attention U-Net differ only in their encoder block or in how the decoder
uses the skip connection, so they subclass :class:`SegmentationModel` and override one factory
method each. Everything else (depth, widths, pooling, decoder, head, input checks) is the same,
which keeps comparisons between them fair.
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from napari_msunet.errors import ConfigError, InputShapeError
from napari_msunet.models.blocks import DecoderBlock
from napari_msunet.models.config import ModelConfig


def pad_to_multiple(
    x: Tensor, multiple: int, mode: str = "reflect"
) -> tuple[Tensor, tuple[int, int]]:
    """Pad an ``(N, C, H, W)`` tensor at the bottom and right to multiples of ``multiple``.

    Padding only at the far edges keeps pixel ``(0, 0)`` where it was, so the model's
    downsampling grid stays aligned with the image. ``reflect`` needs the pad to be smaller
    than the image; smaller images fall back to ``replicate``.

    Returns
    -------
    padded, (h, w)
        The padded tensor and the original height and width, for :func:`crop_to`.
    """
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return x, (h, w)
    if mode == "reflect" and (ph >= h or pw >= w):
        mode = "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), (h, w)


def crop_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Crop the last two dimensions back to ``size`` (undoes :func:`pad_to_multiple`)."""
    return x[..., : size[0], : size[1]]


class SegmentationModel(nn.Module):
    """Encoder-decoder segmentation network built from a :class:`ModelConfig`.

    ``forward`` maps ``(N, in_channels, H, W)`` to logits ``(N, n_classes, H, W)``. ``H`` and
    ``W`` must be multiples of :attr:`downsampling_factor`, or ``pad=True`` pads them
    (reflect, bottom/right) and crops the logits back.

    Subclasses set :attr:`arch_name` and override :meth:`make_encoder_block` and/or
    :meth:`make_decoder_block`.
    """

    arch_name: ClassVar[str] = "base"
    #: Extra stride inside the deepest encoder block, beyond the max-pools (4 for MS U-Net).
    inner_stride: ClassVar[int] = 1

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        if config is None:
            config = ModelConfig()
        if not isinstance(config, ModelConfig):
            raise ConfigError(f"config must be a ModelConfig, got {type(config).__name__}")
        self.config = config
        w = config.widths
        c_in = (config.in_channels, *w[:-1])
        self.encoders = nn.ModuleList(
            self.make_encoder_block(a, b) for a, b in zip(c_in, w, strict=True)
        )
        self.pool = nn.MaxPool2d(2)
        self.decoders = nn.ModuleList(
            self.make_decoder_block(w[level + 1], w[level])
            for level in reversed(range(config.n_pools))
        )
        self.head = nn.Conv2d(w[0], config.n_classes, 1)

    def make_encoder_block(self, c_in: int, c_out: int) -> nn.Module:
        """Encoder block of one level; keeps the spatial size."""
        raise NotImplementedError

    def make_decoder_block(self, c_below: int, c_skip: int) -> nn.Module:
        """Decoder block of one level: plain up-convolution, concatenation, convolution."""
        cfg = self.config
        return DecoderBlock(c_below, c_skip, cfg.decoder_convs, cfg.norm, cfg.norm_groups)

    @property
    def downsampling_factor(self) -> int:
        """``2 ** n_pools``: input height and width must be multiples of this."""
        return self.config.downsampling_factor

    @property
    def alignment(self) -> int:
        """Shift period of the network, in input pixels.

        Shifting the input by a multiple of this shifts the output by the same amount (away
        from the borders), so tile offsets must be multiples of it for tiled inference to
        equal whole-image inference. It is :attr:`downsampling_factor` for U-Net and
        Attention U-Net, and 4× that for MS U-Net, whose deepest block has a stride-4 branch.
        """
        return self.downsampling_factor * self.inner_stride

    @property
    def receptive_radius(self) -> int:
        """Context (pixels, each side) that a tile aligned to :attr:`alignment` needs so that
        every output pixel sees its whole receptive field; measured once per config from input
        gradients (see :func:`~napari_msunet.models.receptive_field.measure_receptive_radius`)
        and cached."""
        from napari_msunet.models.receptive_field import measure_receptive_radius

        return measure_receptive_radius(self)

    def check_input(self, x: Tensor, *, pad: bool = False) -> None:
        """Raise :class:`InputShapeError` unless ``x`` is a batch this model can process."""
        cfg = self.config
        if x.ndim != 4:
            raise InputShapeError(
                f"{self.arch_name} expects a 4-D (N, C, H, W) tensor, got shape {tuple(x.shape)}"
            )
        if x.shape[1] != cfg.in_channels:
            raise InputShapeError(
                f"{self.arch_name} expects {cfg.in_channels} input channels, got {x.shape[1]} "
                f"(shape {tuple(x.shape)}); is the image channels-first?"
            )
        h, w = x.shape[-2:]
        f = self.downsampling_factor
        if not pad and (h % f or w % f or h == 0 or w == 0):
            raise InputShapeError(
                f"{self.arch_name} input size {h}×{w} is not a positive multiple of its "
                f"downsampling factor {f}; use tiles whose sides are multiples of {f}, or pass "
                f"pad=True to pad (reflect) and crop back"
            )

    def forward(self, x: Tensor, *, pad: bool = False) -> Tensor:
        """Logits ``(N, n_classes, H, W)`` for an image batch ``(N, in_channels, H, W)``."""
        self.check_input(x, pad=pad)
        if pad:
            x, size = pad_to_multiple(x, self.downsampling_factor)
            return crop_to(self._forward(x), size)
        return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        skips = []
        for i, encoder in enumerate(self.encoders):
            if i:
                x = self.pool(x)
            x = encoder(x)
            skips.append(x)
        x = skips.pop()
        for decoder in self.decoders:
            x = decoder(x, skips.pop())
        return self.head(x)

    def extra_repr(self) -> str:
        return f"arch={self.arch_name!r}, config={self.config}"
