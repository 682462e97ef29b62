"""bf16 training numerics on real 2-rank gloo runs of dsl_scale's engine (tests/distributed/bf16_numerics_check.py),
at every ZeRO stage: gradients accumulate over 64 micro-batches and are averaged over the two data-parallel
ranks in fp32 (the optimizer step matches an fp64 reference to ~1e-7, where bf16 accumulation is off by ~1e-3);
the EMA averages DeepSpeed's fp32 master weights, not their bf16 copies in the module, each rank only its own
share of them with no collective per update (ZeRO-1/2/3), saved and loaded by parameter name; the final weights
are the masters bit for bit (fp32 values a bf16 copy could not hold).
"""

from __future__ import annotations

import json

import pytest

from tests.distributed.bf16_numerics_check import WIDTHS
from tests.launching import run

pytestmark = pytest.mark.distributed

ZERO_OPTIMIZERS = {0: "FP16_UnfusedOptimizer", 1: "DeepSpeedZeroOptimizer", 2: "DeepSpeedZeroOptimizer",
                   3: "DeepSpeedZeroOptimizer_Stage3"}


def results(*stages: int) -> dict[int, dict]:
    output = run("torchrun", "tests/distributed/bf16_numerics_check.py", 2, [str(s) for s in stages]).stdout
    found = [json.loads(line.removeprefix("RESULT ")) for line in output.splitlines() if line.startswith("RESULT ")]
    assert [r["stage"] for r in found] == list(stages), output[-3000:]
    return {r["stage"]: r for r in found}


def check(result: dict) -> None:
    # the state layouts checkpoint/ reads: DeepSpeed's BF16_Optimizer would replace ZeRO-1's optimizer
    assert result["optimizer"] == ZERO_OPTIMIZERS[result["stage"]], result
    assert result["grad_norm"] == pytest.approx(result["reference_norm"], rel=1e-6), result
    assert result["max_master_error"] < 1e-6, result  # bf16 accumulation or reduction: ~1e-3
    assert result["ema_is_from_masters"] and not result["ema_is_from_bf16"], result
    assert result["ema_round_trip"], result  # saved by name, loaded back into this rank's share
    assert result["ema_update_collectives"] == [0], result  # each rank averages only what it holds
    if result["stage"] in (1, 2, 3):  # the EMA is sharded as the optimizer's masters are: about half per rank
        assert result["ema_held_elements"] <= (sum(WIDTHS) + 1) // 2 + 8, result
    else:
        assert result["ema_held_elements"] == sum(WIDTHS), result
    assert result["final_is_masters"] and not result["final_is_bf16_rounded"], result
    assert result["final_dtypes"] == ["torch.float32"], result


def test_zero0_and_zero1_accumulate_and_reduce_in_fp32_with_ema_and_final_weights_from_the_masters():
    for result in results(0, 1).values():  # dsl_scale's own fp32 gradients; DeepSpeed's, kept at ZeRO-1 by a patch
        check(result)


@pytest.mark.slow
def test_zero2_and_zero3_accumulate_and_reduce_in_fp32_with_ema_and_final_weights_from_the_masters():
    for result in results(2, 3).values():
        check(result)
