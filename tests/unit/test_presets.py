"""The GPU presets (configs/preset/) and the documented cluster commands (README.md, docs/clusters.md)
validate at the world size they state;
a preset at another world size fails with the key's name before anything runs."""

from __future__ import annotations

import json
import re
import shlex

import pytest
from hydra import compose, initialize_config_dir

from dsl_scale.cli import submit
from dsl_scale.config import Config, check_parallel_layout, register_configs, to_config, validate
from dsl_scale.launch import CONFIG_DIR, check_ranks_per_node
from tests.launching import REPO

REFERENCE_CONFIG = json.loads((REPO / "tests" / "fixtures" / "mdlm_owt_small.json").read_text())["config_json"]
GPT2_VOCAB = 50258  # GPT-2's 50257 ids and [MASK] (dsl_scale/tokenizer.py)
PRESETS = sorted(p.stem for p in (REPO / "configs" / "preset").glob("gpu_*.yaml"))
RECIPES = ("dsl_from_mdlm_owt_1node", "dsl_from_mdlm_owt_4node")


def composed(config_name: str, overrides: list[str]) -> Config:
    register_configs()
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return to_config(compose(config_name, overrides=overrides))


def stated_world(preset: str) -> int:
    """A preset `gpu_<model>_<N>node` states its world through the cluster config of the same suffix."""
    cluster = submit.load_cluster([f"cluster=gpu_{preset.rsplit('_', 1)[1]}"])
    return cluster.nodes * cluster.ranks


def test_there_are_small_medium_and_large_presets_for_one_and_four_nodes():
    assert PRESETS == [f"gpu_{m}_{n}node" for m in ("large", "medium", "small") for n in (1, 4)]
    assert [stated_world(p) for p in ("gpu_small_1node", "gpu_small_4node")] == [8, 32]


@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_validates_at_its_stated_world_size(preset):
    cfg = composed("config", [f"preset={preset}"])
    world = stated_world(preset)
    validate(cfg, world)
    check_parallel_layout(cfg.model, GPT2_VOCAB, cfg.parallel.tp, cfg.parallel.pp, world)
    assert (cfg.train.precision, cfg.parallel.zero_stage, cfg.train.global_batch, cfg.model.seq_len) == (
        "bf16", 1, 512, 1024)
    assert cfg.model.name == preset.split("_")[1]
    assert (cfg.parallel.tp == 2) == (cfg.model.name == "large")
    submit.check_job_config("pretrain", submit.load_cluster([f"cluster=gpu_{preset.rsplit('_', 1)[1]}"]),
                            [f"preset={preset}"])


def test_small_is_mdlms_owt_model():
    model = composed("config", ["preset=gpu_small_1node"]).model
    assert (model.n_blocks, model.hidden, model.n_heads, model.seq_len) == (12, 768, 12, 1024)


def test_overrides_after_a_preset_win_and_finetune_composes_it():
    cfg = composed("config", ["preset=gpu_small_4node", "train.micro_batch=8", "train.steps=9"])
    assert (cfg.train.micro_batch, cfg.train.steps, cfg.model.name) == (8, 9, "small")
    assert composed("finetune", ["preset=gpu_medium_1node", "init_from=x"]).objective.name == "dsl"


def test_a_preset_at_a_world_whose_dp_its_batch_does_not_divide_fails_naming_the_batch():
    one_node = composed("config", ["preset=gpu_small_1node"])  # micro-batch 32: 32 × DP 32 > 512
    with pytest.raises(ValueError, match=r"train.global_batch=512 is not divisible by .* 32 × 32"):
        validate(one_node, world_size=32)
    with pytest.raises(ValueError, match="train.global_batch=512"):
        submit.check_job_config("pretrain", submit.load_cluster(["cluster=gpu_4node"]), ["preset=gpu_small_1node"])
    with pytest.raises(SystemExit):  # the command line: argparse's error, before sbatch is run
        submit.submit(["pretrain", "cluster=gpu_4node", "preset=gpu_small_1node", "--dry-run"])


def test_submit_refuses_tensor_parallel_groups_across_nodes_and_ranks_sharing_a_gpu():
    six_gpus = submit.load_cluster(["cluster=gpu_4node", "cluster.gpus_per_node=6"])
    with pytest.raises(ValueError, match="tensor-parallel groups would span nodes"):
        submit.check_job_config("pretrain", six_gpus, ["preset=gpu_large_4node", "parallel.tp=4",
                                                       "train.global_batch=96", "train.micro_batch=16"])
    with pytest.raises(ValueError, match="would share a GPU"):
        submit.load_cluster(["cluster=gpu_1node", "cluster.ranks_per_node=16"])


def test_ranks_per_node_must_divide_the_world_and_fit_the_gpus():
    check_ranks_per_node({"WORLD_SIZE": "32", "LOCAL_WORLD_SIZE": "8"}, visible_gpus=8)
    check_ranks_per_node({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}, visible_gpus=0)  # CPU: no GPU to share
    with pytest.raises(RuntimeError, match="do not divide the world size 12"):
        check_ranks_per_node({"WORLD_SIZE": "12", "LOCAL_WORLD_SIZE": "8"}, visible_gpus=8)
    with pytest.raises(RuntimeError, match="8 ranks on this node but 4 visible GPU"):
        check_ranks_per_node({"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "8"}, visible_gpus=4)


# --- the documented cluster commands ---------------------------------------------------------------------------


def readme_commands(program: str) -> list[list[str]]:
    """Every command in the bash blocks of README.md and docs/clusters.md that starts with `program`
    (continuation lines joined, comments dropped), split into words."""
    text = (REPO / "README.md").read_text() + (REPO / "docs" / "clusters.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0].endswith(program):
                commands.append(words)
    return commands


def test_the_readmes_gpu_cluster_section_has_the_commands():
    section = (REPO / "docs" / "clusters.md").read_text().split("## On a GPU cluster", 1)[1].split("\n## ", 1)[0]
    assert "sbatch --nodes=4 --gpus-per-node=8" in section and "deepspeed --num_gpus 8" in section
    assert "estimate" in section and "not measured" in section


def test_the_readmes_sbatch_and_deepspeed_commands_validate_at_their_world_size():
    checked = []
    for words in readme_commands("sbatch"):
        options = dict(w[2:].split("=", 1) for w in words if w.startswith("--") and "=" in w)
        script = next(w for w in words if w.endswith(".sbatch"))
        job = script.rsplit("/", 1)[1].removesuffix(".sbatch")
        if job == "sample":
            continue
        world = int(options["nodes"]) * int(options["gpus-per-node"])
        overrides = words[words.index(script) + 1:]
        validate(composed("config" if job == "pretrain" else job, overrides), world)
        checked.append((job, world))
    for words in readme_commands("deepspeed"):
        if "--num_gpus" not in words or not any(w.startswith("preset=") for w in words):
            continue
        entry = next(w for w in words if w.endswith(".py"))
        world = int(words[words.index("--num_gpus") + 1])
        validate(composed("config", words[words.index(entry) + 1:]), world)
        checked.append(("deepspeed", world))
    assert ("pretrain", 32) in checked and ("deepspeed", 8) in checked, checked


def test_the_readmes_submit_commands_pass_submits_own_checks(capsys):
    commands = [w for w in readme_commands("python") if any(x.endswith("submit.py") for x in w)]
    assert len(commands) >= 3
    for words in commands:
        args = words[next(i for i, w in enumerate(words) if w.endswith("submit.py")) + 1:]
        submit.submit([*args, "--dry-run", "--no-estimate"])  # the estimate: tests/unit/test_estimate_memory.py
        assert capsys.readouterr().out.startswith("sbatch ")


@pytest.mark.parametrize("preset", RECIPES)
def test_the_dsl_from_mdlm_owt_recipe_validates_at_its_stated_world_size(preset):
    cfg = composed("finetune", [f"preset={preset}"])
    assert (cfg.model.name, cfg.objective.name, cfg.init_from) == ("from_checkpoint", "dsl", "kuleshov-group/mdlm-owt")
    assert (cfg.optim.schedule, cfg.optim.min_lr_ratio, cfg.optim.warmup_steps) == ("cosine", 0.1, 1000)
    assert (cfg.train.ema, cfg.model.dropout, cfg.objective.mdlm_fraction) == (0.9999, 0.1, 0.25)
    for key, field in (("hidden_dim", "hidden"), ("n_blocks", "n_blocks"), ("n_heads", "n_heads"),
                       ("cond_dim", "cond_dim")):  # the shape init_from gives at start (its config.json)
        setattr(cfg.model, field, REFERENCE_CONFIG[key])
    world = stated_world(preset.replace("dsl_from_mdlm_owt", "gpu_small"))
    validate(cfg, world)
    check_parallel_layout(cfg.model, GPT2_VOCAB, cfg.parallel.tp, cfg.parallel.pp, world)
    assert (cfg.train.precision, cfg.parallel.zero_stage, cfg.train.global_batch, cfg.model.seq_len) == (
        "bf16", 1, 512, 1024)
    submit.check_job_config("finetune", submit.load_cluster([f"cluster=gpu_{preset.rsplit('_', 1)[1]}"]),
                            [f"preset={preset}"])


def test_the_cpu_twin_keeps_the_recipes_structure():
    twin = composed("finetune", ["preset=dsl_from_mdlm_owt_cpu", "init_from=x"])
    full = composed("finetune", ["preset=dsl_from_mdlm_owt_1node"])
    for get in (lambda c: c.model.name, lambda c: c.objective.name, lambda c: c.optim.schedule,
                lambda c: c.optim.min_lr_ratio, lambda c: c.objective.mdlm_fraction, lambda c: c.model.dropout):
        assert get(twin) == get(full)
    assert 0 < twin.train.ema < 1 and twin.train.save_every < twin.train.steps
