"""The user's journey from a public MDLM checkpoint, on CPU at micro shapes, with the real commands: a directory
laid out as `huggingface-cli download kuleshov-group/mdlm-owt` leaves it → fine-tune with DSL (the recipe's CPU
twin) → sample from the run and from the HF directory → generative perplexity under a Hugging Face scorer
directory → export → reload with transformers (our exported modeling code) with logits equal to ours."""

from __future__ import annotations

import json

import pytest
import torch

from tests.launching import read_jsonl, run
from tests.unit.test_checkpoint_source import reference_layout_dir

pytestmark = pytest.mark.distributed


def tiny_scorer(path) -> None:
    """A one-layer GPT-2 causal LM with our exported tokenizer files: what a local gpt2-large directory is."""
    import transformers

    from dsl_scale.checkpoint.hf_mdlm import gpt2_tokenizer_files

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=64, vocab_size=50258)
    transformers.GPT2LMHeadModel(config).save_pretrained(path)
    for name, data in gpt2_tokenizer_files().items():
        (path / name).write_bytes(data)


def test_finetune_mdlm_owt_with_dsl_sample_score_export_reload(process_group, wiki_shards, tmp_path):
    hf_dir, run_dir = tmp_path / "mdlm-owt", tmp_path / "dsl"
    reference_layout_dir(hf_dir, model_length=64)
    result = run("python", "finetune.py", 1, ["preset=dsl_from_mdlm_owt_cpu", f"init_from={hf_dir}",
                                              f"data.path={wiki_shards}", f"run_dir={run_dir}"])
    assert f"initialised from {hf_dir}" in result.stdout
    evals = read_jsonl(run_dir / "eval.jsonl")
    assert [e["step"] for e in evals] == [0, 3, 6] and all(e["val_loss"] > 0 for e in evals)
    lrs = [r["lr"] for r in read_jsonl(run_dir / "metrics.jsonl")]
    assert lrs[1] == pytest.approx(2e-3) and lrs[-1] < lrs[1]  # warmed up, then decaying (cosine)

    for name, checkpoint in (("run", run_dir), ("hf", hf_dir)):
        out = tmp_path / f"{name}.jsonl"
        run("python", "sample.py", 1, [f"checkpoint={checkpoint}", "sampler=mdlm", "steps=4", "num_samples=2",
                                       f"out={out}"])
        samples = [json.loads(line) for line in out.read_text().splitlines()]
        assert [s["index"] for s in samples] == [0, 1] and all(len(s["tokens"]) == 64 for s in samples)

    scorer = tmp_path / "scorer"
    tiny_scorer(scorer)
    results = tmp_path / "results.json"
    run("python", "evaluate.py", 1, [f"samples={tmp_path / 'run.jsonl'}", "metrics=[gen_ppl]", f"scorer={scorer}",
                                     "bootstrap_resamples=0", f"out={results}"])
    gen_ppl = json.loads(results.read_text())["gen_ppl"]
    assert gen_ppl["scorer"]["kind"] == "huggingface" and gen_ppl["count"] == 2
    assert 1 < gen_ppl["gen_ppl"] < 1e6, gen_ppl

    from dsl_scale.checkpoint.inference import load_for_inference
    from dsl_scale.cli import convert_checkpoint

    export = tmp_path / "export"
    assert convert_checkpoint.main([str(run_dir), str(export), "--to", "hf-mdlm", "--ema"]) == 0
    assert {"README.md", "tokenizer.json", "dsl_converter.safetensors", "modeling_mdlm.py"} <= {
        p.name for p in export.iterdir()}
    import transformers

    theirs = transformers.AutoModelForMaskedLM.from_pretrained(export, trust_remote_code=True).eval()
    ours = load_for_inference(run_dir, weights="ema", precision="fp32", device=torch.device("cpu")).model
    ids = transformers.AutoTokenizer.from_pretrained(export)("The river flows north", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids)[0], ours(ids), atol=1e-5, rtol=0)
    assert load_for_inference(export).train_config.objective.name == "dsl"  # and it reads back as ours
