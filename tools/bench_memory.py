"""Per-rank bytes of parameters, gradients, optimizer state, EMA and activations, measured from live DeepSpeed
engines, beside `dsl-estimate-memory`'s estimate of the same config (dsl_scale/cli/estimate_memory.py).

    python tools/bench_memory.py [--model micro] [--startup-model medium] [--only components|startup]
                                 [--layouts dp2-zero1,tp2-zero0] [--json]

Each layout runs as its own `torchrun` job (one training step of the trainer's objective and loss on random
tokens, fp32, AdamW). The estimate for Ψ parameters on a rank after tensor/pipeline splitting, DP size N:
parameters 4Ψ (ZeRO-3: 4Ψ/N), gradients 4Ψ (ZeRO-2/3: 4Ψ/N), optimizer 8Ψ for Adam's moments (ZeRO-1+: 12Ψ/N,
the moments plus the fp32 partition DeepSpeed optimises), EMA 4Ψ (ZeRO-1+: 4Ψ/N, kept of the fp32 partitions),
and the activations traced on the `meta` device. Measured activations: the distinct storages autograd saves in
the first micro-batch's forward and loss (parameters excluded). ZeRO-3 is measured with a persistence
threshold of 0, so every parameter is partitioned. Buffers for communication buckets are not counted.

Start-up rows (`pp1`, `pp2`: two ranks, data- or pipeline-parallel, `--startup-model`): the peak resident
memory of each rank from process start to just before its first step (model built, engine ready), the
largest over the ranks. A rank builds only its own pipeline stage, so `pp2` should need well under `pp1`
(the target: at most 0.6 × for `medium`; the interpreter and libraries, ~0.4 GB, are in both).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LAYOUTS = [  # (name, ranks, tp, zero)
    ("dp2-zero0", 2, 1, 0), ("dp2-zero1", 2, 1, 1), ("dp2-zero2", 2, 1, 2), ("dp2-zero3", 2, 1, 3),
    ("tp2-zero0", 2, 2, 0),
]
STARTUP_LAYOUTS = [("pp1", 2, 1), ("pp2", 2, 2)]  # (name, ranks, pp)


def _storage_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t is None or t.numel() == 0:
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def _local(param):
    return getattr(param, "ds_tensor", param)


def measure(engine, zero: int) -> dict[str, int]:
    """Called after backward (gradients present), before the optimizer step."""
    params = list(engine.module.parameters())
    opt = engine.optimizer
    grads = [p.grad for p in params]
    if zero in (1, 2):
        grads += list(getattr(opt, "averaged_gradients", {}).values())
        grads = [g for group in grads for g in (group if isinstance(group, list) else [group])]
        grads.append(getattr(opt, "grads_in_partition", None))
        grads += [master.grad for master in opt.single_partition_of_fp32_groups]  # ZeRO-2 accumulates here
    if zero == 3:
        grads.append(opt.grad_partitions_flat_buffer)
    return {"params": _storage_bytes(_local(p) for p in params), "grads": _storage_bytes(grads)}


def measure_optimizer(engine, zero: int) -> int:
    opt = engine.optimizer
    basic = opt if zero == 0 else opt.optimizer
    state = [t for s in basic.state.values() for t in s.values() if hasattr(t, "numel") and t.dim() > 0]
    master = []
    if zero in (1, 2):
        master = list(opt.single_partition_of_fp32_groups)
    elif zero == 3:
        master = list(opt.fp32_partitioned_groups_flat)
    return _storage_bytes(state + master)


class SavedActivations:
    """Counts the distinct storages autograd saves for backward while active (parameters' storages excluded):
    the activations a forward leaves for its backward."""

    def __init__(self, params) -> None:
        import torch

        self.params = list(params)
        self.storages: dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t):
        if not any(t is p for p in self.params):
            storage = t.untyped_storage()
            self.storages.setdefault(storage.data_ptr(), storage.nbytes())
        return t

    def __enter__(self) -> SavedActivations:
        self.excluded = {p.untyped_storage().data_ptr() for p in self.params if p.numel()}
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    @property
    def bytes(self) -> int:
        return sum(n for ptr, n in self.storages.items() if ptr not in self.excluded)


def layout_overrides(model: str, tp: int, zero: int) -> list[str]:
    return [f"model={model}", f"parallel.tp={tp}", f"parallel.zero_stage={zero}", "train.precision=fp32",
            "parallel.zero3_persistence_threshold=0", "train.micro_batch=1", f"train.global_batch={2 * (2 // tp)}"]


def compose_config(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from dsl_scale.config import register_configs, to_config
    from dsl_scale.launch import CONFIG_DIR

    register_configs()
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return to_config(compose("config", overrides=overrides))


def worker(model: str, tp: int, zero: int) -> None:
    import torch

    from dsl_scale.core import seeding
    from dsl_scale.diffusion.objectives import build_objective
    from dsl_scale.model.factory import build_dit
    from dsl_scale.parallel import cpu_compat
    from dsl_scale.parallel.cross_entropy import nll_function
    from dsl_scale.parallel.engine import build_engine
    from dsl_scale.parallel.masters import weight_source
    from dsl_scale.parallel.topology import init_process_groups, prepare_environment
    from dsl_scale.tokenizer import get_tokenizer
    from dsl_scale.train.ema import EMA

    prepare_environment()
    cfg = compose_config(layout_overrides(model, tp, zero))
    cpu_compat.install()
    topo = init_process_groups(tp, 1)
    tokenizer = get_tokenizer(cfg.data.tokenizer)
    vocab = tokenizer.vocab_size
    model_ = build_dit(cfg.model, vocab, seed=0, tp=tp, objective=cfg.objective, mask_id=tokenizer.mask_id)
    vocab_start = model_.vocab_range[0]
    engine = build_engine(model_, cfg, topo)
    objective = build_objective(cfg.objective, tokenizer.mask_id, vocab, cfg.train.seed)
    nll = nll_function(cfg.model.loss_chunk_tokens)
    micro, batch_size = cfg.train.micro_batch, cfg.train.global_batch
    measured, activations = {}, 0
    for i in range(engine.gradient_accumulation_steps()):
        generator = torch.Generator().manual_seed(i)
        tokens = torch.randint(0, vocab - 1, (micro, cfg.model.seq_len), generator=generator)
        first = topo.dp_rank * micro * engine.gradient_accumulation_steps() + i * micro
        with SavedActivations(engine.module.parameters()) as saved:
            batch = objective.prepare(tokens, torch.arange(first, first + micro), 0, batch_size,
                                      seeding.MASK_STREAM)
            seeds = seeding.per_example(range(first, first + micro), cfg.train.seed, seeding.DROPOUT_STREAM, 0)
            logits = engine(batch.inputs, batch.sigma, dropout_seeds=seeds, **batch.model_kwargs)
            loss = objective.loss(logits, batch, nll, vocab_start)
        activations = max(activations, saved.bytes)
        engine.backward(loss)
        # the larger of mid-accumulation and boundary holdings (ZeRO-1 keeps full gradients between
        # micro-batches, ZeRO-2 its reduced partition)
        now = measure(engine, zero)
        measured = {k: max(v, measured.get(k, 0)) for k, v in now.items()}
        engine.step()
    measured["optimizer"] = measure_optimizer(engine, zero)
    measured["activations"] = activations
    measured["ema"] = _storage_bytes(EMA(weight_source(engine), 0.999).shadow.values())
    if topo.rank == 0:
        print("ROW " + json.dumps({"measured": measured}))


def estimated(model: str, tp: int, zero: int, ranks: int) -> dict[str, int]:
    """dsl-estimate-memory's figures for the layout, on rank 0 (stage 0)."""
    from dsl_scale.cli.estimate_memory import estimate

    return estimate(compose_config(layout_overrides(model, tp, zero)), ranks)[0].bytes


def startup_worker(model: str, pp: int) -> None:
    """Build this rank's stage and its engine as training does, then report the peak RSS so far."""
    import resource

    import torch.distributed as dist
    from hydra import compose, initialize_config_dir

    from dsl_scale.config import register_configs, to_config
    from dsl_scale.launch import CONFIG_DIR
    from dsl_scale.model.factory import build_dit
    from dsl_scale.parallel import cpu_compat
    from dsl_scale.parallel.engine import build_engine
    from dsl_scale.parallel.topology import init_process_groups, prepare_environment

    prepare_environment()
    register_configs()
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = to_config(compose("config", overrides=[
            f"model={model}", f"parallel.pp={pp}", "train.precision=fp32", "train.micro_batch=1",
            "train.global_batch=2",
        ]))
    cpu_compat.install()
    topo = init_process_groups(1, pp)
    model_ = build_dit(cfg.model, 50258, seed=0, pp=pp, stage=topo.pp_rank)
    build_engine(model_, cfg, topo)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux; read before the first step
    peaks = [None] * topo.world_size
    dist.all_gather_object(peaks, peak)
    if topo.rank == 0:
        print("ROW " + json.dumps({"per_rank": peaks, "params_on_rank0": sum(p.numel() for p in model_.parameters())}))


def run_worker(args: list[str], ranks: int, env: dict[str, str]) -> dict:
    from dsl_scale.parallel.topology import free_port

    torchrun = str(Path(sys.executable).parent / "torchrun")
    out = subprocess.run([torchrun, "--nproc_per_node", str(ranks), "--master_port", str(free_port()), __file__,
                          *args], env=env, capture_output=True, text=True, check=False)
    found = [line for line in out.stdout.splitlines() if line.startswith("ROW ")]
    if out.returncode or not found:
        raise SystemExit(f"{' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return json.loads(found[0][4:])


def startup_rows(model: str, env: dict[str, str]) -> list[dict]:
    rows = []
    print(f"\nstart-up, model={model}, fp32: peak RSS per rank from process start to the first step")
    print(f"{'layout':<12} {'peak RSS (max over ranks)':>26} {'params on rank 0':>17} {'vs pp1':>7}")
    for name, ranks, pp in STARTUP_LAYOUTS:
        row = run_worker(["--model", model, "--startup-worker", str(pp)], ranks, env)
        peak = max(row["per_rank"])
        ratio = peak / rows[0]["startup_peak_rss_bytes"] if rows else 1.0
        print(f"{name:<12} {peak:>26,} {row['params_on_rank0']:>17,} {ratio:>7.3f}")
        rows.append({"layout": name, "model": model, "startup_peak_rss_bytes": peak,
                     "per_rank_peak_rss_bytes": row["per_rank"], "params_on_rank0": row["params_on_rank0"],
                     "ratio_to_pp1": ratio})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="micro")
    parser.add_argument("--json", action="store_true", help="print the JSON summary as the last line")
    parser.add_argument("--startup-model", default="medium", help="the model of the start-up rows")
    parser.add_argument("--only", choices=("components", "startup"), help="run one of the two tables")
    parser.add_argument("--layouts", help="comma-separated component layouts (default: all of "
                        + ", ".join(name for name, *_ in LAYOUTS) + ")")
    parser.add_argument("--worker", nargs=2, type=int, metavar=("TP", "ZERO"), help=argparse.SUPPRESS)
    parser.add_argument("--startup-worker", type=int, metavar="PP", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.model, *args.worker)
        return
    if args.startup_worker:
        startup_worker(args.model, args.startup_worker)
        return
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONWARNINGS": "ignore"}
    rows = []
    if args.only != "startup":
        rows += component_rows(args.model, env, args.layouts.split(",") if args.layouts else None)
    if args.only != "components":
        rows += startup_rows(args.startup_model, env)
    if args.json:
        print(json.dumps({"rows": rows}))


def component_rows(model: str, env: dict[str, str], only: list[str] | None = None) -> list[dict]:
    unknown = set(only or ()) - {name for name, *_ in LAYOUTS}
    if unknown:
        raise SystemExit(f"unknown layout(s) {', '.join(sorted(unknown))}; known: "
                         + ", ".join(name for name, *_ in LAYOUTS))
    rows = []
    print(f"model={model}, fp32, AdamW; bytes per rank (rank 0), gradient peak over a 2-micro-batch step; "
          f"estimate: dsl-estimate-memory")
    print(f"{'layout':<12} {'component':<12} {'measured':>14} {'estimate':>14} {'ratio':>7}")
    for name, ranks, tp, zero in LAYOUTS:
        if only and name not in only:
            continue
        row = run_worker(["--model", model, "--worker", str(tp), str(zero)], ranks, env)
        row["estimate"] = estimated(model, tp, zero, ranks)
        for part in ("params", "grads", "optimizer", "ema", "activations"):
            m, t = row["measured"][part], row["estimate"][part]
            print(f"{name:<12} {part:<12} {m:>14,} {t:>14,} {m / t:>7.3f}")
        measured, expected = sum(row["measured"].values()), sum(row["estimate"].values())
        print(f"{name:<12} {'total':<12} {measured:>14,} {expected:>14,} {measured / expected:>7.3f}")
        rows.append({"layout": name, "model": model, "measured": measured, "estimate": expected,
                     "ratio": measured / expected, "components": row})
    return rows


if __name__ == "__main__":
    main()
