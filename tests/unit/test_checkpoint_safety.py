"""Safe loading (no unpickling of code), clear errors for truncated files, and conversions that never leave a
half-written destination or touch an existing one."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from dsl_scale.checkpoint.consolidated import write_consolidated
from dsl_scale.checkpoint.convert import convert
from dsl_scale.checkpoint.readers import TensorSource
from dsl_scale.checkpoint.safe_load import OVERRIDE, torch_load
from dsl_scale.core.files import atomic_directory
from tests.launching import REPO, env


def consolidated(path, n: int = 4) -> None:
    tensors = {"model": {"vocab_embed.weight": torch.randn(8, n), "blocks.0.norm1.weight": torch.ones(n)},
               "ema": {"vocab_embed.weight": torch.randn(8, n)}}
    with atomic_directory(path) as tmp:
        write_consolidated(TensorSource(tensors, {"model": {"hidden": n}}, step=5), tmp)


def truncate(file, keep: float = 0.5) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * keep)])


def leftovers(parent) -> list[str]:
    return [p.name for p in parent.iterdir() if ".partial-" in p.name]


def test_truncated_torch_file_is_refused_naming_it(tmp_path):
    file = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": {"w": torch.randn(64, 64)}}, file)
    assert torch_load(file)["module"]["w"].shape == (64, 64)  # intact, it loads
    truncate(file)
    with pytest.raises(RuntimeError, match=f"{file}.*truncated or corrupt"):
        torch_load(file)
    file.write_bytes(b"")
    with pytest.raises(RuntimeError, match=f"{file} is empty"):
        torch_load(file)


class Settings:
    """Stands for any object a pickle can name (and so any code it can run on loading)."""

    def __init__(self, lr: float):
        self.lr = lr


def test_arbitrary_objects_are_not_unpickled_unless_overridden(tmp_path, monkeypatch):
    file = tmp_path / "sneaky.pt"
    torch.save({"w": torch.ones(2), "args": Settings(lr=1.0)}, file)
    with pytest.raises(PermissionError, match=f"{file}.*{OVERRIDE}=1"):
        torch_load(file)
    monkeypatch.setenv(OVERRIDE, "1")
    assert torch_load(file)["args"].lr == 1.0


def test_a_failed_conversion_leaves_no_destination(tmp_path):
    consolidated(tmp_path / "src")
    truncate(tmp_path / "src" / "ema.safetensors")
    with pytest.raises(RuntimeError, match="ema.safetensors.*truncated or corrupt"):
        convert(tmp_path / "src", tmp_path / "dst", "consolidated")
    assert not (tmp_path / "dst").exists() and not leftovers(tmp_path)


def test_an_existing_destination_is_never_touched(tmp_path):
    consolidated(tmp_path / "src")
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="already exists"):
        convert(tmp_path / "src", tmp_path / "dst", "consolidated")
    assert [p.name for p in (tmp_path / "dst").iterdir()] == ["mine.txt"]


def test_command_line_tools_report_problems_and_describe_checkpoints(tmp_path):
    consolidated(tmp_path / "src")
    tool = [sys.executable, str(REPO / "tools" / "inspect_checkpoint.py"), str(tmp_path / "src"), "--json"]
    described = json.loads(subprocess.run(tool, env=env(), capture_output=True, text=True, check=True).stdout)
    assert described["format"] == "consolidated" and described["step"] == 5
    assert described["parameters"] == 8 * 4 + 4 and described["contents"] == ["model", "ema"]
    assert described["tensors"]["vocab_embed.weight"] == {"dtype": "F32", "shape": [8, 4]}
    truncate(tmp_path / "src" / "model.safetensors", 0.3)
    convert_tool = [sys.executable, str(REPO / "tools" / "convert_checkpoint.py"), str(tmp_path / "src"),
                    str(tmp_path / "out"), "--to", "consolidated"]
    result = subprocess.run(convert_tool, env=env(), capture_output=True, text=True)
    assert result.returncode == 1 and "model.safetensors" in result.stderr and "truncated" in result.stderr
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)
