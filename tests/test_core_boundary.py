"""The core (and the Python API on it) never imports Ray: importing them with ``import ray`` blocked works."""

import subprocess
import sys
import textwrap
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "alae_ray" / "core"


def test_core_imports_without_ray():
    modules = sorted(f"alae_ray.core.{p.stem}" for p in CORE.glob("*.py") if p.stem != "__init__")
    modules += ["alae_ray.api", "alae_ray.releases"]  # the Python API and the import run without Ray too
    assert "alae_ray.core.phases" in modules and "alae_ray.core.networks" in modules
    code = textwrap.dedent(f"""
        import sys, importlib
        class BlockRay:
            def find_spec(self, name, path=None, target=None):
                if name == "ray" or name.startswith("ray."):
                    raise ImportError("ray is blocked in the core")
        sys.meta_path.insert(0, BlockRay())
        for name in {modules!r}:
            importlib.import_module(name)
        assert not any(m == "ray" or m.startswith("ray.") for m in sys.modules), "ray was imported"
        print("ok", len({modules!r}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=CORE.parents[1])
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")
