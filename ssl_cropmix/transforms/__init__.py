"""CropMix transform family as torchvision v2 transforms (see docs/transforms.md)."""

from ssl_cropmix.transforms.cropmix import CropBox, CropMix, CropMixParams, MixStep, contrastive_cropmix
from ssl_cropmix.transforms.resizemix import ResizeMix
from ssl_cropmix.transforms.scalemix import SCALEMIX_SETTINGS, ScaleMix

__all__ = [
    "CropBox",
    "CropMix",
    "CropMixParams",
    "MixStep",
    "ResizeMix",
    "SCALEMIX_SETTINGS",
    "ScaleMix",
    "contrastive_cropmix",
]
