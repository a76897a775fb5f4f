"""Multi-Scale U-Net (paper section III.A)."""

from __future__ import annotations

from torch import nn

from napari_msunet.models.base import SegmentationModel
from napari_msunet.models.blocks import MS_SCALES, MultiScaleBlock


class MSUNet(SegmentationModel):
    """MS U-Net: every encoder block starts with a three-scale convolution.

    The first convolution of each encoder block has three kernel sets at stride = dilation =
    1, 2 and 4; the half- and quarter-resolution outputs are upsampled bilinearly to the
    block's resolution and concatenated with the full-resolution set; a second convolution
    follows and a max-pool leads to the next block. The decoder is the plain U-Net decoder
    (up-convolution, concatenation with the skip, convolution). Every encoder width must be
    at least 3 (one channel per kernel set); widths not divisible by 3 give the remainder to
    the full-resolution set.
    """

    arch_name = "msunet"
    inner_stride = max(MS_SCALES)

    def make_encoder_block(self, c_in: int, c_out: int) -> nn.Module:
        """:class:`MultiScaleConv` then a plain convolution."""
        return MultiScaleBlock(c_in, c_out, self.config.norm, self.config.norm_groups)
