"""The reproduction pipeline as a list of stages, each a launcher command (or the data preparation) with a
marker file written when it finishes: a finished stage is skipped on the next run, an interrupted one is
re-run (the trainer and the sampler resume from what they saved), and a marker made by a different command
stops the run instead of mixing settings in one output directory."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dsl_scale.experiment.config import AR, Experiment, Method, ar_run, arm_run, expanded_methods

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

    def analysis(self, run: str) -> Path:
        """The analyses (calibration, self-correction) of one arm's run."""
        return self.root / "results" / f"analysis_{run}.json"

    @property
    def markers(self) -> Path:
        return self.root / "stages"

    @property
    def logs(self) -> Path:
        return self.root / "logs"


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def training_overrides(e: Experiment, layout: Layout, run: str, steps: int, warmup: int,
                       seed: int | None = None) -> list[str]:
    t = e.train
    return [
        f"model={t.model}", f"model.seq_len={e.data.seq_len}", f"data.path={layout.data}",
        f"data.source={e.data.source}", f"data.tokenizer={e.data.tokenizer}", f"run_dir={layout.run(run)}",
        f"train.steps={steps}", f"train.global_batch={t.global_batch}", f"train.micro_batch={t.micro_batch}",
        # constant after warm-up, as in the recorded runs (dsl-finetune's own default preset decays along a cosine)
        f"optim.lr={t.lr}", f"optim.warmup_steps={warmup}", "optim.schedule=constant", f"train.ema={t.ema}",
        f"train.seed={e.seed if seed is None else seed}",
        f"train.eval_every={min(t.eval_every, steps)}", f"train.save_every={min(t.save_every, steps)}",
        f"train.log_every={max(1, min(t.eval_every, steps) // 5)}", *t.overrides,
    ]


def hybrid_continuous_steps(e: Experiment, steps: int) -> int:
    return max(1, min(steps - 1, round(e.sample.hybrid_continuous_fraction * steps)))


def needs_ar(e: Experiment) -> bool:
    """The AR run scores gen-PPL, is the in-domain featurizer and the AR row's generator; without any of these
    it is not trained."""
    featurized = {"mauve", "frechet"} & set(e.eval.metrics) and e.eval.featurizer.startswith("ar")
    return "gen_ppl" in e.eval.metrics or bool(featurized) or any(m.checkpoint == AR for m in e.sample.methods)


ARM_STAGE_NAMES = {"mdlm": "continue MDLM", "dsl": "fine-tune DSL"}  # the default arms' stage names, as before


def arm_stage_name(e: Experiment, arm: str, seed: int) -> str:
    name = ARM_STAGE_NAMES.get(arm, f"fine-tune {arm}")
    return name if seed == e.train.finetune_seeds[0] else f"{name} (ft seed {seed})"


def arm_stages(e: Experiment, layout: Layout) -> list[Stage]:
    """Every arm once per fine-tune seed, from the pretrained MDLM or an earlier arm's run of the same seed;
    all start a fresh optimizer, so equal `steps` are equal compute."""
    t, out = e.train, []
    for seed in t.finetune_seeds:
        for arm in t.arms:
            source = layout.run("pretrain") if arm.init_from == "pretrain" else layout.run(arm_run(e, arm.init_from,
                                                                                                 seed))
            run = arm_run(e, arm.name, seed)
            script = "finetune.py"
            out.append(Stage(arm_stage_name(e, arm.name, seed), [
                script, f"objective={arm.objective}", f"init_from={source}",
                *training_overrides(e, layout, run, arm.steps or t.extra_steps, t.extra_warmup_steps, seed),
                *arm.overrides], t.ranks, output=str(layout.run(run))))
    return out


def arm_runs(e: Experiment) -> list[tuple[str, str]]:
    """(run name, arm name) of every fine-tuning run."""
    return [(arm_run(e, a.name, seed), a.name) for seed in e.train.finetune_seeds for a in e.train.arms]


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
        *arm_stages(e, layout),
    ]
    if needs_ar(e):
        for seed in t.ar_seeds:
            run = ar_run(e, seed)
            name = "AR baseline" if run == "ar" else f"AR baseline (seed {seed})"
            stages.append(Stage(name, ["pretrain.py", "objective=ar",
                                       *training_overrides(e, layout, run, t.ar_steps, t.warmup_steps, seed)],
                                t.ranks, output=str(layout.run(run))))
    methods = expanded_methods(e)
    for steps in s.steps:
        for method in methods:
            if steps in method.steps:
                for seed in s.seeds:
                    stages += cell_stages(e, layout, method, steps, seed)
    for run, arm in arm_runs(e) if e.eval.analyses else ():
        stages.append(analysis_stage(e, layout, run, arm))
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
    if scorer and len(e.train.ar_seeds) > 1:
        scorer.append(f"scorer2={layout.run(ar_run(e, e.train.ar_seeds[1]))}")
    kn = [f"kn_order={v.kn_order}", f"cache_dir={layout.root / 'feature_cache'}"] if "kn_ppl" in v.metrics else []
    if features and kn:
        kn = kn[:1]
    cell = f"{method.label} T={steps} seed={seed}"
    run = method.run or method.checkpoint
    return [
        Stage(f"sample {cell}", [
            "sample.py", f"checkpoint={layout.run(run)}", f"sampler={method.sampler}",
            f"steps={steps}", f"num_samples={s.num_samples}", f"batch_size={s.batch_size}",
            f"top_p={s.top_p if method.top_p is None else method.top_p}",
            f"seed={seed}", f"batch_invariant={str(s.batch_invariant).lower()}", f"out={samples}", *extra,
            *method.overrides], s.ranks, output=str(samples)),
        Stage(f"evaluate {cell}", [
            "evaluate.py", f"samples={samples}", f"reference={layout.data}", f"metrics=[{','.join(v.metrics)}]",
            *scorer, *features, *kn, f"bootstrap_resamples={v.bootstrap_resamples}", f"seed={seed}",
            f"out={results}"], 1, output=str(results)),
    ]


def analysis_stage(e: Experiment, layout: Layout, run: str, arm: str | None = None) -> Stage:
    """Calibration and self-correction of one arm run's checkpoint on held-out blocks (launchers/evaluate.py);
    a DSL arm's visible tokens through the converter at eval.dsl_visible_snr."""
    v = e.eval
    objective = next((a.objective for a in e.train.arms if a.name == (arm or run)), "mdlm")
    snr = ([f"analysis_visible_snr={v.dsl_visible_snr}"] if objective == "dsl" and v.dsl_visible_snr is not None
           else [])
    out = layout.analysis(run)
    return Stage(f"analyse {run}", [
        "evaluate.py", f"metrics=[{','.join(v.analyses)}]", f"checkpoint={layout.run(run)}",
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


def say(line: str) -> None:
    """One progress line in one write, so the lines of stages running at once do not interleave."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def child_env(ranks: int, workers: int = 1) -> dict[str, str]:
    """A launcher's environment: with several ranks or several stages at once, each process gets its share of
    the cores (and keeps it: set_cpu_threads would otherwise give every one of them all the cores)."""
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONWARNINGS": "ignore"}
    if ranks * workers > 1:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // (ranks * workers)))
    if workers > 1:
        env["DSL_SCALE_KEEP_THREADS"] = "1"
    return env


def run_command(command: list[str], ranks: int, log: Path, echo: bool, workers: int = 1) -> None:
    """Run a launcher with its output in `log`; lines the launchers print for people ('[dsl_scale] ...')
    are echoed as progress. A failure raises with the log's tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=child_env(ranks, workers), cwd=REPO, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if echo and line.startswith("[dsl_scale]"):
                say(f"      {line.rstrip()}")
        code = proc.wait()
    if code != 0:
        raise failure(code, log, log.read_text(encoding="utf-8"))


def failure(code: int, log: Path, output: str) -> RuntimeError:
    tail = "".join(output.splitlines(keepends=True)[-40:])
    return RuntimeError(f"stage command failed with exit code {code} (full log: {log}):\n{tail}")


IN_PROCESS_SCRIPTS = ("sample.py", "evaluate.py")
REPLY = "REPLY "  # the line cli/cell_worker.py answers each command with


class CellWorkers:
    """Long-lived processes (cli/cell_worker.py) that run sample and evaluate commands, one per stage
    running at once, started on first use: a cell pays for one import of torch, DeepSpeed and megatron-core per
    worker instead of one per command."""

    def __init__(self, workers: int, logs: Path, echo: bool):
        self.workers, self.logs, self.echo = workers, logs, echo
        self.idle: queue.SimpleQueue = queue.SimpleQueue()
        self.started: list[subprocess.Popen] = []

    @staticmethod
    def takes(stage: Stage) -> bool:
        return stage.action is None and stage.ranks == 1 and stage.command[0] in IN_PROCESS_SCRIPTS

    def _start(self) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        err = open(self.logs / f"cell_worker_{len(self.started)}.log", "a", encoding="utf-8")
        proc = subprocess.Popen([sys.executable, "-m", "dsl_scale.cli.cell_worker"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1,
                                env=child_env(1, self.workers), cwd=REPO)
        err.close()
        self.started.append(proc)
        return proc

    def run(self, stage: Stage, log: Path) -> None:
        try:
            proc = self.idle.get_nowait()
        except queue.Empty:
            proc = self._start()
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as out:
            out.write(f"$ (cell worker {proc.pid}) {' '.join(stage.command)}\n")
        offset = log.stat().st_size
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps({"script": stage.command[0], "args": stage.command[1:], "log": str(log)}) + "\n")
        proc.stdin.flush()
        code = None
        for line in proc.stdout:
            if line.startswith(REPLY):
                code = json.loads(line[len(REPLY):])["rc"]
                break
        if code is None:  # the worker died: this stage fails, the next one starts a fresh worker
            raise RuntimeError(f"the cell worker running {stage.name!r} exited with {proc.wait()} (see {log} and "
                               f"{self.logs}/cell_worker_*.log)")
        self.idle.put(proc)
        with open(log, encoding="utf-8") as out:
            out.seek(offset)
            written = out.read()
        if self.echo:
            for line in written.splitlines():
                if line.startswith("[dsl_scale]"):
                    say(f"      {line}")
        if code != 0:
            raise failure(code, log, written)

    def close(self) -> None:
        for proc in self.started:
            if proc.poll() is None and proc.stdin is not None:
                proc.stdin.close()
        for proc in self.started:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


def stage_span(records: list[dict]) -> float:
    """Seconds from the first stage's start to the last one's end, by the markers' clocks (stages that ran at
    once count once; pauses between invocations count too); 0 without markers."""
    done = [r for r in records if r.get("finished")]
    ends = [time.mktime(time.strptime(r["finished"], "%Y-%m-%d %H:%M:%S")) for r in done]
    return max(ends) - min(end - r["seconds"] for end, r in zip(ends, done)) if done else 0.0


class BudgetReached(RuntimeError):
    """run_stages stopped before a stage because the invocation's time budget was spent."""


def dependencies(stages: list[Stage]) -> list[set[int]]:
    """For each stage, the earlier stages whose output it reads: an argument `key=PATH` naming an earlier
    stage's output (or a path under it). Stages that read nothing earlier can run beside each other."""
    outputs = [(i, s.output) for i, s in enumerate(stages) if s.output]
    needs = []
    for j, stage in enumerate(stages):
        values = [a.split("=", 1)[1] for a in stage.command[1:] if "=" in a]
        needs.append({i for i, out in outputs if i < j and any(v == out or v.startswith(out + os.sep)
                                                               for v in values)})
    return needs


def run_stages(stages: list[Stage], layout: Layout, echo: bool = True, budget_s: float = 0.0,
               workers: int = 1, in_process: bool = False) -> list[dict]:
    """Run what has not finished yet; returns every stage's marker (name, seconds, skipped). With workers > 1,
    up to that many launcher stages run at once, each once the stages it reads from (`dependencies`) have
    finished, in the list's order otherwise. With budget_s > 0, no stage starts once that many seconds have
    passed (BudgetReached once the running ones finish; rerun to continue). A failed stage starts nothing more
    and raises once the running ones finish. With in_process, sample and evaluate commands run in CellWorkers."""
    from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

    layout.markers.mkdir(parents=True, exist_ok=True)
    started = time.time()
    prefix = [f"[reproduce] {i + 1}/{len(stages)} {s.name}" for i, s in enumerate(stages)]
    records: list[dict | None] = [None] * len(stages)
    for i, stage in enumerate(stages):  # every marker checked before anything runs
        marker = finished(layout, i, stage)
        if marker is not None:
            say(f"{prefix[i]}: done before ({marker['seconds']:.0f} s), skipped")
            records[i] = {**marker, "skipped": True}
    needs = dependencies(stages)
    cells = CellWorkers(max(1, workers), layout.logs, echo) if in_process else None

    def execute(i: int) -> dict:
        stage, t0 = stages[i], time.time()
        say(f"{prefix[i]} → {stage.output}")
        log = layout.logs / f"{i:03d}_{slug(stage.name)}.log"
        if stage.action is not None:
            stage.action()
        elif cells is not None and cells.takes(stage):
            cells.run(stage, log)
        else:
            run_command(launcher_command(stage), stage.ranks, log, echo, workers)
        marker = {**identity(stage), "seconds": time.time() - t0, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        marker_path(layout, i, stage).write_text(json.dumps(marker, indent=2))
        say(f"{prefix[i]}: {marker['seconds']:.0f} s (total {time.time() - started:.0f} s)")
        return {**marker, "skipped": False}

    pending = [i for i in range(len(stages)) if records[i] is None]
    running: dict[Future, int] = {}
    stop: BaseException | None = None
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, contextlib.ExitStack() as cleanup:
        if cells is not None:
            cleanup.callback(cells.close)
        while pending or running:
            while stop is None and pending and len(running) < max(1, workers):
                ready = next((i for i in pending if all(records[d] is not None for d in needs[i])), None)
                if ready is None:
                    break
                if budget_s > 0 and time.time() - started >= budget_s:
                    stop = BudgetReached(
                        f"time budget of {budget_s / 60:.0f} min reached before stage {ready + 1}/{len(stages)} "
                        f"({stages[ready].name}); run the same command again to continue from there")
                    break
                pending.remove(ready)
                if stages[ready].action is not None and running:  # in-process work runs alone
                    pending.insert(0, ready)
                    break
                running[pool.submit(execute, ready)] = ready
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                i = running.pop(future)
                try:
                    records[i] = future.result()
                except Exception as err:  # the first failure is raised once the others finish
                    if stop is None or isinstance(stop, BudgetReached):
                        stop = err
    if stop is not None:
        raise stop
    if pending:
        raise RuntimeError(f"stages {[stages[i].name for i in pending]} wait on stages that did not run")
    return [r for r in records if r is not None]
