"""The checks of tools/gpu_smoke.sh that no command does by itself, in one process (each start costs seconds).

    python tools/gpu_smoke_checks.py RUN_DIR [--hf HF_DIR] [--device cuda] [--dtype bf16]

- with --hf: the Hugging Face export, loaded by transformers, gives our model's logits (fp32, CPU);
- tokens/s of the run (metrics.jsonl) and its MFU against the dense matmul peak measured now on --device in
  --dtype (tools/bench_train.py's FLOP count and peak).
Each prints a line `[smoke] ...`; a failed check exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train  # noqa: E402 (tools/ is not a package)

SKIPPED_STEPS = 3  # the first steps include warm-up (allocator, kernel selection)


def world_of_one() -> None:
    """megatron-core's groups for a single process (our DiT is built from its layers)."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    from dsl_scale.parallel.topology import free_port

    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(1, 1)


def hf_logits(run_dir: str, hf_dir: str, atol: float) -> None:
    """Our model (raw weights, fp32, CPU) and the export loaded by transformers give the same logits."""
    import transformers

    from dsl_scale.checkpoint.inference import load_for_inference

    world_of_one()
    ours = load_for_inference(run_dir, weights="model", precision="fp32", device=torch.device("cpu"))
    theirs = transformers.AutoModelForMaskedLM.from_pretrained(hf_dir, trust_remote_code=True).eval()
    seq_len, vocab = ours.train_config.model.seq_len, ours.tokenizer.vocab_size
    ids = torch.randint(0, vocab, (2, seq_len), generator=torch.Generator().manual_seed(0), device="cpu")
    with torch.no_grad():
        a, b = ours.model(ids).float(), theirs(ids)[0].float()
    if not a.std() > 0:  # equal zeros would prove nothing
        sys.exit("[smoke] FAILED: our model's logits are constant")
    diff = (a - b).abs().max().item()
    print(f"[smoke] hf export reloaded by transformers ({type(theirs).__name__}): logits {tuple(b.shape)}, "
          f"max |ours - hf| = {diff:.2e} (tolerance {atol:g})", flush=True)
    if a.shape != b.shape or not diff <= atol:
        sys.exit("[smoke] FAILED: the exported model's logits differ from ours")


def figures(run_dir: str, device: str, dtype: str) -> None:
    """Median tokens/s of the run's steps (metrics.jsonl) and MFU = model FLOP/s / the measured matmul peak."""
    from dsl_scale.checkpoint.inference import load_for_inference

    records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line]
    rates = [r["tokens_per_s"] for r in records if r["step"] > SKIPPED_STEPS] or [r["tokens_per_s"] for r in records]
    tokens_per_s = statistics.median(rates)
    world_of_one()
    loaded = load_for_inference(run_dir, weights="model", precision="fp32", device=torch.device("cpu"))
    m = loaded.train_config.model
    flops_per_token = bench_train.model_flops_per_token(loaded.model, m.n_blocks, m.hidden, m.seq_len)
    on_gpu = torch.device(device).type == "cuda"
    peak = bench_train.matmul_peak(8192 if on_gpu else 1024, repeats=5, device=device,
                                   dtype={"bf16": torch.bfloat16, "fp32": torch.float32}[dtype],
                                   inner=20 if on_gpu else 1)
    achieved = tokens_per_s * flops_per_token
    print(f"[smoke] figures: {tokens_per_s:,.0f} tokens/s (median of {len(rates)} steps), "
          f"{flops_per_token / 1e6:.1f} MFLOP/token, {achieved / 1e12:.3f} TFLOP/s; "
          f"{dtype} matmul peak {peak / 1e12:.3f} TFLOP/s on {device} (measured now); "
          f"MFU {100 * achieved / peak:.1f} %", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--hf", help="the run exported with --to hf-mdlm: check its logits")
    parser.add_argument("--atol", type=float, default=1e-4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    args = parser.parse_args()
    if args.hf:
        hf_logits(args.run_dir, args.hf, args.atol)
    figures(args.run_dir, args.device, args.dtype)


if __name__ == "__main__":
    main()
