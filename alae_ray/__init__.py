"""alae-ray: Adversarial Latent Autoencoders (Pidhorskyi et al., CVPR 2020), trained and served on Ray.

``alae_ray.load(checkpoint)`` gives a model for notebooks (see ``alae_ray.api``); the command line is
``alae-ray``. Importing this package loads neither torch nor Ray.
"""

__all__ = ["load"]


def load(checkpoint, *, device="auto", level=None, ema=True):
    """An inference model (``alae_ray.api.Model``) from a checkpoint or run directory, local or s3://."""
    from .api import load as _load

    return _load(checkpoint, device=device, level=level, ema=ema)
