"""U-Net baseline (Ronneberger et al. 2015) on the shared encoder-decoder skeleton."""

from __future__ import annotations

from torch import nn

from napari_msunet.models.base import SegmentationModel
from napari_msunet.models.blocks import DoubleConv


class UNet(SegmentationModel):
    """U-Net: two 3×3 convolutions per encoder level, max-pool, mirrored decoder.

    Same depth, widths and decoder as :class:`~napari_msunet.models.msunet.MSUNet`, so it is
    the paper's baseline at equal size (section IV.A).
    """

    arch_name = "unet"

    def make_encoder_block(self, c_in: int, c_out: int) -> nn.Module:
        """Two :class:`ConvNormAct` layers."""
        return DoubleConv(c_in, c_out, self.config.norm, self.config.norm_groups)
