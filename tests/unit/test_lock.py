"""The lock (requirements-lock.txt) agrees with pyproject.toml's ranges, keeps the chosen torch pair,
is past the known CVEs, and is what the test environment holds (docs/install.md)."""

from __future__ import annotations

import re
import sys
import sysconfig
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]

# The newest vulnerable release of each package whose fix the code relies on (docs/install.md).
VULNERABLE = {
    "torch": "2.5.1",  # CVE-2025-32434: weights_only=True loads could execute code (the authors' importer)
    "pillow": "10.0.0",  # CVE-2023-4863: libwebp heap overflow (WebP uploads are decoded)
    "python-multipart": "0.0.17",  # CVE-2024-53981: a denial of service on multipart uploads
}


def locked() -> dict[str, Version]:
    pins = re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", (ROOT / "requirements-lock.txt").read_text(), re.MULTILINE)
    assert pins, "requirements-lock.txt holds no pins"
    return {canonicalize_name(name): Version(version) for name, version in pins}


def direct_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]


def test_every_direct_requirement_is_locked_within_its_range():
    pins = locked()
    for req in direct_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is not in requirements-lock.txt: run bash scripts/lock.sh"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"the lock's {name}=={pins[name]} is outside pyproject's {req}: run bash scripts/lock.sh"


def test_the_lock_holds_the_chosen_torch_pair():
    pins = locked()
    pair = re.findall(r"^(torch|torchvision)==(\S+)", (ROOT / "scripts/torch-pair.txt").read_text(), re.MULTILINE)
    assert len(pair) == 2
    for name, version in pair:
        assert pins[name] == Version(version), f"lock has {name}=={pins[name]}, scripts/torch-pair.txt {version}"


@pytest.mark.parametrize("name", sorted(VULNERABLE))
def test_neither_the_ranges_nor_the_lock_admit_a_vulnerable_release(name):
    bad = Version(VULNERABLE[name])
    (req,) = [r for r in direct_requirements() if canonicalize_name(r.name) == name]
    assert not req.specifier.contains(bad), f"pyproject's {req} admits {name} {bad}"
    assert locked()[name] > bad


def test_this_environment_is_the_locked_one():
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        pytest.skip(f"running in {sys.prefix}, not the project's .venv that scripts/install.sh makes")
    wrong = []
    for name, version in locked().items():
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            wrong.append(f"{name} (locked {version}) is not installed")
            continue
        if installed.public != version.public:  # torch's wheels carry a local label (+cu130)
            wrong.append(f"{name} is {installed}, locked {version}")
    # Only site-packages itself: importing Ray puts the packages vendored in its wheel on sys.path.
    site = list({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
    extra = {canonicalize_name(d.metadata["Name"]) for d in metadata.distributions(path=site)} - set(locked())
    wrong += [f"{name} is installed but not locked" for name in sorted(extra - {"pip", "alae-ray"})]
    assert not wrong, "the environment differs from requirements-lock.txt (run bash scripts/install.sh): " \
                      + "; ".join(wrong)
