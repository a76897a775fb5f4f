"""Attention U-Net (Oktay et al. 2018) on the shared encoder-decoder skeleton."""

from __future__ import annotations

from torch import nn

from napari_msunet.models.base import SegmentationModel
from napari_msunet.models.blocks import DecoderBlock, DoubleConv


class AttentionUNet(SegmentationModel):
    """U-Net whose skip connections pass through additive attention gates.

    Encoder as :class:`~napari_msunet.models.unet.UNet`; each decoder level gates the skip
    features with an :class:`~napari_msunet.models.blocks.AttentionGate` driven by the
    up-convolved decoder features before concatenating them (the paper's second baseline).
    """

    arch_name = "attention_unet"

    def make_encoder_block(self, c_in: int, c_out: int) -> nn.Module:
        """Two :class:`ConvNormAct` layers, as in U-Net."""
        return DoubleConv(c_in, c_out, self.config.norm, self.config.norm_groups)

    def make_decoder_block(self, c_below: int, c_skip: int) -> nn.Module:
        """Decoder block with an attention gate on the skip."""
        cfg = self.config
        return DecoderBlock(
            c_below, c_skip, cfg.decoder_convs, cfg.norm, cfg.norm_groups, attention=True
        )
