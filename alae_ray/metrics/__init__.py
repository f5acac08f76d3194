"""The metric networks and statistics that train, eval, serve and the judges share: Inception and
LPIPS-VGG16 (``networks``: loaded from local weight files, never executed from a pickle) and
Fréchet distances over feature statistics (``frechet``). A leaf: it imports nothing of alae_ray."""
