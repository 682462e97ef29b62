"""Evaluate samples (MAUVE, Fréchet distance, generative perplexity, entropy, exact likelihood on synthetic data)
and checkpoints (NELBO, calibration, self-correction) into results.json.

    python launchers/evaluate.py samples=FILE.jsonl reference=SHARD_DIR metrics=[mauve,gen_ppl,entropy] \
        scorer=HF_DIR_OR_HUB_ID out=results.json                     (or `dsl-evaluate samples=FILE.jsonl ...`)
    python launchers/evaluate.py metrics=[nelbo] checkpoint=RUN_DIR reference=SHARD_DIR
    python launchers/evaluate.py samples=FILE.jsonl reference=HMM_SHARD_DIR metrics=[mauve,frechet,hmm_nll] \
        featurizer=ar featurizer_path=AR_RUN_DIR                    (in-domain features, exact likelihood)
    python launchers/evaluate.py metrics=[calibration,self_correction] checkpoint=RUN_DIR reference=SHARD_DIR
Also under `torchrun --nproc_per_node N`: features and perplexities are computed on a slice per rank.
"""

from __future__ import annotations

from dsl_scale.launch import hydra_main


def run(cfg) -> None:
    from dsl_scale.evaluation.run import run_evaluation

    run_evaluation(cfg)


def main() -> None:
    from dsl_scale.evaluation.config import EvalConfig, register_eval_configs, validate_eval_config

    hydra_main(run, config_name="evaluate", register=register_eval_configs, check=validate_eval_config,
               doc=" ".join(__doc__.split("\n\n")[0].split()), schema=EvalConfig)
