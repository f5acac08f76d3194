"""Evaluation: FID (generation, reconstruction), PPL in Z and W, LPIPS, the paper's MNIST protocol.

Importing this package imports neither Ray nor the feature networks; ``alae_ray.eval.distributed``
is the only module that imports Ray.
"""

from ..metrics.frechet import FeatureSums, feature_statistics, frechet_distance, frechet_distance_to_features
from .ppl import filtered_mean, lerp, perceptual_path_length, slerp
from .real_images import iter_real_images

__all__ = ["FeatureSums", "feature_statistics", "filtered_mean", "frechet_distance", "frechet_distance_to_features",
           "iter_real_images", "lerp", "perceptual_path_length", "slerp"]
