"""tools/perf_model.py: the kernel mix it records is what the operations move and compute."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
import torch.nn.functional as F

from tests.unit.test_bench_all import REPO, load_tool


@pytest.fixture(scope="module")
def perf_model():
    sys.modules.setdefault("bench_train", load_tool("bench_train"))  # as `python tools/perf_model.py` finds it
    spec = importlib.util.spec_from_file_location("perf_model", REPO / "tools" / "perf_model.py")
    module = sys.modules["perf_model"] = importlib.util.module_from_spec(spec)  # dataclasses look it up
    spec.loader.exec_module(module)
    return module


def test_memory_bound_kernels_move_their_inputs_and_outputs_and_a_fused_run_skips_its_own_intermediates(perf_model):
    x = torch.empty(1000, device="meta")
    with perf_model.KernelMix() as recorder:
        y = x * 2      # reads 4000 B, writes 4000 B
        z = y + x      # reads 8000, writes 4000; fused with the mul: y never leaves the kernel
        z.view(10, 100).t()  # views move nothing
    mix = recorder.mix
    assert mix.kernels == 2 and mix.matmul_flops == 0
    assert mix.bytes == 8000 + 12000
    assert mix.fused_bytes == 8000 + (4000 + 4000)
    assert mix.by_op["mul"] == 8000 and mix.by_op["add"] == 12000


def test_matmuls_count_2mnk_flops_and_attention_one_flash_kernel_each_way(perf_model):
    a = torch.empty(64, 32, device="meta", dtype=torch.bfloat16)
    w = torch.empty(48, 32, device="meta", dtype=torch.bfloat16)
    q = torch.empty(2, 4, 16, 8, device="meta", requires_grad=True)
    recorder = perf_model.KernelMix()
    with perf_model.flash_attention(recorder), recorder:
        F.linear(a, w)
        F.scaled_dot_product_attention(q, q, q).sum().backward()
    assert recorder.mix.matmul_flops == 2 * 64 * 32 * 48
    assert recorder.mix.attention_flops == 4 * 2 * 4 * 16 * 16 * 8 * (1 + 2.5)
    assert F.scaled_dot_product_attention is not perf_model._FlashAttention.apply  # restored


def test_the_measured_matmul_flops_of_a_dit_match_the_model_flops_formula(perf_model):
    perf_model._process_group()  # the megatron groups the DiT's layers need (a world of one)
    mix, model_flops, params = perf_model.measure("tiny", 2, 64, "mdlm")
    measured = mix.matmul_flops + mix.attention_flops
    # the formula leaves out the per-sequence adaLN maps and the embedding: a few per cent at most
    assert model_flops <= measured <= 1.1 * model_flops, (measured, model_flops)
    assert mix.bytes > mix.fused_bytes > 0 and params > 0
