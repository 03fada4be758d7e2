"""models: backbones by name, projection heads, the momentum queue."""

from ssl_cropmix.models.backbones import build_backbone, infer_feature_dim
from ssl_cropmix.models.heads import asym_moco_projection_head
from ssl_cropmix.models.queue import MomentumQueue

__all__ = ["MomentumQueue", "asym_moco_projection_head", "build_backbone", "infer_feature_dim"]
