"""One set of versions: every package pinned in more than one of the images, the set-up script, the GPU wheelhouse
and the constraints file is pinned to the same version in all of them, and the constraints leave torch to each
image. torch is a stated matrix: the CPU image, tools/setup.sh (the tests, CI) and the GPU image share one version;
the wheelhouse targets the lent GPU machine, which keeps its own CUDA torch (LENT_MACHINE_TORCH, in
docs/clusters.md too), so every wheel in it must accept that one."""

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


LENT_MACHINE_TORCH = "2.11.0"
WHEELHOUSE = "tools/gpu_wheelhouse.sh"


def test_every_file_pins_torch_to_its_row_of_the_matrix():
    torch_pins = pins()["torch"]
    assert set(torch_pins) == set(FILES) - {"docker/constraints.txt"}, dict(torch_pins)
    assert torch_pins.pop(WHEELHOUSE) == {LENT_MACHINE_TORCH}, "the wheelhouse must target the lent machine's torch"
    versions = {v for found in torch_pins.values() for v in found}
    assert len(versions) == 1, f"torch pinned to {dict(torch_pins)}: make them agree"
    assert f"torch {LENT_MACHINE_TORCH}" in (REPO / "docs/clusters.md").read_text(), "docs/clusters.md states it"


def test_no_package_is_pinned_to_two_versions():
    found = pins()
    found["torch"].pop(WHEELHOUSE)  # the matrix's other row, checked above
    disagree = {package: {f: sorted(v) for f, v in files.items()}
                for package, files in found.items() if len({v for vs in files.values() for v in vs}) > 1}
    assert not disagree, f"packages pinned to different versions: {disagree}"
