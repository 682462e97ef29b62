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

from dsl_scale.experiment.config import Experiment, Method

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

    def samples(self, method: Method, steps: int) -> Path:
        return self.root / "samples" / f"{slug(method.label)}_T{steps}.jsonl"

    def results(self, method: Method, steps: int) -> Path:
        return self.root / "results" / f"{slug(method.label)}_T{steps}.json"

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


def build_stages(e: Experiment, layout: Layout) -> list[Stage]:
    """Every stage of the experiment in order (data, four training runs, then sample + evaluate per cell)."""
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
        Stage("AR baseline", ["pretrain.py", "objective=ar",
                              *training_overrides(e, layout, "ar", t.ar_steps, t.warmup_steps)],
              t.ranks, output=str(layout.run("ar"))),
    ]
    for steps in s.steps:
        for method in s.methods:
            extra = [f"sampler.continuous_steps={hybrid_continuous_steps(e, steps)}"] \
                if method.sampler == "dsl_hybrid" else []
            samples = layout.samples(method, steps)
            stages.append(Stage(f"sample {method.label} T={steps}", [
                "sample.py", f"checkpoint={layout.run(method.checkpoint)}", f"sampler={method.sampler}",
                f"steps={steps}", f"num_samples={s.num_samples}", f"batch_size={s.batch_size}",
                f"top_p={s.top_p}", f"seed={e.seed}", f"batch_invariant={str(s.batch_invariant).lower()}",
                f"out={samples}", *extra, *method.overrides], s.ranks, output=str(samples)))
            stages.append(Stage(f"evaluate {method.label} T={steps}", [
                "evaluate.py", f"samples={samples}", f"reference={layout.data}", f"scorer={layout.run('ar')}",
                f"metrics=[{','.join(e.eval.metrics)}]", f"featurizer={e.eval.featurizer}",
                f"feature_batch_size={e.eval.feature_batch_size}", f"cache_dir={layout.root / 'feature_cache'}",
                f"out={layout.results(method, steps)}"], 1, output=str(layout.results(method, steps))))
    return stages


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
    """The stage's marker when it finished before with the same command; an error when the command differed."""
    path = marker_path(layout, index, stage)
    if not path.is_file():
        return None
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
