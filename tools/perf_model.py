"""A performance model on paper for bf16 training on one GPU: FLOPs, memory traffic and kernels per token.

    python tools/perf_model.py [--json] [--models small,medium,large] [--seq-len 1024] [--objective mdlm]

The kernel mix is measured, not assumed: the real DiT and objective (MDLM by default) run one forward, loss and
backward in bf16 on PyTorch's `meta` device (shapes and dtypes, no arithmetic), and every aten operation that
reaches the dispatcher is recorded with its inputs and outputs. Each is classed as
- a matmul (mm, addmm, bmm, baddbmm): 2·m·n·k FLOPs;
- attention (F.scaled_dot_product_attention, counted as one fused flash kernel forward and one backward:
  4·L·d FLOPs per token and head forward, 2.5× that backward, and only Q, K, V, O, dO, dQ, dK, dV moved);
- memory-bound (everything else): the bytes of its inputs and outputs (a broadcast input counts its storage);
- free (views, empty allocations).
Blocks are measured at n_blocks = 1 and 2 and extrapolated linearly (every block is the same), so `large` costs
no more than `small` here.

Time per token on a GPU = matmul FLOPs / (peak · matmul efficiency) + attention FLOPs / (peak · attention
efficiency) + bytes / (HBM bandwidth · bandwidth efficiency); MFU = the model's FLOPs per token
(6·N + 12·n_blocks·L·H, as tools/bench_train.py) / time / peak. The efficiencies are assumptions (printed);
"fused" estimates what a compiler that fuses each run of consecutive memory-bound kernels would move: a run
reads only the inputs it did not itself produce and writes all its outputs (conservative: backward may need
them). The optimizer (fused Adam over fp32 masters and moments) and the DP all-reduce are per step, not per
token, and small at MDLM's 524 k-token batches: printed separately. Replace these figures with measured ones
(tools/bench_train.py on the GPU) when a GPU run has them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from bench_train import model_flops_per_token, model_preset  # tools/ is the script's directory: on sys.path
from torch.utils._python_dispatch import TorchDispatchMode

GPUS = {  # dense bf16 peak (no sparsity) and HBM bandwidth, SXM parts
    "H100": {"peak": 989e12, "bandwidth": 3.35e12},
    "H200": {"peak": 989e12, "bandwidth": 4.8e12},
}
EFFICIENCY = {"matmul": 0.80, "attention": 0.55, "bandwidth": 0.80}  # assumptions, see the docstring
MATMULS = {"mm", "addmm", "bmm", "baddbmm"}
FREE = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "lift_fresh", "_unsafe_view"}
GLOBAL_BATCH_TOKENS = 512 * 1024
GPT2_VOCAB = 50258  # GPT-2 BPE + [MASK] (dsl_scale/tokenizer.py)  # MDLM's recipe (configs/preset/gpu_*)


@dataclass
class Mix:
    matmul_flops: float = 0.0
    attention_flops: float = 0.0
    bytes: float = 0.0
    fused_bytes: float = 0.0
    kernels: int = 0
    by_op: Counter = field(default_factory=Counter)  # memory-bound bytes per aten op

    def minus(self, other: Mix) -> Mix:
        return Mix(self.matmul_flops - other.matmul_flops, self.attention_flops - other.attention_flops,
                   self.bytes - other.bytes, self.fused_bytes - other.fused_bytes, self.kernels - other.kernels,
                   self.by_op - other.by_op)

    def plus(self, other: Mix, times: float = 1.0) -> Mix:
        ops = Counter({k: self.by_op.get(k, 0) + times * other.by_op.get(k, 0) for k in self.by_op | other.by_op})
        return Mix(self.matmul_flops + times * other.matmul_flops, self.attention_flops + times * other.attention_flops,
                   self.bytes + times * other.bytes, self.fused_bytes + times * other.fused_bytes,
                   round(self.kernels + times * other.kernels), ops)


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in torch.utils._pytree.tree_leaves(tree) if isinstance(t, torch.Tensor)]


def _bytes(t: torch.Tensor) -> int:
    return min(t.numel() * t.element_size(), t.untyped_storage().nbytes())


class KernelMix(TorchDispatchMode):
    """Records what every aten operation in its scope would cost on a GPU (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = Mix()
        self._run_outputs: set[int] = set()  # storages written by the current run of memory-bound kernels

    def attention(self, q: torch.Tensor, backward: bool) -> None:
        b, heads, length, d = q.shape
        moved = (8 if backward else 4) * q.numel() * q.element_size()
        self.mix.attention_flops += 4 * b * heads * length * length * d * (2.5 if backward else 1.0)
        self.mix.bytes += moved
        self.mix.fused_bytes += moved
        self.mix.kernels += 1
        self._run_outputs.clear()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        schema = func._schema
        aliasing = schema.returns and schema.returns[0].alias_info is not None \
            and not schema.returns[0].alias_info.is_write
        if aliasing or name in FREE or name.startswith("_attention_marker"):
            return out
        inputs, outputs = _tensors((args, kwargs)), _tensors(out)
        self.mix.kernels += 1
        if name in MATMULS:
            a, b = (args[1], args[2]) if name in ("addmm", "baddbmm") else (args[0], args[1])
            self.mix.matmul_flops += 2 * a.numel() * b.shape[-1]
            moved = sum(map(_bytes, inputs)) + sum(map(_bytes, outputs))
            self.mix.bytes += moved
            self.mix.fused_bytes += moved
            self._run_outputs.clear()
            return out
        moved = sum(map(_bytes, inputs)) + sum(map(_bytes, outputs))
        self.mix.bytes += moved
        self.mix.by_op[name] += moved
        fresh = [t for t in inputs if id(t.untyped_storage()) not in self._run_outputs]
        self.mix.fused_bytes += sum(map(_bytes, fresh)) + sum(map(_bytes, outputs))
        self._run_outputs.update(id(t.untyped_storage()) for t in outputs)
        return out


class _FlashAttention(torch.autograd.Function):
    """Stands in for F.scaled_dot_product_attention: shapes only, costed as one flash kernel each way."""

    recorder: KernelMix | None = None

    @staticmethod
    def forward(ctx, q, k, v):
        ctx.save_for_backward(q)
        if _FlashAttention.recorder is not None:
            _FlashAttention.recorder.attention(q, backward=False)
        return torch.empty_like(q)

    @staticmethod
    def backward(ctx, grad):
        (q,) = ctx.saved_tensors
        if _FlashAttention.recorder is not None:
            _FlashAttention.recorder.attention(q, backward=True)
        return torch.empty_like(grad), torch.empty_like(grad), torch.empty_like(grad)


@contextlib.contextmanager
def flash_attention(recorder: KernelMix):
    original = F.scaled_dot_product_attention
    _FlashAttention.recorder = recorder
    F.scaled_dot_product_attention = lambda q, k, v, *a, **kw: _FlashAttention.apply(q, k, v)
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original
        _FlashAttention.recorder = None


def _process_group() -> None:
    import torch.distributed as dist
    from megatron.core import parallel_state

    from dsl_scale.parallel.topology import free_port

    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(1, 1)


def measure(preset: str, n_blocks: int, seq_len: int, objective_name: str, batch: int = 2):
    """One bf16 training forward + loss + backward on `meta` at `n_blocks`: (Mix, model FLOPs per token)."""
    from dsl_scale.config import ModelConfig, ObjectiveConfig
    from dsl_scale.core import seeding
    from dsl_scale.diffusion.objectives import build_objective
    from dsl_scale.model.factory import build_dit
    from dsl_scale.parallel.cross_entropy import nll_function  # the trainer's loss (chunked, model.compile off)

    fields = {**model_preset(preset), "n_blocks": n_blocks, "seq_len": seq_len, "dropout": 0.0}
    model_cfg = ModelConfig(**{k: v for k, v in fields.items() if k in ModelConfig.__dataclass_fields__})
    objective_cfg = ObjectiveConfig(objective_name)
    vocab = GPT2_VOCAB
    with torch.device("meta"):
        model = build_dit(model_cfg, vocab, seed=0, causal=objective_name == "ar", objective=objective_cfg,
                          mask_id=vocab - 1)
    model = model.to(device="meta", dtype=torch.bfloat16).train()
    objective = build_objective(objective_cfg, vocab - 1, vocab, seed=0)
    tokens = torch.zeros(batch, seq_len, dtype=torch.long, device="meta")
    positions = torch.arange(batch, device="cpu")
    recorder = KernelMix()
    with flash_attention(recorder), recorder:
        prepared = objective.prepare(tokens, positions, 0, batch, seeding.MASK_STREAM)
        sigma = None if prepared.sigma is None else prepared.sigma.to(torch.bfloat16)
        logits = model(prepared.inputs, sigma, **prepared.model_kwargs)
        loss = objective.loss(logits, prepared, nll_function(model_cfg.loss_chunk_tokens), 0)
        loss.backward()
    tokens_in = batch * seq_len
    mix = recorder.mix
    per_token = Mix(mix.matmul_flops / tokens_in, mix.attention_flops / tokens_in, mix.bytes / tokens_in,
                    mix.fused_bytes / tokens_in, mix.kernels,
                    Counter({k: v / tokens_in for k, v in mix.by_op.items()}))
    return per_token, model_flops_per_token(model, n_blocks, model_cfg.hidden, seq_len), \
        sum(p.numel() for p in model.parameters())


def estimate(preset: str, seq_len: int, objective: str, micro_batch: int = 32) -> dict:
    """The mix at the preset's depth (n_blocks 1 and 2 measured, extrapolated), and the GPU estimates."""
    n_blocks = model_preset(preset)["n_blocks"]
    one, flops1, params1 = measure(preset, 1, seq_len, objective)
    two, flops2, params2 = measure(preset, 2, seq_len, objective)
    block = two.minus(one)
    mix = one.plus(block, n_blocks - 1)
    model_flops = flops1 + (flops2 - flops1) * (n_blocks - 1)
    params = params1 + (params2 - params1) * (n_blocks - 1)
    row = {"model": preset, "seq_len": seq_len, "objective": objective, "parameters": params,
           "model_flops_per_token": model_flops, "matmul_flops_per_token": mix.matmul_flops,
           "attention_flops_per_token": mix.attention_flops, "bytes_per_token": mix.bytes,
           "fused_bytes_per_token": mix.fused_bytes, "kernels_per_micro_batch": mix.kernels,
           "top_memory_ops": [(op, round(b)) for op, b in mix.by_op.most_common(8)], "gpus": {}}
    optimizer_bytes = 32 * params  # fused Adam: bf16 param r/w, fp32 master, m, v r/w, fp32 grad read
    row["optimizer_bytes_per_token"] = optimizer_bytes / GLOBAL_BATCH_TOKENS
    for gpu, spec in GPUS.items():
        compute = mix.matmul_flops / (spec["peak"] * EFFICIENCY["matmul"]) \
            + mix.attention_flops / (spec["peak"] * EFFICIENCY["attention"])
        estimates = {}
        for label, moved in (("eager", mix.bytes), ("fused", mix.fused_bytes)):
            memory = (moved + row["optimizer_bytes_per_token"]) / (spec["bandwidth"] * EFFICIENCY["bandwidth"])
            seconds = compute + memory
            estimates[label] = {"tokens_per_s": 1 / seconds, "mfu": model_flops / seconds / spec["peak"],
                                "memory_share": memory / seconds,
                                "micro_batch_ms": 1e3 * seconds * micro_batch * seq_len}
        row["gpus"][gpu] = estimates
    return row


def print_rows(rows: list[dict]) -> None:
    print(f"assumed efficiencies: {EFFICIENCY}; GPUs: {GPUS}")
    print("| model | params | model GFLOP/token | matmul + attn GFLOP/token | MB/token eager / fused | kernels per "
          "micro-batch | H100 MFU eager / fused | H200 MFU eager / fused |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        h100, h200 = r["gpus"]["H100"], r["gpus"]["H200"]
        print(f"| `{r['model']}` L={r['seq_len']} | {r['parameters'] / 1e6:.0f} M | "
              f"{r['model_flops_per_token'] / 1e9:.2f} | "
              f"{(r['matmul_flops_per_token'] + r['attention_flops_per_token']) / 1e9:.2f} | "
              f"{r['bytes_per_token'] / 1e6:.2f} / {r['fused_bytes_per_token'] / 1e6:.2f} | "
              f"{r['kernels_per_micro_batch']} | "
              f"{100 * h100['eager']['mfu']:.0f} % / {100 * h100['fused']['mfu']:.0f} % | "
              f"{100 * h200['eager']['mfu']:.0f} % / {100 * h200['fused']['mfu']:.0f} % |")
    for r in rows:
        ops = ", ".join(f"{op} {b / 1e3:.0f} kB" for op, b in r["top_memory_ops"])
        print(f"`{r['model']}` memory-bound bytes per token by aten op (eager): {ops}")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="small,medium,large")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--objective", default="mdlm", choices=["mdlm", "dsl", "ar"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    _process_group()
    rows = [estimate(m, args.seq_len, args.objective) for m in args.models.split(",")]
    if args.json:
        print(json.dumps(rows, default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") else str(o)))
    else:
        print_rows(rows)
    return rows


if __name__ == "__main__":
    main()
