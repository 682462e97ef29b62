"""The checks of tools/gpu_smoke.sh that no command does by itself, one subcommand each (each start costs seconds).

    python tools/gpu_smoke_checks.py plan WHEELHOUSE [--versions FILE]   wheels to install, or a conflict
    python tools/gpu_smoke_checks.py hf RUN_DIR HF_DIR                   the HF export gives our logits
    python tools/gpu_smoke_checks.py figures RUN_DIR --label NAME [--device D] [--dtype bf16] [--json FILE]
    python tools/gpu_smoke_checks.py bf16-logits RUN_DIR [--device D] [--bound B]
    python tools/gpu_smoke_checks.py summary WORK_DIR OUT_FILE

- plan: which of the wheelhouse's wheels to install (torch's basics the machine already has stay), and whether
  every installed wheel's requirements hold against what stays on the machine: a conflict (tensorboard needing
  a newer protobuf than the one kept, transformers needing another tokenizers) stops the run before any work,
  naming the package, the version required and the version there;
- hf: the Hugging Face export, loaded by transformers, gives our model's logits (fp32, CPU);
- figures: tokens/s of a run (metrics.jsonl) and its MFU against the dense matmul peak measured now;
- bf16-logits: one sampling step's logits (ModelDenoiser on a half-masked state) in bf16 against fp32, within
  a stated bound on the RMS error relative to the fp32 logits' RMS;
- summary: summary.json from the steps' record (status, seconds, log per step), figures and versions.
Each prints `[smoke] ...` lines; a failed check exits non-zero.
"""

from __future__ import annotations

import argparse
import email.parser
import importlib.metadata
import json
import statistics
import sys
import zipfile
from pathlib import Path

SKIPPED_STEPS = 3  # the first steps include warm-up (allocator, kernel selection, compilation)
# torch's basics that a GPU machine's torch was built and tested with: kept when the machine has them
KEEP = {"numpy", "typing-extensions", "filelock", "fsspec", "packaging", "pyyaml", "requests", "urllib3", "idna",
        "certifi", "charset-normalizer", "protobuf", "psutil", "tqdm"}
WATCHED = ("torch", "protobuf", "transformers", "tokenizers", "deepspeed", "megatron-core", "numpy", "tensorboard")
BF16_BOUND = 0.05  # RMS(bf16 − fp32) / RMS(fp32) of one step's logits (bf16 keeps 8 significant bits)


def _canonical(name: str) -> str:
    return name.replace("_", "-").replace(".", "-").lower()


def _wheel_requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(z.read(meta).decode()).get_all("Requires-Dist") or []


def plan(wheelhouse: Path, installed: dict[str, str] | None = None) -> tuple[list[Path], dict[str, str], list[str]]:
    """(wheels to install, the versions after installing them, conflicts). `installed`: the machine's
    {canonical name: version} (default: this interpreter's)."""
    from packaging.requirements import Requirement
    from packaging.utils import parse_wheel_filename
    from packaging.version import Version

    if installed is None:
        installed = {_canonical(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    chosen, after = [], dict(installed)
    for wheel in sorted(wheelhouse.glob("*.whl")):
        name, version, _, _ = parse_wheel_filename(wheel.name)
        if name in KEEP and name in installed:
            print(f"[smoke] kept the machine's {name} {installed[name]} (the wheelhouse has {version})",
                  file=sys.stderr)
            continue
        chosen.append(wheel)
        after[name] = str(version)
    conflicts = []
    for wheel in chosen:
        name, version, _, _ = parse_wheel_filename(wheel.name)
        for line in _wheel_requirements(wheel):
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            dep = _canonical(req.name)
            if dep in after and not req.specifier.contains(Version(after[dep].split("+")[0]), prereleases=True):
                source = "the wheelhouse's" if any(parse_wheel_filename(w.name)[0] == dep for w in chosen) \
                    else "the machine's"
                conflicts.append(f"{name} {version} needs {req.name}{req.specifier}, but {source} {dep} "
                                 f"{after[dep]} is what would be installed")
    return chosen, after, conflicts


def cmd_plan(args) -> None:
    chosen, after, conflicts = plan(Path(args.wheelhouse))
    if args.versions:
        Path(args.versions).write_text(json.dumps({k: after[k] for k in WATCHED if k in after}, indent=1))
    if conflicts:
        sys.exit("[smoke] FAILED before any work: the wheelhouse conflicts with what stays on this machine:\n  "
                 + "\n  ".join(conflicts))
    if not chosen:
        sys.exit(f"[smoke] FAILED: no wheels to install in {args.wheelhouse}")
    print("\n".join(str(w) for w in chosen))


def world_of_one() -> None:
    """megatron-core's groups for a single process (our DiT is built from its layers)."""
    from dsl_scale.parallel.topology import init_process_groups

    init_process_groups(1, 1, backend="gloo")


def cmd_hf(args) -> None:
    """Our model (raw weights, fp32, CPU) and the export loaded by transformers give the same logits."""
    import torch
    import transformers

    from dsl_scale.checkpoint.inference import load_for_inference

    world_of_one()
    ours = load_for_inference(args.run_dir, weights="model", precision="fp32", device=torch.device("cpu"))
    theirs = transformers.AutoModelForMaskedLM.from_pretrained(args.hf_dir, trust_remote_code=True).eval()
    seq_len, vocab = ours.train_config.model.seq_len, ours.tokenizer.vocab_size
    ids = torch.randint(0, vocab, (2, seq_len), generator=torch.Generator().manual_seed(0), device="cpu")
    with torch.no_grad():
        a, b = ours.model(ids).float(), theirs(ids)[0].float()
    if not a.std() > 0:  # equal zeros would prove nothing
        sys.exit("[smoke] FAILED: our model's logits are constant")
    diff = (a - b).abs().max().item()
    print(f"[smoke] hf export reloaded by transformers ({type(theirs).__name__}): logits {tuple(b.shape)}, "
          f"max |ours - hf| = {diff:.2e} (tolerance {args.atol:g})", flush=True)
    if a.shape != b.shape or not diff <= args.atol:
        sys.exit("[smoke] FAILED: the exported model's logits differ from ours")


def cmd_figures(args) -> None:
    """Median tokens/s of the run's steps (metrics.jsonl) and MFU = model FLOP/s / the measured matmul peak."""
    import torch

    from dsl_scale.config import config_from_saved
    from dsl_scale.tokenizer import get_tokenizer
    from dsl_scale.train import metrics

    run = Path(args.run_dir)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = [r["tokens_per_s"] for r in records if r["step"] > SKIPPED_STEPS] or [r["tokens_per_s"] for r in records]
    tokens_per_s = statistics.median(rates)
    from omegaconf import OmegaConf

    cfg = config_from_saved(OmegaConf.load(run / "config.yaml"))
    vocab = get_tokenizer(cfg.data.tokenizer).vocab_size
    flops_per_token = metrics.model_flops_per_token(cfg.model, vocab, cfg.model.seq_len)
    device = torch.device(args.device)
    peak = metrics.measure_matmul_peak(device, {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype],
                                       size=8192 if device.type == "cuda" else 1024)
    achieved = tokens_per_s * flops_per_token
    figure = {"tokens_per_s": tokens_per_s, "steps_measured": len(rates), "flops_per_token": flops_per_token,
              "tflops": achieved / 1e12, "peak_tflops": peak / 1e12, "mfu_percent": 100 * achieved / peak,
              "model": cfg.model.name, "seq_len": cfg.model.seq_len, "compile": str(cfg.model.compile),
              "precision": args.dtype, "device": str(device)}
    print(f"[smoke] figures ({args.label}): {tokens_per_s:,.0f} tokens/s (median of {len(rates)} steps), "
          f"{flops_per_token / 1e6:.1f} MFLOP/token, {achieved / 1e12:.3f} TFLOP/s; "
          f"{args.dtype} matmul peak {peak / 1e12:.3f} TFLOP/s on {device} (measured now); "
          f"MFU {figure['mfu_percent']:.1f} %", flush=True)
    if args.json:
        path = Path(args.json)
        found = json.loads(path.read_text()) if path.exists() else {}
        found[args.label] = figure
        path.write_text(json.dumps(found, indent=1))


def cmd_bf16_logits(args) -> None:
    """One sampling step's logits through the sampler's denoiser, bf16 against fp32, on `--device`."""
    import torch

    from dsl_scale.checkpoint.inference import load_for_inference
    from dsl_scale.sampling.denoiser import ModelDenoiser

    world_of_one()
    device = torch.device(args.device)
    fp32 = load_for_inference(args.run_dir, weights="model", precision="fp32", device=device)
    bf16 = load_for_inference(args.run_dir, weights="model", precision="bf16", device=device)
    seq_len, mask_id = fp32.train_config.model.seq_len, fp32.tokenizer.mask_id
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, mask_id, (4, seq_len), generator=g, device="cpu")
    ids[torch.rand(4, seq_len, generator=g, device="cpu") < 0.5] = mask_id  # a mid-sampling state
    ids = ids.to(device)
    want = ModelDenoiser(fp32.model, batch_invariant=False)(ids).float()
    got = ModelDenoiser(bf16.model, batch_invariant=False)(ids).float()
    scale = want.pow(2).mean().sqrt().item()
    if not scale > 0:
        sys.exit("[smoke] FAILED: the fp32 logits are all zero")
    error = ((got - want).pow(2).mean().sqrt() / scale).item()
    agree = (got.argmax(-1) == want.argmax(-1)).double().mean().item()
    print(f"[smoke] bf16 sampling step: RMS(bf16 - fp32) / RMS(fp32) = {error:.2e} (bound {args.bound:g}), "
          f"argmax agreement {100 * agree:.1f} %", flush=True)
    if args.json:
        path = Path(args.json)
        found = json.loads(path.read_text()) if path.exists() else {}
        found["bf16_logits"] = {"relative_rms_error": error, "bound": args.bound, "argmax_agreement": agree}
        path.write_text(json.dumps(found, indent=1))
    if not error <= args.bound:
        sys.exit("[smoke] FAILED: bf16 logits are off fp32's by more than the bound")


def cmd_summary(args) -> None:
    """summary.json: per step its status, seconds and log; the figures; the versions; passed overall."""
    work = Path(args.work_dir)
    steps = []
    record = work / "steps.tsv"
    for line in (record.read_text().splitlines() if record.exists() else []):
        name, status, seconds, log = line.split("\t")
        steps.append({"step": name, "status": status, "seconds": int(seconds), "log": log})
    versions = {}
    versions_file = work / "versions.json"
    if versions_file.exists():
        versions = json.loads(versions_file.read_text())
    for name in WATCHED:
        if name not in versions:
            try:
                versions[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                pass
    figures_file = work / "figures.json"
    summary = {"passed": bool(steps) and all(s["status"] in ("passed", "skipped") for s in steps),
               "steps": steps, "figures": json.loads(figures_file.read_text()) if figures_file.exists() else {},
               "versions": versions}
    Path(args.out_file).write_text(json.dumps(summary, indent=1))
    print(f"[smoke] summary: {args.out_file} ({sum(s['status'] == 'passed' for s in steps)}/{len(steps)} steps "
          "passed)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan")
    p.add_argument("wheelhouse")
    p.add_argument("--versions", help="write the watched packages' versions after the install here (JSON)")
    p = sub.add_parser("hf")
    p.add_argument("run_dir")
    p.add_argument("hf_dir")
    p.add_argument("--atol", type=float, default=1e-4)
    for name in ("figures", "bf16-logits"):
        p = sub.add_parser(name)
        p.add_argument("run_dir")
        p.add_argument("--device", default="cpu")
        p.add_argument("--json", help="add the figures to this JSON file")
        if name == "figures":
            p.add_argument("--label", required=True)
            p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
        else:
            p.add_argument("--bound", type=float, default=BF16_BOUND)
    p = sub.add_parser("summary")
    p.add_argument("work_dir")
    p.add_argument("out_file")
    args = parser.parse_args()
    {"plan": cmd_plan, "hf": cmd_hf, "figures": cmd_figures, "bf16-logits": cmd_bf16_logits,
     "summary": cmd_summary}[args.command](args)


if __name__ == "__main__":
    main()
