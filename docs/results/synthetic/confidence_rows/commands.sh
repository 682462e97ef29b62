#!/bin/bash
# How these rows were made (2026-12-02, code at 03cb0ec): from the synthetic run's checkpoints in
# runs/reproduce-synthetic, remdm_confidence without sampler.visible_snr on the DSL arm (conf_embed_*) and on the
# MDLM arm (mdlm_conf_*), the reproduction's sample.py and evaluate.py settings, exact NLL and entropy only.
cd "$(dirname "$0")/../../../.."  # the repository root
export DS_ACCELERATOR=cpu PYTHONWARNINGS=ignore
R=runs/reproduce-synthetic; A=runs/ablation
mkdir -p $A
for ARM in dsl mdlm; do
  NAME=$([ $ARM = dsl ] && echo conf_embed || echo mdlm_conf)
  for T in 8 16 32; do for S in 0 1; do
    .venv/bin/python launchers/sample.py checkpoint=$R/runs/$ARM sampler=remdm_confidence steps=$T num_samples=100 \
        batch_size=50 top_p=0.9 seed=$S batch_invariant=false out=$A/${NAME}_T${T}_seed$S.jsonl
    .venv/bin/python launchers/evaluate.py samples=$A/${NAME}_T${T}_seed$S.jsonl reference=$R/data \
        'metrics=[hmm_nll,entropy]' bootstrap_resamples=200 seed=$S out=$A/${NAME}_T${T}_seed$S.json
  done; done
done
