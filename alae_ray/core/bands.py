"""Style-mixing bands: the paper's coarse / middle / fine groups of G's style inputs.

G has two style inputs per resolution: inputs ``2k`` and ``2k + 1`` drive the ``4 * 2**k`` pixel
level. The paper's Figure 9 (after StyleGAN's Figure 3) names three bands by resolution:

    coarse  4x4 - 8x8        pose, face shape, glasses
    middle  16x16 - 32x32    facial features, hair style, eyes open or closed
    fine    64x64 - top      colour scheme and micro-structure

For a model whose top resolution is 64 or more these bands are used exactly. A smaller model has
too few levels for them (``fine`` would be empty), so the levels are split the same way in
spirit: ``coarse`` is the lowest level, ``fine`` the top level and ``middle`` everything between.
For the ``tiny`` preset (4x4 -> 32x32, 8 style inputs) that is coarse = 4x4 (inputs 0-1),
middle = 8x8-16x16 (inputs 2-5), fine = 32x32 (inputs 6-7). With fewer than three levels a band
can be empty; asking for an empty band is an error.
"""

from __future__ import annotations

BANDS = ("coarse", "middle", "fine")


def band_levels(num_levels: int) -> dict[str, range]:
    """Each band as a range of levels (level k is 4 * 2**k pixels)."""
    if num_levels >= 5:  # 64x64 or more: the paper's bands
        return {"coarse": range(0, 2), "middle": range(2, 4), "fine": range(4, num_levels)}
    if num_levels >= 3:
        return {"coarse": range(0, 1), "middle": range(1, num_levels - 1), "fine": range(num_levels - 1, num_levels)}
    # 4x4 or 8x8 models: no middle band
    return {"coarse": range(0, 1), "middle": range(1, 1), "fine": range(1, num_levels) if num_levels > 1 else range(0, 0)}


def band_layers(num_levels: int) -> dict[str, range]:
    """Each band as a range of style-input indices (two inputs per level)."""
    return {name: range(2 * lv.start, 2 * lv.stop) for name, lv in band_levels(num_levels).items()}


def describe_bands(num_levels: int) -> dict[str, dict]:
    """JSON-ready: for each band its style inputs and resolutions (empty bands included)."""
    out = {}
    for name, lv in band_levels(num_levels).items():
        res = [4 * 2**k for k in lv]
        span = "none" if not res else f"{res[0]}x{res[0]}" + (f"-{res[-1]}x{res[-1]}" if len(res) > 1 else "")
        out[name] = {"layers": [2 * lv.start, 2 * lv.stop], "resolutions": span}
    return out
