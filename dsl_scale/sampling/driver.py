"""Distributed sampling: every DP rank loads the model onto its compute device, takes its share of the
batches not yet written, and appends finished batches to its part file; rank 0 merges them into `out`.

Which rank draws a sample does not matter: its randomness comes from (seed, index) only. Batches are fixed
blocks of `batch_size` consecutive indices, whatever the number of ranks and however often the job was
resumed (a block cut by a kill is redone whole; only its missing samples are written), so with batched
forwards (sampling/denoiser.py), where logits can depend in their last bits on the batch, a sample has the
same batch-mates in every run with the same batch_size.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch.distributed as dist
from tqdm import tqdm

from dsl_scale.checkpoint.inference import load_for_inference
from dsl_scale.parallel.topology import init_process_groups, set_cpu_threads
from dsl_scale.sampling import records
from dsl_scale.sampling.config import SampleConfig, validate_sample_config
from dsl_scale.sampling.denoiser import ModelDenoiser
from dsl_scale.sampling.registry import check_model_fits, get_sampler, sampler_names


def run_sampling(cfg: SampleConfig) -> None:
    validate_sample_config(cfg, sampler_names())
    set_cpu_threads()
    started = time.time()
    topo = init_process_groups(1, 1)  # DP only: every rank holds the whole model
    loaded = load_for_inference(cfg.checkpoint, cfg.weights, cfg.precision)
    model, tokenizer, seq_len = loaded.model, loaded.tokenizer, loaded.train_config.model.seq_len
    check_model_fits(cfg.sampler.name, model, cfg.checkpoint, getattr(cfg.sampler, "visible_snr", None))
    denoise = ModelDenoiser(model, cfg.batch_invariant)
    out = Path(cfg.out)
    settings = {
        **dataclasses.asdict(cfg), "checkpoint_dir": str(Path(loaded.checkpoint_dir).resolve()),
        "weights_loaded": loaded.weights, "seq_len": seq_len, "world_size": topo.world_size,
        "tokenizer": tokenizer.name, "batch_invariant": denoise.batch_invariant,  # resolved, like these two:
        "precision": loaded.precision, "device": loaded.device.type,
    }
    done = _agree_on_done(out, settings, topo.rank)
    todo = [i for i in range(cfg.num_samples) if i not in done]
    if topo.rank == 0 and done:
        print(f"[dsl_scale] resuming {out}: {len(done)} samples already written, {len(todo)} to go")

    sampler = get_sampler(cfg.sampler.name)
    writer = records.PartWriter(out, topo.rank)
    bar = tqdm(total=len(todo), disable=topo.rank != 0, desc=f"sampling ({topo.world_size} ranks, "
               f"{loaded.device.type} {loaded.precision})", unit="sample", mininterval=2.0)
    for batch in my_batches(cfg.num_samples, cfg.batch_size, done, topo.rank, topo.world_size):
        result = sampler(denoise, batch, seq_len, cfg.steps, tokenizer.mask_id, cfg.seed, cfg.sampler,
                         cfg.top_p)
        remasks = result.remasks or [[] for _ in batch]
        missing = [(i, tokens, nfe, events) for i, tokens, nfe, events in zip(batch, result.tokens.tolist(),
                                                                               result.nfe, remasks) if i not in done]
        # remasks: every realised remask [step, position, token sent back to [MASK]] (the per-step trace)
        writer.write([{"index": i, "tokens": tokens, "text": tokenizer.decode(tokens), "nfe": nfe, "remasks": events}
                      for i, tokens, nfe, events in missing])
        bar.update(len(missing) * topo.world_size)  # rank 0's pace stands for everyone's
    bar.close()
    dist.barrier()
    if topo.rank == 0:
        _finish(cfg, out, settings, started, resumed=len(done))


def my_batches(num_samples: int, batch_size: int, done: set[int], rank: int, world_size: int) -> list[list[int]]:
    """This rank's share of the blocks [k·batch_size, (k + 1)·batch_size) that still miss a sample."""
    blocks = [list(range(first, min(first + batch_size, num_samples)))
              for first in range(0, num_samples, batch_size)]
    return [b for b in blocks if not done.issuperset(b)][rank::world_size]


def _agree_on_done(out: Path, settings: dict, rank: int) -> set[int]:
    """Rank 0 checks and repairs what is on disk; every rank gets the same set of finished indices."""
    payload: list = [None]
    if rank == 0:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            records.check_resumable(out, settings)
            payload[0] = sorted(records.collect(out, repair=True))
            records.settings_path(out).write_text(json.dumps({**settings, "status": "running"}, indent=2))
        except (ValueError, OSError) as err:
            payload[0] = err
    dist.broadcast_object_list(payload, src=0)
    if isinstance(payload[0], Exception):
        raise payload[0]
    return set(payload[0])


def _finish(cfg: SampleConfig, out: Path, settings: dict, started: float, resumed: int) -> None:
    written = records.merge(out)
    nfe = [r["nfe"] for r in written]
    final = {
        **settings, "status": "complete", "num_written": len(written), "resumed_with": resumed,
        "mean_nfe": sum(nfe) / max(len(nfe), 1), "wall_time_s": time.time() - started,
        "mean_remasks": sum(len(r.get("remasks", [])) for r in written) / max(len(written), 1),
    }
    records.settings_path(out).write_text(json.dumps(final, indent=2))
    print(f"[dsl_scale] wrote {len(written)} samples to {out} ({cfg.sampler.name}, T={cfg.steps}, mean NFE "
          f"{final['mean_nfe']:.1f}, {settings['weights_loaded']} weights, {final['wall_time_s']:.1f} s)")
    for record in written[: cfg.print_samples]:
        print(f"--- sample {record['index']} (nfe {record['nfe']}) ---\n{record['text']}")
