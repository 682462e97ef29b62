"""The reproduction pipeline as a list of stages, each a launcher command (or the data preparation) with a
marker file written when it finishes: a finished stage is skipped on the next run, an interrupted one is
re-run (the trainer and the sampler resume from what they saved), and a marker made by a different command
stops the run instead of mixing settings in one output directory."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dsl_scale.experiment.config import CHECKPOINTS, Experiment, Method

REPO = Path(__file__).resolve().parent.parent.parent
BIN = Path(sys.executable).parent


@dataclass
class Stage:
    name: str
    command: list[str] = field(default_factory=list)  # launcher script + overrides (for `action`: its settings)
    ranks: int = 1
    action: Callable[[], None] | None = None  # in-process work (data preparation)
    output: str = ""  # what the stage produces (shown in the progress line)


@dataclass
class Layout:
    """Where everything lives under the experiment's output directory."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    def run(self, name: str) -> Path:
        return self.root / "runs" / name

    def samples(self, method: Method, steps: int, seed: int) -> Path:
        return self.root / "samples" / f"{slug(method.label)}_T{steps}_seed{seed}.jsonl"

    def results(self, method: Method, steps: int, seed: int) -> Path:
        return self.root / "results" / f"{slug(method.label)}_T{steps}_seed{seed}.json"

    def analysis(self, checkpoint: str) -> Path:
        """The analyses (calibration, self-correction) of one arm."""
        return self.root / "results" / f"analysis_{checkpoint}.json"

    @property
    def markers(self) -> Path:
        return self.root / "stages"

    @property
    def logs(self) -> Path:
        return self.root / "logs"


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def training_overrides(e: Experiment, layout: Layout, run: str, steps: int, warmup: int) -> list[str]:
    t = e.train
    return [
        f"model={t.model}", f"model.seq_len={e.data.seq_len}", f"data.path={layout.data}",
        f"data.source={e.data.source}", f"data.tokenizer={e.data.tokenizer}", f"run_dir={layout.run(run)}",
        f"train.steps={steps}", f"train.global_batch={t.global_batch}", f"train.micro_batch={t.micro_batch}",
        f"optim.lr={t.lr}", f"optim.warmup_steps={warmup}", f"train.ema={t.ema}", f"train.seed={e.seed}",
        f"train.eval_every={min(t.eval_every, steps)}", f"train.save_every={min(t.save_every, steps)}",
        f"train.log_every={max(1, min(t.eval_every, steps) // 5)}", *t.overrides,
    ]


def hybrid_continuous_steps(e: Experiment, steps: int) -> int:
    return max(1, min(steps - 1, round(e.sample.hybrid_continuous_fraction * steps)))


def needs_ar(e: Experiment) -> bool:
    """The AR run scores gen-PPL and is the in-domain featurizer; without either it is not trained."""
    featurized = {"mauve", "frechet"} & set(e.eval.metrics) and e.eval.featurizer.startswith("ar")
    return "gen_ppl" in e.eval.metrics or bool(featurized)


def build_stages(e: Experiment, layout: Layout) -> list[Stage]:
    """Every stage in order: data, four training runs, sample + evaluate per (T, method, seed), the analyses."""
    from dsl_scale.experiment.data import prepare_once

    t, s = e.train, e.sample
    pretrain = layout.run("pretrain")
    stages = [
        Stage("data", ["prepare", f"source={e.data.source}", f"tokenizer={e.data.tokenizer}",
                       f"seq_len={e.data.seq_len}", f"val_fraction={e.data.val_fraction}"],
              action=lambda: prepare_once(e, layout.data), output=str(layout.data)),
        Stage("pretrain (MDLM)", ["pretrain.py", "objective=mdlm",
                                  *training_overrides(e, layout, "pretrain", t.pretrain_steps, t.warmup_steps)],
              t.ranks, output=str(pretrain)),
        Stage("continue MDLM", ["finetune.py", "objective=mdlm", f"init_from={pretrain}",
                                *training_overrides(e, layout, "mdlm", t.extra_steps, t.extra_warmup_steps)],
              t.ranks, output=str(layout.run("mdlm"))),
        Stage("fine-tune DSL", ["finetune.py", "objective=dsl", f"init_from={pretrain}",
                                *training_overrides(e, layout, "dsl", t.extra_steps, t.extra_warmup_steps),
                                *t.dsl_overrides], t.ranks, output=str(layout.run("dsl"))),
    ]
    if needs_ar(e):
        stages.append(Stage("AR baseline", ["pretrain.py", "objective=ar",
                                            *training_overrides(e, layout, "ar", t.ar_steps, t.warmup_steps)],
                            t.ranks, output=str(layout.run("ar"))))
    for steps in s.steps:
        for method in s.methods:
            for seed in s.seeds:
                stages += cell_stages(e, layout, method, steps, seed)
    for arm in CHECKPOINTS if e.eval.analyses else ():
        stages.append(analysis_stage(e, layout, arm))
    return stages


def cell_stages(e: Experiment, layout: Layout, method: Method, steps: int, seed: int) -> list[Stage]:
    """Sample one (method, T) cell with one sampling seed, then evaluate it (bootstraps seeded alike)."""
    s, v = e.sample, e.eval
    extra = [f"sampler.continuous_steps={hybrid_continuous_steps(e, steps)}"] if method.sampler == "dsl_hybrid" else []
    samples, results = layout.samples(method, steps, seed), layout.results(method, steps, seed)
    features = []
    if {"mauve", "frechet"} & set(v.metrics):
        features = [f"featurizer={v.featurizer}", f"feature_batch_size={v.feature_batch_size}",
                    f"cache_dir={layout.root / 'feature_cache'}"]
        if v.featurizer.startswith("ar"):
            features.append(f"featurizer_path={layout.run('ar')}")
    scorer = [f"scorer={layout.run('ar')}"] if "gen_ppl" in v.metrics else []
    cell = f"{method.label} T={steps} seed={seed}"
    return [
        Stage(f"sample {cell}", [
            "sample.py", f"checkpoint={layout.run(method.checkpoint)}", f"sampler={method.sampler}",
            f"steps={steps}", f"num_samples={s.num_samples}", f"batch_size={s.batch_size}", f"top_p={s.top_p}",
            f"seed={seed}", f"batch_invariant={str(s.batch_invariant).lower()}", f"out={samples}", *extra,
            *method.overrides], s.ranks, output=str(samples)),
        Stage(f"evaluate {cell}", [
            "evaluate.py", f"samples={samples}", f"reference={layout.data}", f"metrics=[{','.join(v.metrics)}]",
            *scorer, *features, f"bootstrap_resamples={v.bootstrap_resamples}", f"seed={seed}",
            f"out={results}"], 1, output=str(results)),
    ]


def analysis_stage(e: Experiment, layout: Layout, arm: str) -> Stage:
    """Calibration and self-correction of one arm's checkpoint on held-out blocks (launchers/evaluate.py)."""
    v = e.eval
    snr = [f"analysis_visible_snr={v.dsl_visible_snr}"] if arm == "dsl" and v.dsl_visible_snr is not None else []
    out = layout.analysis(arm)
    return Stage(f"analyse {arm}", [
        "evaluate.py", f"metrics=[{','.join(v.analyses)}]", f"checkpoint={layout.run(arm)}",
        f"reference={layout.data}", f"analysis_examples={v.analysis_examples}", *snr, f"seed={e.seed}",
        f"bootstrap_resamples={v.bootstrap_resamples}", f"out={out}"], 1, output=str(out))


def launcher_command(stage: Stage) -> list[str]:
    script = str(REPO / "launchers" / stage.command[0])
    if stage.ranks == 1:
        return [sys.executable, script, *stage.command[1:]]
    from dsl_scale.parallel.topology import free_port

    return [str(BIN / "torchrun"), "--nproc_per_node", str(stage.ranks), "--master_port", str(free_port()),
            script, *stage.command[1:]]


def marker_path(layout: Layout, index: int, stage: Stage) -> Path:
    return layout.markers / f"{index:03d}_{slug(stage.name)}.json"


def identity(stage: Stage) -> dict:
    return {"name": stage.name, "command": stage.command, "ranks": stage.ranks}


def finished(layout: Layout, index: int, stage: Stage) -> dict | None:
    """The stage's marker when it finished before with the same command; an error when the command differed.
    A marker is found by the stage's name wherever it stood, so a grid extended with seeds, methods or T
    values reuses the cells it already has (the marker is renumbered to the stage's new position)."""
    path = marker_path(layout, index, stage)
    if not path.is_file():
        moved = sorted(layout.markers.glob(f"[0-9][0-9][0-9]_{slug(stage.name)}.json"))
        if not moved:
            return None
        moved[0].rename(path)
    marker = json.loads(path.read_text())
    if {k: marker.get(k) for k in ("name", "command", "ranks")} != identity(stage):
        raise ValueError(f"{layout.root} holds stage {stage.name!r} made with other settings (see {path}); "
                         "use another --out directory, or delete that directory to start over")
    return marker


def child_env(ranks: int) -> dict[str, str]:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONWARNINGS": "ignore"}
    if ranks > 1:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // ranks))
    return env


def run_command(command: list[str], ranks: int, log: Path, echo: bool) -> None:
    """Run a launcher with its output in `log`; lines the launchers print for people ('[dsl_scale] ...')
    are echoed as progress. A failure raises with the log's tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=child_env(ranks), cwd=REPO, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if echo and line.startswith("[dsl_scale]"):
                print(f"      {line.rstrip()}", flush=True)
        code = proc.wait()
    if code != 0:
        tail = "".join(log.read_text(encoding="utf-8").splitlines(keepends=True)[-40:])
        raise RuntimeError(f"stage command failed with exit code {code} (full log: {log}):\n{tail}")


def run_stages(stages: list[Stage], layout: Layout, echo: bool = True) -> list[dict]:
    """Run what has not finished yet, in order; returns every stage's marker (name, seconds, skipped)."""
    layout.markers.mkdir(parents=True, exist_ok=True)
    started, records = time.time(), []
    for i, stage in enumerate(stages):
        prefix = f"[reproduce] {i + 1}/{len(stages)} {stage.name}"
        marker = finished(layout, i, stage)
        if marker is not None:
            print(f"{prefix}: done before ({marker['seconds']:.0f} s), skipped", flush=True)
            records.append({**marker, "skipped": True})
            continue
        print(f"{prefix} → {stage.output}", flush=True)
        t0 = time.time()
        if stage.action is not None:
            stage.action()
        else:
            run_command(launcher_command(stage), stage.ranks, layout.logs / f"{i:03d}_{slug(stage.name)}.log", echo)
        marker = {**identity(stage), "seconds": time.time() - t0, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        marker_path(layout, i, stage).write_text(json.dumps(marker, indent=2))
        records.append({**marker, "skipped": False})
        print(f"{prefix}: {marker['seconds']:.0f} s (total {time.time() - started:.0f} s)", flush=True)
    return records
