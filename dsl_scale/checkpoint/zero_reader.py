"""Full (unsharded) tensors of one of our DeepSpeed training checkpoints, at any TP × PP × ZeRO layout,
read in one process without DeepSpeed's runtime.

What each ZeRO stage leaves on disk (per model-parallel rank mp = pp_rank · tp + tp_rank):
- stage 0–2: `mp_rank_XX_model_states.pt` holds the rank's whole (TP-sharded) module;
- stage 3:   `zero_pp_rank_D_mp_rank_XX_model_states.pt` holds only buffers and `param_shapes`; the
  weights live in the optimizer files as one fp32 flat partition per DP rank, in which every
  parameter (in `param_shapes` order) takes ceil(numel / dp) elements, zero-padded on the last rank;
- optimizer moments: stage 0 in the model-states file (a torch optimizer state, in parameter order);
  stages 1–2 as one flat partition per DP rank with a (start, numel) address of every parameter's
  fragment (`param_slice_mappings`); stage 3 laid out like its weights.
Files are memory-mapped, so a reader holds little more than the tensors it returns (one stage at a time).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from dsl_scale.checkpoint import layout
from dsl_scale.checkpoint.safe_load import torch_load

MOMENTS = ("exp_avg", "exp_avg_sq")


def _flat_state(optim: dict) -> tuple[list[torch.Tensor], list[dict]]:
    """(fp32 weight flats, moment dicts) per parameter group of one optimizer file."""
    osd = optim["optimizer_state_dict"]
    if "fp32_flat_groups" in osd:  # stage 3
        base = osd["optimizer_state_dict"]["state"]
        return list(osd["fp32_flat_groups"]), [base.get(g, {}) for g in range(len(osd["fp32_flat_groups"]))]
    base = osd["base_optimizer_state"]["state"]
    groups = osd["single_partition_of_fp32_groups"]
    return list(groups), [base.get(g, {}) for g in range(len(groups))]


def _zero0_state(model_states: dict) -> dict:
    """Stage 0's torch optimizer state (by parameter index); in bf16 DeepSpeed's wrapper saves it one level down."""
    optimizer = model_states["optimizer"]
    return optimizer["optimizer_state_dict"]["state"] if "optimizer_state_dict" in optimizer else optimizer["state"]


def _shapes_of(model_states: dict) -> dict[str, torch.Size]:
    """Parameter name → full shape, from a DeepSpeed model-states file's `param_shapes` (one dict per group)."""
    shapes: dict = {}
    for group in model_states["param_shapes"]:
        shapes.update(group)
    return shapes


class TrainingCheckpoint:
    def __init__(self, tag_dir: str | Path):
        self.dir = Path(tag_dir)
        meta_file = self.dir / layout.META
        self.meta = json.loads(meta_file.read_text()) if meta_file.exists() else {"tp": 1, "pp": 1, "dp": 1}
        self.tp, self.pp, self.dp = int(self.meta["tp"]), int(self.meta["pp"]), int(self.meta.get("dp", 1))
        self.zero3 = (self.dir / self._z3_model_name(0, 0)).exists()
        first = self.dir / (self._z3_model_name(0, 0) if self.zero3 else self._model_name(0))
        states = torch_load(first)
        self.config: dict = states.get("config") or {}
        self.step = int(states.get("step", states.get("global_steps", 0)))
        self.lr_scheduler: dict | None = states.get("lr_scheduler")
        optim_file = self.dir / self._optim_name(0, 0)
        self.zero_stage = 3 if self.zero3 else (self._stage_of(optim_file) if optim_file.exists() else 0)
        self.has_optimizer = optim_file.exists() or states.get("optimizer") is not None
        self.has_ema = all((self.dir / self._ema_name(t, s, 0)).exists()
                           for t in range(self.tp) for s in range(self.pp))

    # file names --------------------------------------------------------------------------------------
    _model_name = staticmethod(layout.model_states_name)
    _z3_model_name = staticmethod(layout.zero3_model_states_name)
    _optim_name = staticmethod(layout.optim_states_name)
    _ema_name = staticmethod(layout.ema_name)

    def _stage_of(self, optim_file: Path) -> int:
        return int(torch_load(optim_file)["optimizer_state_dict"]["zero_stage"])

    def saved_dtype(self, name: str) -> str:
        """The dtype a tensor was saved in (ZeRO-3 keeps only its fp32 master copy)."""
        if self.zero3:
            return "float32"
        if not hasattr(self, "_dtypes"):
            self._dtypes = {}
            for mp in range(self.tp * self.pp):
                module = torch_load(self.dir / self._model_name(mp))["module"]
                self._dtypes.update({k: str(v.dtype).replace("torch.", "") for k, v in module.items()
                                     if torch.is_tensor(v)})
        return self._dtypes.get(name, "float32")

    def files(self) -> list[Path]:
        return sorted(p for p in self.dir.iterdir() if p.is_file())

    # reading -----------------------------------------------------------------------------------------
    def available(self) -> list[str]:
        return ["model"] + (["ema"] if self.has_ema else []) + (list(MOMENTS) if self.has_optimizer else [])

    def optimizer_step(self) -> int:
        """Adam's update count (bias correction), read from the moments."""
        mp = 0
        if self.zero_stage == 0:
            state = _zero0_state(torch_load(self.dir / self._model_name(mp)))
            return int(next(iter(state.values()))["step"]) if state else 0
        _, moments = _flat_state(torch_load(self.dir / self._optim_name(0, mp)))
        return int(moments[0]["step"]) if moments and "step" in moments[0] else 0

    def full(self, kind: str) -> dict[str, torch.Tensor]:
        """Every tensor of `kind` ('model' includes buffers) under its global name, fp32, TP merged."""
        if kind not in self.available():
            raise KeyError(f"{self.dir} holds no {kind!r} tensors (it has: {', '.join(self.available())})")
        merged: dict[str, torch.Tensor] = {}
        for stage in range(self.pp):
            merged.update(self.stage(stage, kind))
        return merged

    def stage(self, stage: int, kind: str) -> dict[str, torch.Tensor]:
        dims_file = self.dir / layout.partitions_name(stage)
        dims = json.loads(dims_file.read_text()) if self.tp > 1 else {}
        if self.tp > 1 and not dims_file.exists():
            raise FileNotFoundError(f"{dims_file} is missing: cannot tell how tensor parallelism split the weights")
        shards = [self._rank_tensors(stage * self.tp + t, t, stage, kind) for t in range(self.tp)]
        out = {}
        for name, value in shards[0].items():
            out[name] = torch.cat([s[name] for s in shards], dim=dims[name]) if name in dims else value
        return out

    def _rank_tensors(self, mp: int, tp_rank: int, stage: int, kind: str) -> dict[str, torch.Tensor]:
        if kind == "ema":
            if self.meta.get("ema_sharded"):
                shapes = self._param_shapes(mp)
                parts = [torch_load(self.dir / self._ema_name(tp_rank, stage, d)) for d in range(self.dp)]
                return {n: _unpartition([p[n] for p in parts], shape) for n, shape in shapes.items()}
            return {k: v.float() for k, v in torch_load(self.dir / self._ema_name(tp_rank, stage, 0)).items()}
        if self.zero_stage == 3:
            return self._zero3_tensors(mp, kind)
        if kind == "model":
            module = torch_load(self.dir / self._model_name(mp))["module"]
            return {k: v.float() for k, v in module.items() if torch.is_tensor(v)}
        if self.zero_stage == 0:
            states = torch_load(self.dir / self._model_name(mp))
            buffers = set(states.get("buffer_names") or [])
            names = [k for k, v in states["module"].items() if torch.is_tensor(v) and k not in buffers]
            state = _zero0_state(states)
            return {name: state[i][kind].float() for i, name in enumerate(names)}
        return self._zero12_moments(mp, kind)

    def _param_shapes(self, mp: int) -> dict[str, torch.Size]:
        file = self._z3_model_name(0, mp) if self.zero3 else self._model_name(mp)
        return _shapes_of(torch_load(self.dir / file))

    def _zero3_tensors(self, mp: int, kind: str) -> dict[str, torch.Tensor]:
        states = torch_load(self.dir / self._z3_model_name(0, mp))
        shapes = _shapes_of(states)
        flats = []
        for d in range(self.dp):
            weights, moments = _flat_state(torch_load(self.dir / self._optim_name(d, mp)))
            groups = weights if kind == "model" else [m[kind] for m in moments]
            flats.append(torch.cat([g.flatten() for g in groups]))
        out, offset = {}, 0
        for name, shape in shapes.items():
            numel = math.prod(shape)
            size = math.ceil(numel / self.dp)
            out[name] = _unpartition([f[offset:offset + size] for f in flats], shape)
            offset += size
        if kind == "model":  # buffers (rotary frequencies, DSL keys) are saved whole
            buffers = set(states.get("buffer_names") or [])
            out.update({k: v.float() for k, v in states["module"].items()
                        if torch.is_tensor(v) and v.numel() and k in buffers})
        return out

    def _zero12_moments(self, mp: int, kind: str) -> dict[str, torch.Tensor]:
        shapes = self._param_shapes(mp)
        pieces: dict[str, list[torch.Tensor]] = {name: [] for name in shapes}
        for d in range(self.dp):
            osd = torch_load(self.dir / self._optim_name(d, mp))["optimizer_state_dict"]
            _, moments = _flat_state({"optimizer_state_dict": osd})
            for group, mapping in enumerate(osd["param_slice_mappings"]):
                flat = moments[group][kind]
                for name, address in mapping.items():
                    pieces[name].append(flat[address.start:address.start + address.numel])
        return {n: torch.cat(p).view(shapes[n]).float() for n, p in pieces.items()}


def _unpartition(parts: list[torch.Tensor], shape) -> torch.Tensor:
    numel = math.prod(shape)
    return torch.cat([p.flatten() for p in parts])[:numel].view(tuple(shape)).float().clone()
