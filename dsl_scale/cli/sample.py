"""Sample from a trained checkpoint and write samples.jsonl (index, tokens, text, nfe) + settings.

    python launchers/sample.py checkpoint=CHECKPOINT sampler=mdlm|remdm_cap|remdm_rescale|remdm_conf|remdm_loop \
        steps=T num_samples=N seed=S out=FILE.jsonl                 (or `dsl-sample checkpoint=... ...`)
    torchrun --nproc_per_node N launchers/sample.py ...   (the indices are split over the ranks)

CHECKPOINT: anything checkpoint/source.py opens (one of our runs at any layout, a consolidated or Hugging Face MDLM
directory, a Hub id such as kuleshov-group/mdlm-owt from the local cache, a Lightning .ckpt).
Each rank samples on its compute device (cuda:LOCAL_RANK when there is a GPU), by default in bf16 with batched
forwards there and in fp32 one sequence per forward on CPU (`precision=`, `batch_invariant=`).
Running the same command again resumes: indices already written are skipped.
"""

from __future__ import annotations

from dsl_scale.launch import hydra_main


def run(cfg) -> None:
    from dsl_scale.sampling.driver import run_sampling

    run_sampling(cfg)


def check(cfg) -> None:
    from dsl_scale.sampling.config import validate_sample_config

    validate_sample_config(cfg, (cfg.sampler.name,))  # the sampler's name: composed from configs/sampler/


def main() -> None:
    from dsl_scale.sampling.config import SampleConfig, register_sample_configs

    hydra_main(run, config_name="sample", register=register_sample_configs, check=check, groups=("sampler",),
               doc=__doc__.splitlines()[0], schema=SampleConfig)
