from .configuration_maskgit_vqgan import MASKGIT_VQGAN_PRESETS, MaskGITVQGANConfig
from .modeling_maskgit_vqgan import (
    MaskGITVQGAN,
    MaskGITVQGANDecoderOutput,
    MaskGITVQGANEncoder,
    MaskGITVQGANEncoderOutput,
    MaskGITVQGANOutput,
    MaskGITVQGANPreTrainedModel,
    MaskGITVQGANQuantizer,
)
from .pixel_decoder import PixelDecoder, SamePadConv2d, VQGANResnetBlock, same_padding

__all__ = [
    "MASKGIT_VQGAN_PRESETS",
    "MaskGITVQGAN",
    "MaskGITVQGANConfig",
    "MaskGITVQGANDecoderOutput",
    "MaskGITVQGANEncoder",
    "MaskGITVQGANEncoderOutput",
    "MaskGITVQGANOutput",
    "MaskGITVQGANPreTrainedModel",
    "MaskGITVQGANQuantizer",
    "PixelDecoder",
    "SamePadConv2d",
    "VQGANResnetBlock",
    "same_padding",
]
