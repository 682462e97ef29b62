"""Names of everything in a run's `checkpoints/` directory, in one place.

    checkpoints/latest                       the tag to resume from (replaced atomically after a save)
    checkpoints/step_XXXXXXXX/               one tag: DeepSpeed's shards (file names below), or a
                                             consolidated, layout-free checkpoint (consolidated.py)
        meta.json                            {"step", "tp", "pp", "dp", "ema_sharded"}
        partitions_ppNN.json                 how tensor parallelism split each weight of stage NN
        ema_tpNN_ppNN_dpNNN.pt               EMA of what that rank holds
"""

from __future__ import annotations

from pathlib import Path

LATEST = "latest"
META = "meta.json"
TAG_PREFIX = "step_"


def tag_for(step: int) -> str:
    return f"{TAG_PREFIX}{step:08d}"


def read_latest(root: Path) -> str | None:
    """The tag `latest` names, or None when there is no checkpoint; an error when it dangles."""
    pointer = Path(root) / LATEST
    if not pointer.exists():
        return None
    tag = pointer.read_text().strip()
    if not (Path(root) / tag).is_dir():
        raise FileNotFoundError(f"{pointer} names checkpoint {tag!r}, but {Path(root) / tag} does not exist")
    return tag


def ema_name(tp_rank: int, pp_rank: int, dp_rank: int) -> str:
    return f"ema_tp{tp_rank:02d}_pp{pp_rank:02d}_dp{dp_rank:03d}.pt"


def partitions_name(pp_rank: int) -> str:
    return f"partitions_pp{pp_rank:02d}.json"


# DeepSpeed's own file names, per model-parallel rank mp = pp_rank · tp + tp_rank and DP rank dp.
def model_states_name(mp: int) -> str:
    return f"mp_rank_{mp:02d}_model_states.pt"


def zero3_model_states_name(dp: int, mp: int) -> str:
    return f"zero_pp_rank_{dp}_mp_rank_{mp:02d}_model_states.pt"


def optim_states_name(dp: int, mp: int) -> str:
    return f"zero_pp_rank_{dp}_mp_rank_{mp:02d}_optim_states.pt"
