"""Run metrics: `metrics.jsonl` (one object per optimizer step), `eval.jsonl`, and TensorBoard scalars; the
step loop's wall-clock bookkeeping (step time, ETA, throughput, MFU, peak memory) and the log line it prints."""

from __future__ import annotations

import collections
import datetime
import json
import math
import os
import platform
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dsl_scale.config import ModelConfig

# Dense (no sparsity) bf16 tensor-core peaks in FLOP/s, matched in order against torch.cuda.get_device_name():
# the vendors' data-sheet figures for SXM / PCIe parts. A GPU not listed, or an fp32 run, uses a measured peak.
GPU_BF16_PEAKS: tuple[tuple[str, float], ...] = (
    ("GH200", 989e12), ("H200", 989e12), ("H100 NVL", 835e12), ("H100 PCIe", 756e12), ("H100", 989e12),
    ("H800", 989e12), ("B200", 2250e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("L4", 121e12),
)
PEAK_ENV = "DSL_SCALE_PEAK_FLOPS"  # a per-device peak that overrides the table and the measurement


class MetricsWriter:
    """Writes on the rank that owns it (rank 0); a no-op elsewhere."""

    def __init__(self, run_dir: Path, enabled: bool, wandb=None, config: dict | None = None):
        """`wandb`: the run's logging.wandb settings (train/trackers.py), `config` what W&B records of the run."""
        from dsl_scale.train.trackers import WandbTracker

        self.enabled = enabled
        self.metrics_path = run_dir / "metrics.jsonl"
        self.eval_path = run_dir / "eval.jsonl"
        self.tb = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"))
        self.tracker = WandbTracker(wandb, run_dir, config, enabled)

    def truncate_after(self, step: int) -> None:
        """Drop records of steps a resumed run is about to repeat (they were never checkpointed)."""
        if not self.enabled:
            return
        for path in (self.metrics_path, self.eval_path):
            if path.exists():
                kept = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
                path.write_text("".join(ln + "\n" for ln in kept))

    def _append(self, path: Path, record: dict) -> None:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def log_step(self, record: dict) -> None:
        if not self.enabled:
            return
        self._append(self.metrics_path, record)
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                self.tb.add_scalar(f"train/{key}", value, record["step"])
        self.tracker.log(record, "train")

    def log_eval(self, record: dict) -> None:
        if not self.enabled:
            return
        self._append(self.eval_path, record)
        for key, value in record.items():
            if key != "step":
                self.tb.add_scalar(f"eval/{key}", value, record["step"])
        self.tb.flush()
        self.tracker.log(record, "eval")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        self.tracker.finish()


# --- throughput and MFU ------------------------------------------------------------------------------------


def model_flops_per_token(model: ModelConfig, vocab_size: int, seq_len: int) -> float:
    """Training FLOPs per token of the whole model (every rank's share together): 6·N + 12·n_blocks·L·H, N the
    weights every token goes through (QKV, attention out and both MLP matrices of each block, the output
    projection), 12·n_blocks·L·H the attention scores and their weighted sum, forward and backward; the count
    of tools/bench_train.py, from the config instead of a rank's module so that any TP × PP layout gives it."""
    h = model.hidden
    per_block = 4 * h * h + 2 * model.mlp_ratio * h * h
    weights = model.n_blocks * per_block + h * vocab_size
    return 6 * weights + 12 * model.n_blocks * seq_len * h


def _cache_file() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "dsl_scale" / "matmul_peak.json"


def _processor_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_matmul_peak(device: torch.device, dtype: torch.dtype, size: int = 1024, repeats: int = 5) -> float:
    """Dense matmul FLOP/s on `device`: the best of `repeats` n × n products after one warm-up (2n³ each)."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.mm(a, b)
    sync()
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        sync()
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def cached_matmul_peak(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """The measured peak of this processor, thread count, dtype and torch version, measured once (a fraction
    of a second) and then read from ~/.cache/dsl_scale/matmul_peak.json, so that runs on one machine compare."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _processor_name()
    key = f"{device.type}|{name}|threads={torch.get_num_threads()}|{dtype}|torch={torch.__version__}"
    path = _cache_file()
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if not isinstance(cache.get(key), (int, float)):
        cache[key] = measure_matmul_peak(device, dtype)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            staging = path.with_name(f".{path.name}.{os.getpid()}")
            staging.write_text(json.dumps(cache, indent=1))
            os.replace(staging, path)
        except OSError:  # a read-only home: the figure is still right for this run
            pass
    return float(cache[key]), f"measured {dtype} matmul on {name} ({torch.get_num_threads()} threads), {path}"


def device_peak_flops(device: torch.device, precision: str) -> tuple[float, str]:
    """(peak FLOP/s of one device, where the figure comes from)."""
    if os.environ.get(PEAK_ENV):
        return float(os.environ[PEAK_ENV]), f"${PEAK_ENV}"
    if device.type == "cuda" and precision == "bf16":
        name = torch.cuda.get_device_name(device)
        for part, peak in GPU_BF16_PEAKS:
            if part in name:
                return peak, f"{name}, dense bf16 data-sheet peak"
    return cached_matmul_peak(device, torch.bfloat16 if precision == "bf16" else torch.float32)


def peak_memory_bytes(device: torch.device) -> int:
    """This process's peak: CUDA memory allocated by torch on a GPU, else the resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, kB on Linux


@dataclass(frozen=True)
class Throughput:
    flops_per_token: float
    peak_flops: float  # all devices of the run together
    peak_source: str


def run_throughput(model: ModelConfig, vocab_size: int, world_size: int, device: torch.device,
                   precision: str) -> Throughput:
    """The run's model FLOPs per token and its devices' summed peak (each rank one device; on the CPU the
    ranks split the cores, so one rank's measured peak with its threads, times the ranks)."""
    peak, source = device_peak_flops(device, precision)
    return Throughput(model_flops_per_token(model, vocab_size, model.seq_len), peak * world_size,
                      f"{world_size} × {peak / 1e9:,.1f} GFLOP/s ({source})")


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(max(seconds, 0.0)))
    days, rest = divmod(seconds, 86400)
    text = str(datetime.timedelta(seconds=rest))
    return f"{days}d {text}" if days else text


def _bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n} B"


class Progress:
    """The step loop's clock. `fields` gives each step's record its wall-clock time, step time, ETA,
    throughput, MFU and peak memory; `line` formats a log line of a record. Step time in the log line and the
    ETA average the last `window` steps between records (checkpoints and evaluations included), which on a
    GPU also makes them right where one step's host time is not (the device runs behind the host)."""

    def __init__(self, first_step: int, total_steps: int, tokens_per_step: int, device: torch.device,
                 throughput: Throughput | None = None, max_minutes: float = 0.0, window: int = 20):
        self.total, self.tokens_per_step, self.device = total_steps, tokens_per_step, device
        self.throughput, self.max_minutes = throughput, max_minutes
        self.first_step, self.window = first_step, window
        self.start()

    def start(self) -> None:
        self.started = time.perf_counter()
        self.deadline = self.started + self.max_minutes * 60 if self.max_minutes > 0 else math.inf
        self.ends: collections.deque[tuple[int, float]] = collections.deque([(self.first_step, self.started)],
                                                                            maxlen=self.window + 1)

    @property
    def plan(self) -> str:
        """What the run will do, for its first log line."""
        steps = f"steps {self.first_step} → {self.total}"
        if self.max_minutes > 0:
            return f"{steps} or {self.max_minutes:g} min of training, whichever comes first (time-boxed)"
        return steps

    def mean_step_s(self) -> float:
        (first, t0), (last, t1) = self.ends[0], self.ends[-1]
        return (t1 - t0) / (last - first) if last > first else math.nan

    def eta_s(self, step: int) -> float:
        now = self.ends[-1][1]
        by_steps = self.mean_step_s() * (self.total - step)
        return min(by_steps, self.deadline - now) if math.isfinite(by_steps) else self.deadline - now

    def fields(self, step: int, step_s: float) -> dict:
        """The wall-clock fields of step `step`'s record, `step_s` the host time of its optimizer step."""
        now = time.perf_counter()
        self.ends.append((step, now))
        tokens_per_s = self.tokens_per_step / step_s
        record = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
                  "wall_s": now - self.started, "step_s": step_s, "tokens_per_s": tokens_per_s,
                  "eta_s": self.eta_s(step)}
        if self.throughput is not None:
            record["mfu"] = tokens_per_s * self.throughput.flops_per_token / self.throughput.peak_flops
        record["peak_mem_bytes"] = peak_memory_bytes(self.device)
        return record

    def line(self, record: dict) -> str:
        """One log line: time, step / total, the step's values, then step time, tokens/s, MFU, memory, ETA."""
        skip = {"step", "time", "wall_s", "step_s", "tokens_per_s", "eta_s", "mfu", "peak_mem_bytes"}
        clock = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S")
        step = record["step"]
        where = f"step {step}/{self.total}"
        values = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in record.items() if k not in skip)
        mean = self.mean_step_s()
        step_s = mean if math.isfinite(mean) else record["step_s"]
        rate = self.tokens_per_step / step_s
        speed = f"{step_s:.3g} s/step {rate:,.0f} tok/s"
        if self.throughput is not None:
            speed += f" MFU {100 * rate * self.throughput.flops_per_token / self.throughput.peak_flops:.1f}%"
        speed += f" mem {_bytes(record['peak_mem_bytes'])}"
        eta = f"ETA {_duration(record['eta_s'])}"
        if self.max_minutes > 0:
            left = self.deadline - self.ends[-1][1]
            eta += f" (time box {self.max_minutes:g} min, {_duration(left)} left)"
        return f"{clock} {where} {values} | {speed} | {eta}"
