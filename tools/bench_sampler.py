"""Sampler overhead: wall time of a sampling run / (NFE × time of one forward pass of the same batch).

    python tools/bench_sampler.py [--json] [--steps 128] [--batch-size 2] [--samplers mdlm,remdm_loop]

Model: `tiny` (configs/model/tiny.yaml) at L = 128, randomly initialised in a world-of-one process
group. The DiT's output layer is zero-initialised (uniform x_θ, every nucleus 90% of the vocabulary),
which no trained model resembles, so it is re-drawn with std logit_scale/√H: logits of std ≈
`--logit-scale` (3 gives nuclei of ~2,000 ids at p = 0.9).

`ratio` follows the definition above; the forward time is the mean of two medians of 5 passes, measured
right before and right after each sampler's run (after one short warm-up run of every sampler), so a
drifting machine biases neither side. `ratio_in_run` divides the wall time by the forward time actually
spent inside the same run instead: it isolates the sampler's own per-step work.
Target: ratio ≤ 1.05 at T = 128.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

TARGET = 1.05


class TimedDenoiser:
    def __init__(self, denoise):
        self.denoise, self.seconds, self.sequences = denoise, 0.0, 0

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        started = time.perf_counter()
        out = self.denoise(ids)
        self.seconds += time.perf_counter() - started
        self.sequences += ids.shape[0]
        return out


def build_tiny(seq_len: int, logit_scale: float):
    import torch.distributed as dist
    from megatron.core import parallel_state

    from dsl_scale.config import ModelConfig
    from dsl_scale.model.factory import build_dit
    from dsl_scale.parallel.topology import free_port
    from dsl_scale.tokenizer import get_tokenizer

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(1, 1)
    fields = OmegaConf.to_container(OmegaConf.load(Path(__file__).resolve().parent.parent / "configs/model/tiny.yaml"))
    model_cfg = ModelConfig(**{**fields, "seq_len": seq_len})
    tokenizer = get_tokenizer("gpt2")
    model = build_dit(model_cfg, tokenizer.vocab_size, seed=0).eval()
    with torch.no_grad():
        std = logit_scale / model_cfg.hidden**0.5
        model.output_layer.linear.weight.normal_(0.0, std, generator=torch.Generator().manual_seed(1))
    return model, tokenizer.mask_id


def measure(samplers: list[str], steps: int, batch_size: int, seq_len: int, logit_scale: float) -> list[dict]:
    from dsl_scale.sampling.config import SamplerConfig
    from dsl_scale.sampling.denoiser import ModelDenoiser
    from dsl_scale.sampling.generate import sample

    defaults = Path(__file__).resolve().parent.parent / "configs" / "sampler"
    model, mask_id = build_tiny(seq_len, logit_scale)
    denoise = ModelDenoiser(model, batch_invariant=True)
    batch = torch.randint(0, mask_id, (batch_size, seq_len), generator=torch.Generator().manual_seed(0))
    def forward_time(repeats: int = 5) -> float:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            denoise(batch)
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    configs = {name: SamplerConfig(**OmegaConf.to_container(OmegaConf.load(defaults / f"{name}.yaml")))
               for name in samplers}
    for cfg in configs.values():  # warm-up: allocator pools, caches, lazy initialisation
        sample(denoise, list(range(batch_size)), seq_len, 8, mask_id, seed=1, sampler=cfg)
    rows = []
    for name, cfg in configs.items():
        before = forward_time()
        timed = TimedDenoiser(denoise)
        started = time.perf_counter()
        result = sample(timed, list(range(batch_size)), seq_len, steps, mask_id, seed=0, sampler=cfg)
        wall = time.perf_counter() - started
        forward_s = (before + forward_time()) / 2
        nfe = sum(result.nfe) / batch_size
        rows.append({
            "sampler": name, "steps": steps, "nfe": nfe, "ratio": wall / (nfe * forward_s),
            "ratio_in_run": wall / timed.seconds, "target": TARGET, "wall_s": wall, "forward_s": forward_s,
            "forward_in_run_s": timed.seconds * batch_size / timed.sequences,
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print the result JSON as the last line")
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--logit-scale", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: the launchers' policy)")
    parser.add_argument("--samplers", default="mdlm,remdm_cap,remdm_rescale,remdm_conf,remdm_loop")
    args = parser.parse_args()
    from dsl_scale.parallel.topology import set_cpu_threads

    set_cpu_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = measure(args.samplers.split(","), args.steps, args.batch_size, args.seq_len, args.logit_scale)
    print(f"tiny, L={args.seq_len}, batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"forward {rows[0]['forward_s'] * 1e3:.0f} ms per batch")
    print(f"{'sampler':<15}{'T':>5}{'NFE':>8}{'wall s':>9}{'ratio':>8}{'in run':>8}")
    for r in rows:
        print(f"{r['sampler']:<15}{r['steps']:>5}{r['nfe']:>8.1f}{r['wall_s']:>9.1f}{r['ratio']:>8.3f}"
              f"{r['ratio_in_run']:>8.3f}")
    if args.json:
        print(json.dumps({"rows": rows, "model": "tiny", "seq_len": args.seq_len, "batch_size": args.batch_size,
                          "logit_scale": args.logit_scale}))


if __name__ == "__main__":
    main()
