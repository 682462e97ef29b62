"""Load a checkpoint, sample in batches, write `samples.jsonl` and its settings sidecar."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from dsl_scale.checkpoint_io.inference import load_for_inference
from dsl_scale.parallel.topology import init_process_groups, set_cpu_threads
from dsl_scale.sampling.config import SampleConfig
from dsl_scale.sampling.generate import sample_mdlm

SAMPLERS = ("mdlm",)


def run_sampling(cfg: SampleConfig) -> None:
    if cfg.sampler not in SAMPLERS:
        raise ValueError(f"sampler={cfg.sampler!r} is not one of {SAMPLERS}")
    set_cpu_threads()
    started = time.time()
    init_process_groups(1, 1)
    loaded = load_for_inference(cfg.checkpoint, cfg.weights)
    model, train_cfg, tokenizer = loaded.model, loaded.train_config, loaded.tokenizer
    tag_dir, which = loaded.checkpoint_dir, loaded.weights
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
