"""The paper's analyses of a checkpoint (metrics=[calibration,self_correction]) on held-out blocks of the
reference data: calibration.py and self_correction.py, fed by the model's raw logits."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dsl_scale.evaluation.calibration import Denoiser, draft_calibration
from dsl_scale.evaluation.inputs import reference_indices
from dsl_scale.evaluation.self_correction import self_correction
from dsl_scale.sampling.denoiser import ModelDenoiser
from dsl_scale.sampling.visible_channel import VisibleThroughChannel


def raw_denoiser(loaded, visible_snr: float = 0.0) -> Denoiser:
    """ids [b, L] → raw logits [b, L, V] (fp32, on the inputs' device); no SUBS carry-over at visible positions.

    `visible_snr` > 0 (DSL checkpoints only): the model sees the state exactly as the samplers'
    `sampler.visible_snr` feeds it (sampling/visible_channel.py), so the analyses judge what sampling uses."""
    denoise = ModelDenoiser(loaded.model, batch_invariant=False)
    if visible_snr > 0:
        denoise = VisibleThroughChannel(denoise, visible_snr, loaded.tokenizer.mask_id)
    return lambda ids: denoise(ids).float()


def held_out_blocks(shard_dir: str, split: str, count: int) -> torch.Tensor:
    """`count` blocks spread evenly over the split (all of them when count is 0), as a CPU id tensor."""
    from dsl_scale.data.loader import open_shards

    blocks = open_shards(shard_dir, split)
    picked = reference_indices(len(blocks), min(count or len(blocks), len(blocks)))
    return torch.stack([torch.tensor(np.asarray(blocks[i]), dtype=torch.long, device="cpu") for i in picked])


@torch.inference_mode()
def run_analyses(cfg) -> dict[str, Any]:
    """{"calibration": …, "self_correction": …} for the metrics of `cfg` (an EvalConfig) that ask for them."""
    from dsl_scale.checkpoint.inference import load_for_inference
    from dsl_scale.parallel.topology import init_process_groups

    init_process_groups(1, 1)
    loaded = load_for_inference(cfg.checkpoint, cfg.weights, precision="fp32")
    blocks = held_out_blocks(cfg.reference, cfg.reference_split, cfg.analysis_examples)
    if blocks.shape[1] != loaded.train_config.model.seq_len:
        raise ValueError(f"{cfg.reference} holds {blocks.shape[1]}-token blocks but {cfg.checkpoint} was trained "
                         f"at model.seq_len={loaded.train_config.model.seq_len}")
    tokenizer = loaded.tokenizer
    common = {"checkpoint": cfg.checkpoint, "objective": loaded.train_config.objective.name,
              "weights": loaded.weights, "visible_snr": cfg.analysis_visible_snr}
    results: dict[str, Any] = {}
    if "calibration" in cfg.metrics:
        denoise = raw_denoiser(loaded, cfg.analysis_visible_snr)
        results["calibration"] = {**draft_calibration(
            denoise, blocks, tokenizer.mask_id, cfg.seed, cfg.calibration_mask_low, cfg.calibration_mask_high,
            cfg.calibration_fill, cfg.calibration_bins, cfg.calibration_binning, cfg.analysis_batch_size), **common}
    if "self_correction" in cfg.metrics:
        denoise = raw_denoiser(loaded, cfg.analysis_visible_snr)
        results["self_correction"] = {**self_correction(
            denoise, blocks, tokenizer.vocab_size, tokenizer.mask_id, cfg.corruption_rate, cfg.seed,
            cfg.analysis_batch_size, cfg.bootstrap_resamples), **common}
    return results
