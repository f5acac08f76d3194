"""alae_ray.core: ALAE in pure PyTorch (never imports Ray).

Glossary (paper notation):
    z      prior sample, N(0, I), [N, L]
    w      latent code, [N, L]; ws: per-style-input codes, [N, S, L]
    F      mapping network z -> w            (networks.MappingF)
    G      generator w -> x                  (networks.Generator / MLPGenerator)
    E      encoder x -> w                    (networks.Encoder / MLPEncoder)
    D      discriminator on w -> logit       (networks.DiscriminatorD)
    level  resolution index, 4 * 2**level pixels (the authors' "lod")
    alpha  fade-in weight of the newest level, 0 -> 1
    kimg   thousands of images seen (global, across workers)
"""
