"""Style-mixing layer ranges from requests: a band name (coarse / middle / fine, see
``alae_ray.core.bands``) or explicit indices.

An explicit range is ``start:stop`` (half-open, like a Python slice: ``0:4`` is inputs 0, 1, 2, 3)
or a single index ``i``.
"""

from __future__ import annotations

from ..core.bands import BANDS, band_layers, band_levels, describe_bands  # noqa: F401  (re-exported)
from .inputs import InputError


def parse_layers(spec: str, num_levels: int) -> range:
    """A non-empty range of style inputs from a band name, ``start:stop`` or ``i``; InputError (422)."""
    style_layers = 2 * num_levels
    text = str(spec).strip().lower()
    if not text:
        raise InputError(f"'layers' is empty; use one of {', '.join(BANDS)}, start:stop or an index", 422)
    if text in BANDS:
        layers = band_layers(num_levels)[text]
        if not layers:
            raise InputError(f"the {text!r} band is empty for a model with {num_levels} level(s)", 422)
        return layers
    parts = text.split(":")
    if len(parts) > 2 or not all(p.strip().isdigit() for p in parts):
        raise InputError(f"'layers' must be one of {', '.join(BANDS)}, start:stop (e.g. 0:4) or an index, got {spec!r}", 422)
    start = int(parts[0])
    stop = int(parts[1]) if len(parts) == 2 else start + 1
    if not 0 <= start < stop <= style_layers:
        raise InputError(f"'layers' {spec!r} is outside the model's style inputs: need 0 <= start < stop <= {style_layers}", 422)
    return range(start, stop)
