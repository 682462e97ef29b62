"""Run under torchrun with 2 ranks (gloo, TP2): NCCL's rule, that a collective's tensors are on the GPU, checked
for dsl_scale's own collectives on a CPU machine. The world runs gloo for real; `collective_device` is told the
backend is NCCL (so it answers cuda:0), the compute device is cuda:0 too, and a TorchFunctionMode makes "cuda:0"
the CPU while remembering which tensors were made on the host: a factory or `.to()` that resolves to the CPU marks
its result, an op whose tensor inputs are all host-made marks its outputs, and `.to(cuda:0)` / device=cuda:0
clear it. Every torch.distributed collective called from dsl_scale then asserts no host-made tensor takes part.
With `plant` as argument, a host tensor is all-reduced on purpose: the run must fail (the test of the test).

Prints `COLLECTIVES {json}`: the collectives checked, by caller."""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

PACKAGE = str(Path(__file__).resolve().parents[2] / "dsl_scale")
GPU = torch.device("cuda", 0)
CHECKED: collections.Counter = collections.Counter()


def _cuda(value) -> bool:
    return (isinstance(value, torch.device) or isinstance(value, str) and value.startswith("cuda")) \
        and torch.device(value).type == "cuda"


def _host(t) -> bool:
    return isinstance(t, torch.Tensor) and getattr(t, "_made_on_host", False)


class PretendGPU(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.device:
            return func(*args, **kwargs)
        to_gpu = any(_cuda(v) for v in (*args, *kwargs.values()))
        if to_gpu:
            args = tuple(torch.device("cpu") if _cuda(a) else a for a in args)
            kwargs = {k: torch.device("cpu") if _cuda(v) else v for k, v in kwargs.items()}
            if func is torch.Tensor.to:
                kwargs["copy"] = True  # a new tensor object: the host copy keeps its mark
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        out = func(*args, **kwargs)
        host = not to_gpu and (all(_host(t) for t in inputs) if inputs else _is_factory(func))
        in_place = bool(inputs) and getattr(func, "__name__", "").endswith("_")  # the tensor keeps its mark
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and not isinstance(t, torch.nn.Parameter) and not (in_place
                                                                                               and t is inputs[0]):
                try:
                    t._made_on_host = host
                except (AttributeError, RuntimeError):
                    pass
        return out


def _is_factory(func) -> bool:
    return getattr(func, "__name__", "") in ("tensor", "zeros", "ones", "empty", "full", "arange", "rand", "randn",
                                             "randint", "as_tensor", "linspace", "zeros_like", "ones_like",
                                             "empty_like", "full_like")


def wrap_collectives() -> None:
    for name in ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor", "broadcast", "reduce",
                 "all_to_all_single", "send", "recv", "isend", "irecv", "gather", "scatter"):
        original = getattr(dist, name)

        def checked(*args, _original=original, _name=name, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(PACKAGE):
                host = [tuple(t.shape) for t in tree_leaves((args, kwargs)) if _host(t)]
                assert not host, (f"{_name} from {caller} with host-made tensors {host}: under NCCL they must be "
                                  "on collective_device(group)")
                CHECKED[f"{Path(caller).name}:{_name}"] += 1
            return _original(*args, **kwargs)

        setattr(dist, name, checked)


class _NcclView:
    """torch.distributed as collective_device sees it: the backend reads NCCL."""

    def __getattr__(self, name):
        return getattr(dist, name)

    @staticmethod
    def get_backend(group=None):
        return dist.Backend.NCCL


if __name__ == "__main__":
    from dsl_scale.config import Config, ModelConfig, ObjectiveConfig, TrainConfig
    from dsl_scale.core import device as device_lib
    from dsl_scale.diffusion.objectives import build_objective
    from dsl_scale.model.factory import build_dit
    from dsl_scale.parallel import cpu_compat
    from dsl_scale.parallel import engine as engine_lib
    from dsl_scale.parallel.cross_entropy import nll_function
    from dsl_scale.parallel.topology import init_process_groups
    from dsl_scale.train import trainer as trainer_module

    cpu_compat.install()
    topo = init_process_groups(tp=2, backend="gloo")
    cpu_compat.seed_parallel_rng(0, topo.tp_rank)
    device_lib.dist = _NcclView()
    torch.cuda.current_device = lambda: 0
    for module in (trainer_module, engine_lib):
        module.compute_device = lambda: GPU
    wrap_collectives()
    model_cfg = ModelConfig(hidden=32, n_heads=2, cond_dim=16, n_blocks=2, seq_len=16, dropout=0.1)
    trainer = trainer_module.Trainer.__new__(trainer_module.Trainer)
    trainer.cfg = Config(model=model_cfg, train=TrainConfig(micro_batch=2, seed=1),
                         objective=ObjectiveConfig("dsl", key_dim=8))
    trainer.topo = topo
    trainer.objective = build_objective(trainer.cfg.objective, 63, 64, seed=1)
    model = build_dit(model_cfg, 64, 1, tp=2, objective=trainer.cfg.objective, mask_id=63).train()
    with PretendGPU():
        model.to(GPU)  # as DeepSpeed places it: parameters and buffers copied to "the GPU"
    trainer.engine, trainer.nll_fn, trainer.vocab_start = model, nll_function(8), model.vocab_range[0]
    tokens = torch.randint(0, 63, (4, 16), generator=torch.Generator().manual_seed(0), device="cpu")
    with PretendGPU():
        for batch in trainer._micro_batches(tokens, 0, 3, 4, 2):
            loss = trainer._forward_loss(batch)
            loss.backward()
        engine_lib.grad_norm(model, topo.tp_rank)
        trainer._dp_mean(loss)
        if "plant" in sys.argv[1:]:  # a host tensor all-reduced from (code compiled as) dsl_scale's engine.py
            code = compile("dist.all_reduce(torch.zeros(1))", PACKAGE + "/parallel/engine.py", "exec")
            exec(code, {"dist": dist, "torch": torch})
    print("COLLECTIVES " + json.dumps(dict(CHECKED)), flush=True)
