"""The smoke run's install plan (tools/gpu_smoke_checks.py plan): the wheelhouse's wheels are checked against what
stays on the machine before anything is installed, and a conflict stops tools/gpu_smoke.sh before any work,
naming the package, the version required and the version there."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

from tests.launching import REPO, env
from tests.unit.test_bench_all import load_tool


def wheel(folder: Path, name: str, version: str, *requires: str) -> Path:
    """A minimal wheel: only its METADATA, which is all the plan reads."""
    path = folder / f"{name}-{version}-py3-none-any.whl"
    meta = "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}-{version}.dist-info/METADATA",
                   f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{meta}")
    return path


def test_a_kept_package_too_old_for_a_wheel_is_a_conflict_naming_both_versions(tmp_path):
    checks = load_tool("gpu_smoke_checks")
    wheel(tmp_path, "tensorboard", "2.20.0", "protobuf>=6.31", "absl-py>=0.4")
    wheel(tmp_path, "protobuf", "6.31.1")
    wheel(tmp_path, "absl_py", "2.1.0")
    chosen, after, conflicts = checks.plan(tmp_path, {"protobuf": "4.25.3", "torch": "2.13.0"})
    assert [p.name.split("-")[0] for p in chosen] == ["absl_py", "tensorboard"]  # the machine's protobuf stays
    assert after["protobuf"] == "4.25.3" and after["tensorboard"] == "2.20.0"
    assert conflicts == ["tensorboard 2.20.0 needs protobuf>=6.31, but the machine's protobuf 4.25.3 is what would "
                         "be installed"]
    # the wheelhouse's own versions count for what it installs: transformers against its tokenizers
    wheel(tmp_path, "transformers", "4.57.6", "tokenizers<=0.23.0,>=0.22.0")
    wheel(tmp_path, "tokenizers", "0.21.0")
    _, _, conflicts = checks.plan(tmp_path, {"protobuf": "7.0.0", "tokenizers": "0.22.2"})
    assert conflicts == ["transformers 4.57.6 needs tokenizers<=0.23.0,>=0.22.0, but the wheelhouse's tokenizers "
                         "0.21.0 is what would be installed"]


def test_what_fits_is_installed_and_a_wheels_unknown_dependency_is_not_a_conflict(tmp_path):
    checks = load_tool("gpu_smoke_checks")
    wheel(tmp_path, "tensorboard", "2.20.0", "protobuf>=6.31", "grpcio>=1.48; extra == 'server'")
    chosen, _, conflicts = checks.plan(tmp_path, {"protobuf": "6.31.1"})
    assert conflicts == [] and [p.name for p in chosen] == ["tensorboard-2.20.0-py3-none-any.whl"]


def test_the_smoke_script_stops_before_any_work_on_a_conflict(tmp_path):
    installed = subprocess.run([str(REPO / ".venv/bin/python"), "-c",
                                "import importlib.metadata as m; print(m.version('protobuf'))"],
                               capture_output=True, text=True, check=True).stdout.strip()
    house = tmp_path / "wheelhouse"
    house.mkdir()
    wheel(house, "tensorboard", "9.0.0", "protobuf>=999")
    work = tmp_path / "work"
    result = subprocess.run(["bash", str(REPO / "tools" / "gpu_smoke.sh"), "--cpu", "--wheelhouse", str(house),
                             "--workdir", str(work), "--out", str(tmp_path / "out")],
                            env=env(), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert f"tensorboard 9.0.0 needs protobuf>=999, but the machine's protobuf {installed}" in result.stderr
    assert "nothing was installed" in result.stderr
    assert not (work / "install.log").exists() and not (work / "data").exists()
    summary = (tmp_path / "out" / "summary.json").read_text()
    assert '"step": "install"' in summary and '"status": "failed"' in summary and '"passed": false' in summary
