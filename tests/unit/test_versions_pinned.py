"""One set of versions: every package pinned in more than one of the images, the set-up script, the GPU wheelhouse
and the constraints file is pinned to the same version in all of them (torch above all: the CPU image and
tools/setup.sh run the tests with it, the GPU image and the wheelhouse's target must be the same), and the
constraints leave torch to each image."""

from __future__ import annotations

import re
from collections import defaultdict

from tests.launching import REPO

FILES = ("docker/Dockerfile", "docker/Dockerfile.cpu", "tools/setup.sh", "tools/gpu_wheelhouse.sh",
         "docker/constraints.txt")
PIN = re.compile(r"(?<![\w.-])([A-Za-z][\w.-]*)==([0-9][\w.+!-]*)")
# version defaults that are not written as name==version
TORCH_DEFAULTS = {
    "docker/Dockerfile": re.compile(r"ARG TORCH_VERSION=([0-9][\w.+-]*)"),
    "tools/gpu_wheelhouse.sh": re.compile(r"TORCH_VERSION=\$\{DSL_WHEELHOUSE_TORCH:-([0-9][\w.+-]*)\}"),
}


def pins() -> dict[str, dict[str, set[str]]]:
    """name → file → versions pinned there."""
    found: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for name in FILES:
        text = (REPO / name).read_text()
        for package, version in PIN.findall(text):
            if "$" not in version:
                found[package.lower().replace("_", "-")][name].add(version)
        if name in TORCH_DEFAULTS:
            match = TORCH_DEFAULTS[name].search(text)
            assert match, f"{name}: no torch version default found (its pattern in this test needs updating)"
            found["torch"][name].add(match.group(1))
    return found


def test_every_file_pins_torch_to_one_version():
    torch_pins = pins()["torch"]
    assert set(torch_pins) == set(FILES) - {"docker/constraints.txt"}, dict(torch_pins)
    versions = {v for found in torch_pins.values() for v in found}
    assert len(versions) == 1, f"torch pinned to {dict(torch_pins)}: make them agree"


def test_no_package_is_pinned_to_two_versions():
    disagree = {package: {f: sorted(v) for f, v in files.items()}
                for package, files in pins().items() if len({v for vs in files.values() for v in vs}) > 1}
    assert not disagree, f"packages pinned to different versions: {disagree}"
