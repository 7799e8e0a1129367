"""SynthSeg CPU benchmark: the modes users run, named by their command-line flags.

    python benchmarks/synthseg_cpu.py [--modes "--vol --qc" vol "robust vol qc" ...] [--threads 2] [--runs 1]
                                      [--model FOLDER] [--image PATH] [--full-head] [--device cpu|cuda]
                                      [--vs-reference SYNTHSEG_DIR --reference-python TF_ENV/bin/python]

Prints the CPU model and ISA (AVX2 / AVX-512 / AMX from /proc/cpuinfo), the float32 FMA peak
(FMA datapath width x FMA units x 2 flops x cores x clock, and measured: the faster of a 4096^2
sgemm and a oneDNN 1x1x1 convolution), then per mode
and run: wall time, per-stage times (model load, preprocess, each network pass, QC, post-processing,
writing), each network pass's achieved GFLOP/s (operations counted as direct convolutions would
do them; the fast paths do fewer) against both peaks, and peak RSS. Each mode runs in
its own process, so its peak RSS is its own.

--vs-reference DIR times the reference CLI (DIR/scripts/commands/SynthSeg_predict.py, BBillot/SynthSeg
66342c1, under the TensorFlow environment --reference-python points to) on the same image with the
same flags and threads, interleaved with ours run by run (paired), and prints the ratios of the medians.
A reference run that fails is reported with its reason, time and peak RSS, and not repeated for that
mode: on a 24 GiB AVX2 Zen 3 its --qc modes stop with std::bad_alloc under Linux's default heuristic
overcommit; `sysctl vm.overcommit_memory=1` (root, for the run) lets them finish at a 9.7 GiB peak.
--reference-env sets variables for the reference's processes only (e.g. TF_ENABLE_ONEDNN_OPTS=0).
Both sides are timed as whole processes (interpreter start, imports and model load included); our
in-process segment + write time and per-stage times are printed beside. --onednn-verbose adds one QC
pass under ONEDNN_VERBOSE=1 and lists the primitive oneDNN chose for each convolution.
The reference reads its weights from DIR/models: without --model, the fixture weights
(../shared/fixtures/synthseg/models) are unpacked there when absent.

Weights: --model (a folder with the standard file names), else the fixture weights (unpacked to a
temporary folder); the random fixture weights cost the same time as the real ones. Timings on a
shared machine are noisy: run the pairs when it is quiet, or read the ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SEGSUITE_SHARED", REPO.parent / "shared"))
# the command line's flags -> the engine's options (--vol is always computed)
MODES = {"--vol": {}, "--vol --qc": {"qc": True}, "--robust --vol --qc": {"robust": True, "qc": True},
         "--parc --vol --qc": {"parc": True, "qc": True}, "--fast": {"fast": True},
         "--robust --vol": {"robust": True}, "--parc --vol": {"parc": True}}
DEFAULT_MODES = ["--vol --qc", "--vol", "--robust --vol --qc"]
# the engine's progress messages that start each stage, in order, and the stage they start
STAGES = [("preprocessing", "preprocess"), ("segmenting", "unet pass 1"),
          ("segmenting the flipped image", "unet pass 2 (flipped)"),
          ("robust: denoising the labels", "robust l2l"), ("robust: segmenting", "robust unet2"),
          ("parcellating the cortex", "parcellation"), ("quality control", "qc"),
          ("postprocessing", "postprocess"), ("done", None)]


# ---- the CPU ------------------------------------------------------------------------------------
def cpu_info() -> dict:
    """Model, ISA and a nominal clock from /proc/cpuinfo (Linux; elsewhere what platform says)."""
    model, flags, mhz = platform.processor() or platform.machine(), set(), None
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    vendor, family, model_number = "", None, None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key == "cpu family" and family is None:
            family = int(value)
        elif key == "model" and model_number is None:
            model_number = int(value)
        elif key == "model name" and model in ("", platform.machine(), platform.processor()):
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
        elif key == "cpu MHz" and mhz is None:
            mhz = float(value)
    isa = [name for name, flag in (("AVX2", "avx2"), ("AVX-512", "avx512f"), ("AMX", "amx_tile")) if flag in flags]
    width = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4  # float32 lanes
    units = 2
    if vendor == "AuthenticAMD" and family is not None and family < 0x1A and width == 16:
        # Zen 4 runs AVX-512 on its two 256-bit FMA pipes: one 16-lane FMA per cycle
        units = 1
    if family is not None:
        model += f" (family {family} model {model_number})"
    return {"model": model, "vendor": vendor, "family": family, "isa": isa, "fma": "fma" in flags,
            "lanes": width, "fma_units": units, "mhz": mhz}


def nominal_peak_gflops(info: dict, threads: int) -> float | None:
    """lanes x FMA units x 2 flops x cores x clock (the clock /proc/cpuinfo reports; turbo and
    AVX-512 down-clocking move it, and some Intel parts have one AVX-512 FMA unit)."""
    if not info["mhz"]:
        return None
    return info["lanes"] * info["fma_units"] * (2 if info["fma"] else 1) * threads * info["mhz"] / 1000


def measured_peak_gflops(threads: int, size: int = 4096) -> tuple[float, str]:
    """The faster of two dense kernels, (GFLOP/s, which): a size^2 sgemm (MKL, which takes a slower
    path on some AMD parts) and a 256 -> 256 1x1x1 channels-last convolution (oneDNN, the library
    the networks' convolutions run on), each the best of 3."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)

    def best_seconds(run) -> float:
        run()
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - start)
        return best

    a, b = torch.randn(size, size), torch.randn(size, size)
    sgemm = 2 * size ** 3 / best_seconds(lambda: torch.mm(a, b)) / 1e9
    del a, b
    channels, side = 256, 64
    x = torch.randn(1, channels, side, side, side).contiguous(memory_format=torch.channels_last_3d)
    w = torch.randn(channels, channels, 1, 1, 1)
    with torch.inference_mode():
        conv = 2 * channels * channels * side ** 3 / best_seconds(lambda: F.conv3d(x, w)) / 1e9
    if conv > sgemm:
        return conv, f"oneDNN 256 -> 256 1x1x1 conv; sgemm {sgemm:.0f}"
    return sgemm, f"{size}^2 sgemm; oneDNN 1x1x1 conv {conv:.0f}"


# ---- network operation counts -------------------------------------------------------------------
def _conv_gflop(conv, voxels: int) -> float:
    k = conv.kernel_size
    return 2 * k[0] * k[1] * k[2] * conv.in_channels * conv.out_channels * voxels / 1e9


def unet_gflop(net, shape) -> float:
    """Multiply-adds x 2 of a KerasUNet's convolutions on an input of ``shape`` (X, Y, Z)."""
    def voxels(level):
        count = 1
        for size in shape:
            for _ in range(level):
                size = -(-size // 2)
            count *= size
        return count

    total = 0.0
    for name, layer in net.layers.items():
        if not hasattr(layer, "kernel_size"):
            continue
        parts = name[len(net.prefix) + 1:].split("_")
        if parts[0] == "likelihood":
            level = 0
        elif parts[1] == "downarm":
            level = int(parts[2])
        else:  # uparm_<n_levels + step>: level n_levels - 2 - step
            level = 2 * net.n_levels - 2 - int(parts[2])
        total += _conv_gflop(layer, voxels(level))
    return total


def qc_gflop(net, size: int = 224) -> float:
    """The QC network's convolutions as a direct convolution would count them (the fast path does
    level 0's one-hot convolutions as look-ups, so its real operation count is lower)."""
    total = 0.0
    for name, layer in net.layers.items():
        if not hasattr(layer, "kernel_size"):
            continue
        parts = name[len(net.prefix) + 1:].split("_")
        level = net.n_levels if parts[0] == "final" else int(parts[2]) if parts[0] == "conv" else int(parts[-1])
        total += _conv_gflop(layer, (-(-size // 2 ** level)) ** 3)
    return total


# ---- one mode in its own process ----------------------------------------------------------------
def child(args) -> None:
    sys.path.insert(0, str(REPO / "SegmentationSuite"))
    import nibabel as nib
    import numpy as np

    from segsuite.synthseg import SynthSegEngine
    from segsuite.synthseg import labels as L

    started = time.perf_counter()
    engine = SynthSegEngine(model=args.model, device=args.device, threads=args.threads, **MODES[args.child])
    load = time.perf_counter() - started
    runs = []
    for _ in range(args.repeats):
        marks = {}
        begin = time.perf_counter()

        def progress(fraction, message):
            marks.setdefault(message, time.perf_counter() - begin)

        result = engine.segment(args.image, progress=progress)
        before_write = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            nib.save(nib.Nifti1Image(result.labels, result.affine), os.path.join(folder, "seg.nii.gz"))
            with open(os.path.join(folder, "volumes.csv"), "w") as handle:
                handle.write(",".join(result.volumes) + "\n" + ",".join(f"{v:.6f}" for v in result.volumes.values()))
        end = time.perf_counter()
        known = [(marks[m], stage) for m, stage in STAGES if m in marks]
        stages = {stage: round(known[i + 1][0] - t, 2) for i, (t, stage) in enumerate(known[:-1]) if stage}
        stages["write"] = round(end - before_write, 2)
        runs.append({"wall_s": round(end - begin, 2), "stages": stages})
    shape = result.provenance["network_input_shape"]
    gflop = {}
    if engine.robust:
        gflop["robust unet"] = unet_gflop(engine.unet, shape)
        gflop["robust l2l"] = unet_gflop(engine.l2l, shape)
        gflop["robust unet2"] = unet_gflop(engine.unet2, shape)
    else:
        gflop["unet pass 1"] = unet_gflop(engine.unet, shape)
        if engine.flip is not None:
            gflop["unet pass 2 (flipped)"] = gflop["unet pass 1"]
    if engine.unet_parc is not None:
        gflop["parcellation"] = unet_gflop(engine.unet_parc, shape)
    if engine.qc_net is not None:
        gflop["qc"] = qc_gflop(engine.qc_net, L.QC_INPUT_SHAPE)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB
    print(json.dumps({"mode": args.child, "load_s": round(load, 2), "runs": runs, "peak_rss_gib": round(peak, 2),
                      "gflop": gflop, "network_input": shape}))


def qc_pass(threads: int) -> None:
    """One pass of the QC network's fast path on a 224^3 window of a brain-like label ellipsoid
    (random weights: the primitives depend on the shapes only)."""
    sys.path.insert(0, str(REPO / "SegmentationSuite"))
    import torch

    from segsuite.nets.qc import KerasQCNet

    torch.set_num_threads(threads)
    size = 224
    grid = torch.stack(torch.meshgrid(*[torch.arange(size, dtype=torch.float32) - size / 2] * 3, indexing="ij"))
    inside = (grid[0] / 70) ** 2 + (grid[1] / 85) ** 2 + (grid[2] / 75) ** 2 < 1
    labels = torch.where(inside, torch.randint(1, 9, (size,) * 3), torch.zeros((), dtype=torch.int64))
    net = KerasQCNet()  # built outside inference mode, as the engine builds it
    with torch.inference_mode():
        net.scores(labels)


def onednn_summary(threads: int) -> None:
    """The oneDNN primitives of one QC pass (ONEDNN_VERBOSE=1): implementation, problem and time
    per convolution, and a warning for any reference (non-JIT) or gemm-based implementation."""
    env = dict(os.environ, ONEDNN_VERBOSE="1")
    done = subprocess.run([sys.executable, __file__, "--child-onednn", "--threads", str(threads)], env=env,
                          check=True, capture_output=True, text=True)
    rows = {}
    for line in done.stdout.splitlines():
        fields = line.split(",")
        if not line.startswith("onednn_verbose") or "exec" not in fields or "convolution" not in fields:
            continue
        at = fields.index("convolution")
        implementation = fields[at + 1]
        problem = next((f for f in fields if f.startswith("mb")), "?")
        count, total = rows.get((implementation, problem), (0, 0.0))
        rows[(implementation, problem)] = (count + 1, total + float(fields[-1]))
    print("oneDNN convolutions of one QC pass (the FFT layers are not oneDNN's and do not appear):")
    for (implementation, problem), (count, total) in rows.items():
        flag = "  <- reference/gemm fallback" if ("ref" in implementation or "gemm" in implementation) else ""
        print(f"  {implementation:28s} {problem:60s} x{count} {total / 1000:6.2f} s{flag}")
    if not rows:
        print("  none logged (is this torch built with oneDNN?)")


def run_ours(args, mode: str) -> dict:
    command = [sys.executable, __file__, f"--child={mode}",  # "=": a lone "--vol" is not an option
               "--device", args.device, "--threads", str(args.threads),
               "--repeats", "1", "--model", args.model, "--image", args.image]
    begin = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    # the whole process, as the reference is timed: interpreter start, imports, model load included
    report["process_s"] = round(time.perf_counter() - begin, 2)
    return report


def _has_a_row(table: str) -> bool:
    """A CSV the reference wrote with a subject's row under its header (it writes the header first)."""
    try:
        with open(table) as handle:
            return sum(1 for line in handle if line.strip()) >= 2
    except OSError:
        return False


def run_reference(args, mode: str) -> dict:
    """Wall time and peak RSS of the reference CLI with the same flags (outputs in a temporary folder)."""
    script = Path(args.vs_reference) / "scripts" / "commands" / "SynthSeg_predict.py"
    with tempfile.TemporaryDirectory() as folder:
        command = [args.reference_python, str(script), "--i", args.image, "--o", folder, "--threads", str(args.threads)]
        for flag in mode.split():
            command.append(flag)
            if flag in ("--vol", "--qc"):
                command.append(os.path.join(folder, flag[2:] + ".csv"))
        log = open(os.path.join(folder, "log.txt"), "w+")
        begin = time.perf_counter()
        # the reference's own environment: a PYTHONPATH meant for ours (a checkout under test) has
        # modules that shadow the reference's
        env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
        env.update(args.reference_env)
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)  # this process's own peak RSS
        wall = time.perf_counter() - begin
        process.returncode = os.waitstatus_to_exitcode(status)
        report = {"wall_s": round(wall, 2), "peak_rss_gib": round(usage.ru_maxrss / 2 ** 20, 2)}
        tables = [os.path.join(folder, flag[2:] + ".csv") for flag in mode.split() if flag in ("--vol", "--qc")]
        if process.returncode or not all(_has_a_row(table) for table in tables):
            # a failed run is a result too (the reference's --qc on a 24 GiB AVX2 machine: std::bad_alloc):
            # kept with its reason, not timed as a finished run
            log.seek(0)
            lines = [line for line in log.read().strip().splitlines() if line.strip()]
            reason = next((line.strip() for line in reversed(lines) if "what()" in line or "Error" in line),
                          lines[-1].strip() if lines else "no output")
            report["failed"] = f"{reason} (exit status {process.returncode})"
        log.close()
    return report


def unpack_fixture_models(folder: Path) -> None:
    source = SHARED / "fixtures" / "synthseg" / "models"
    if not source.is_dir():
        sys.exit(f"no --model given and {source} is absent")
    folder.mkdir(parents=True, exist_ok=True)
    for packed in source.glob("*.h5.gz"):
        target = folder / packed.name[:-3]
        if not target.exists():
            with gzip.open(packed, "rb") as reader, open(target, "wb") as writer:
                shutil.copyfileobj(reader, writer)


def report_run(mode: str, report: dict, run: dict, nominal, measured) -> None:
    stages = ", ".join(f"{k} {v:.1f}" for k, v in run["stages"].items())
    print(f"  ours {mode:22s} process {report['process_s']:6.1f} s (segment + write {run['wall_s']:.1f} s), peak RSS {report['peak_rss_gib']:.2f} GiB, "
          f"load {report['load_s']:.1f} s; stages (s): {stages}")
    for net, gflop in report["gflop"].items():
        seconds = run["stages"].get(net) or (run["stages"].get("unet pass 1") if net == "robust unet" else None)
        if not seconds:
            continue
        rate = gflop / seconds
        shares = f"{100 * rate / measured:.0f}% of measured" + (f", {100 * rate / nominal:.0f}% of nominal" if nominal else "")
        print(f"       {net:22s} {gflop:7.0f} GFLOP in {seconds:5.1f} s = {rate:6.1f} GFLOP/s ({shares})")


def normal_mode(text: str, parser) -> str:
    """'robust vol qc' or '--robust --vol --qc' -> '--robust --vol --qc' (argparse takes a lone
    '--vol' for an option, so the dashes may be left out)."""
    mode = " ".join(word if word.startswith("--") else "--" + word for word in text.split())
    if mode not in MODES:
        parser.error(f"unknown mode {text!r}; choose from {', '.join(MODES)}")
    return mode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu (the figures in the docs), cuda or cuda:N")
    parser.add_argument("--runs", "--repeats", dest="repeats", type=int, default=1,
                        help="runs per mode, each paired with one of the reference's (ours, reference, ours, ...)")
    parser.add_argument("--onednn-verbose", action="store_true",
                        help="also run one QC pass under ONEDNN_VERBOSE=1 and list the primitive oneDNN chose per convolution")
    parser.add_argument("--child-onednn", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model")
    parser.add_argument("--image")
    parser.add_argument("--modes", nargs="+", default=DEFAULT_MODES,
                        help='flag sets, quoted: --modes "--vol --qc" "robust vol qc" vol (a lone flag without '
                             f'its dashes); one of {", ".join(MODES)}')
    parser.add_argument("--full-head", action="store_true", help="segment data/t1/t1_crop.nii.gz (256^3) instead")
    parser.add_argument("--vs-reference", metavar="DIR", help="a BBillot/SynthSeg checkout (66342c1) to time beside ours")
    parser.add_argument("--reference-python", help="the python of the TensorFlow environment for --vs-reference")
    parser.add_argument("--reference-env", metavar="NAME=VALUE", nargs="+", default=[],
                        help="environment variables for the reference's processes only, e.g. TF_ENABLE_ONEDNN_OPTS=0 "
                             "(TensorFlow's own kernels instead of oneDNN)")
    parser.add_argument("--child", choices=list(MODES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.child_onednn:
        qc_pass(args.threads)
        return
    sys.stdout.reconfigure(line_buffering=True)  # progress lines as they come, also into a file
    args.modes = [normal_mode(mode, parser) for mode in args.modes]
    if args.vs_reference and not args.reference_python:
        parser.error("--vs-reference needs --reference-python (the TensorFlow environment's python)")
    if any("=" not in item for item in args.reference_env):
        parser.error("--reference-env takes NAME=VALUE items")
    args.reference_env = dict(item.split("=", 1) for item in args.reference_env)
    if args.image is None:
        args.image = str(SHARED / "data" / "t1" / "t1_crop.nii.gz") if args.full_head else \
            str(SHARED / "fixtures" / "synthseg" / "inputs" / "t1_crop_fov.nii.gz")
    cleanup = None
    if args.model is None:
        cleanup = tempfile.mkdtemp(prefix="synthseg_bench_models_")
        unpack_fixture_models(Path(cleanup))
        args.model = cleanup
        if args.vs_reference:
            unpack_fixture_models(Path(args.vs_reference) / "models")
    info = cpu_info()
    nominal = nominal_peak_gflops(info, args.threads)
    measured, measured_by = measured_peak_gflops(args.threads)
    try:
        print(f"CPU {info['model']}, ISA {' / '.join(info['isa']) or 'SSE'}, {args.threads} threads; float32 FMA peak "
              + (f"nominal {nominal:.0f} GFLOP/s ({info['lanes']} lanes x {info['fma_units']} FMA units x 2 x {args.threads} cores x "
                 f"{info['mhz']:.0f} MHz), " if nominal else "")
              + f"measured {measured:.0f} GFLOP/s ({measured_by})")
        print(f"image {args.image}, {args.device}, {args.repeats} run(s) per mode"
              + (", paired with the reference (ours, reference, ours, ...)" if args.vs_reference else "")
              + (f", reference environment {' '.join(f'{k}={v}' for k, v in args.reference_env.items())}"
                 if args.reference_env else "")
              + "; timings on a shared machine are noisy")
        for mode in args.modes:
            ours, reference = [], []
            for _ in range(args.repeats):
                report = run_ours(args, mode)
                ours.append(report)
                report_run(mode, report, report["runs"][0], nominal, measured)
                if args.vs_reference and not (reference and "failed" in reference[-1]):
                    # a failure (out of memory) repeats: the mode's later runs time ours only, so
                    # a failed run is always the mode's last reference run
                    reference.append(run_reference(args, mode))
                    failed = reference[-1].get("failed")
                    print(f"  ref  {mode:22s} wall {reference[-1]['wall_s']:6.1f} s, peak RSS "
                          f"{reference[-1]['peak_rss_gib']:.2f} GiB" + (f", FAILED: {failed}" if failed else ""))
            median = statistics.median(r["process_s"] for r in ours)
            rss = max(r["peak_rss_gib"] for r in ours)
            line = f"{mode:22s} ours median {median:.1f} s (peak RSS {rss:.2f} GiB"
            qc = [r["runs"][0]["stages"]["qc"] for r in ours if "qc" in r["runs"][0]["stages"]]
            line += f", QC stage median {statistics.median(qc):.1f} s)" if qc else ")"
            failed = reference.pop() if reference and "failed" in reference[-1] else None
            if reference:  # the finished runs
                ref_median = statistics.median(r["wall_s"] for r in reference)
                line += (f", reference median {ref_median:.1f} s (peak RSS {max(r['peak_rss_gib'] for r in reference):.2f} "
                         f"GiB), ratio {median / ref_median:.2f}")
            if failed:
                line += (f", reference FAILED after {failed['wall_s']:.0f} s at {failed['peak_rss_gib']:.1f} GiB "
                         f"({failed['failed']}; not run again)")
            print(line, flush=True)
        if args.onednn_verbose:
            onednn_summary(args.threads)
    finally:
        if cleanup:
            shutil.rmtree(cleanup, ignore_errors=True)


if __name__ == "__main__":
    main()
