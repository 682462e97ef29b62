"""What changed between the config a checkpoint was saved with and the config that resumes it.

A resume replays exactly what an uninterrupted run would have done only when the objective, the model's shape
and sequence length, the seed, the global batch and the data are the same: a change there is refused (unless
train.allow_config_change=true). Anything else (steps, logging and save cadence, the layout, data workers, ...)
is allowed and logged.
"""

from __future__ import annotations

from typing import Any

# Keys (or prefixes ending in ".") whose change breaks exact resume.
REFUSED = ("objective.", "model.hidden", "model.n_blocks", "model.n_heads", "model.cond_dim", "model.mlp_ratio",
           "model.time_conditioning", "model.seq_len", "train.seed", "train.global_batch",
           "data.path", "data.source", "data.format", "data.tokenizer", "data.remote")


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}{key}."))
    return out


def breaks_resume(key: str) -> bool:
    return any(key.startswith(r) if r.endswith(".") else key == r for r in REFUSED)


def config_changes(saved: dict, new: dict) -> tuple[list[str], list[str]]:
    """(refused changes, allowed changes), each 'key: old → new', in key order. Both configs are our schema's
    dicts; a saved config from before a key existed is compared with that key's value only when it has it."""
    old, now = flatten(_normalised(saved)), flatten(_normalised(new))
    refused, allowed = [], []
    for key in sorted(set(old) | set(now)):
        if key not in old:  # a key newer than the checkpoint: nothing to compare with
            continue
        before, after = old[key], now.get(key, "(absent)")
        if _same(before, after):
            continue
        (refused if breaks_resume(key) else allowed).append(f"{key}: {before!r} → {after!r}")
    return refused, allowed


def _normalised(config: dict) -> dict:
    """The saved objective as its own schema has it (older runs saved every objective's fields)."""
    try:
        import dataclasses

        from dsl_scale.config import config_from_saved

        return dataclasses.asdict(config_from_saved(config))
    except Exception:  # a config this schema cannot type: compare it as saved
        return dict(config)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b
