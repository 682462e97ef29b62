"""Evaluate samples (MAUVE, generative perplexity, entropy) and checkpoints (NELBO) into results.json.

    python launchers/evaluate.py samples=FILE.jsonl reference=SHARD_DIR metrics=[mauve,gen_ppl,entropy] \
        scorer=RUN_OR_HF_DIR out=results.json
    python launchers/evaluate.py metrics=[nelbo] checkpoint=RUN_DIR reference=SHARD_DIR
Also under `torchrun --nproc_per_node N`: features and perplexities are computed on a slice per rank.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dsl_scale.launch import hydra_main  # noqa: E402


def run(cfg) -> None:
    from dsl_scale.evaluation.run import run_evaluation

    run_evaluation(cfg)


if __name__ == "__main__":
    from dsl_scale.evaluation.config import register_eval_configs

    hydra_main(run, config_name="evaluate", register=register_eval_configs)
