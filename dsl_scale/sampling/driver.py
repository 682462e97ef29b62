"""Load a checkpoint, sample in batches, write `samples.jsonl` and its settings sidecar."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from dsl_scale.checkpoint_io.deepspeed_format import (
    load_model_weights,
    load_training_config,
    resolve_checkpoint,
)
from dsl_scale.config import Config, SampleConfig
from dsl_scale.parallel.topology import Topology, init_process_groups, set_cpu_threads
from dsl_scale.sampling.generate import sample_mdlm
from dsl_scale.tokenizer import get_tokenizer

SAMPLERS = ("mdlm",)


def load_model(checkpoint: str, weights: str):
    """The DiT of a checkpoint in eval mode, at TP=1 (for one process)."""
    from omegaconf import OmegaConf

    from dsl_scale.train.trainer import build_model

    tag_dir = resolve_checkpoint(checkpoint)
    train_cfg: Config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config),
                                                            load_training_config(tag_dir)))
    tokenizer = get_tokenizer(train_cfg.data.tokenizer)
    topo = init_process_groups(1, 1)
    model = build_model(train_cfg, tokenizer.vocab_size, Topology(**{**topo.__dict__, "tp": 1, "pp": 1}))
    state, which = load_model_weights(tag_dir, weights)
    model.load_state_dict(state, strict=True)
    return model.eval(), train_cfg, tokenizer, tag_dir, which


def run_sampling(cfg: SampleConfig) -> None:
    if cfg.sampler not in SAMPLERS:
        raise ValueError(f"sampler={cfg.sampler!r} is not one of {SAMPLERS}")
    set_cpu_threads()
    started = time.time()
    model, train_cfg, tokenizer, tag_dir, which = load_model(cfg.checkpoint, cfg.weights)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    records = []
    for first in range(0, cfg.num_samples, cfg.batch_size):
        indices = list(range(first, min(first + cfg.batch_size, cfg.num_samples)))
        result = sample_mdlm(model, indices, train_cfg.model.seq_len, cfg.steps, tokenizer.mask_id,
                             cfg.seed, cfg.top_p)
        for i, tokens, nfe in zip(indices, result.tokens.tolist(), result.nfe):
            records.append({"index": i, "tokens": tokens, "text": tokenizer.decode(tokens), "nfe": nfe})
    with open(out, "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    settings = {
        **dataclasses.asdict(cfg), "checkpoint_dir": str(tag_dir), "weights_loaded": which,
        "seq_len": train_cfg.model.seq_len, "mean_nfe": sum(r["nfe"] for r in records) / max(len(records), 1),
        "wall_time_s": time.time() - started,
    }
    Path(f"{out}.settings.json").write_text(json.dumps(settings, indent=2))
    print(f"[dsl_scale] wrote {len(records)} samples to {out} (mean NFE {settings['mean_nfe']:.1f}, "
          f"{which} weights, {settings['wall_time_s']:.1f} s)")
    for record in records[: cfg.print_samples]:
        print(f"--- sample {record['index']} (nfe {record['nfe']}) ---\n{record['text']}")
