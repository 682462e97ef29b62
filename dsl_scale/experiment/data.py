"""The experiment's data: prepared once (train split for training, held-out val split for MAUVE references)."""

from __future__ import annotations

from pathlib import Path

from dsl_scale.core.files import atomic_directory
from dsl_scale.experiment.config import Experiment


def prepare_once(e: Experiment, out: Path) -> dict:
    """Prepare `e.data` into `out` unless a matching preparation is already there; staged, then renamed."""
    from dsl_scale.data.loader import read_manifest
    from dsl_scale.data.prepare import format_summary, prepare

    if (out / "manifest.json").is_file():
        manifest = read_manifest(str(out))
        wanted = {"source": e.data.source, "tokenizer": e.data.tokenizer, "seq_len": e.data.seq_len}
        found = {k: manifest.get(k) for k in wanted}
        if found != wanted:
            raise ValueError(f"{out} holds data prepared with {found}, the experiment wants {wanted}; "
                             "use another --out directory")
        return manifest
    with atomic_directory(out, exist_ok=True) as staging:  # replaces an interrupted attempt (no manifest)
        manifest = prepare(e.data.source, str(staging), e.data.seq_len, val_fraction=e.data.val_fraction,
                           tokenizer=e.data.tokenizer, progress=False)
    print(format_summary(manifest, str(out)), flush=True)
    return manifest
