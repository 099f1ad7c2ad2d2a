"""Helpers the speed scripts in ``bench/`` share: their common flags, wall-clock timing with CUDA
synchronization, the load other processes put on the machine while timing, and a description
of the machine. Not part of the library: the scripts run as ``python bench/NAME.py``, so this
folder is on ``sys.path`` and they ``import common``. Torch and the standard library only."""

from __future__ import annotations

import argparse
import os
import platform
import time
from typing import Callable

import torch


def time_it(fn: Callable[[], object], device: str) -> float:
    """Wall seconds of one call of ``fn``, synchronizing CUDA before and after."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def cpu_busy_seconds() -> float | None:
    """Busy CPU seconds of the whole machine so far (all processes), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process and of its children that have ended (reaped worker
    processes, such as a finished DataLoader's)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def other_load(fn: Callable[[], object]):
    """Run ``fn``; return its result and the mean number of cores other processes kept busy
    meanwhile (this machine's busy time minus ours, per wall second), or None off Linux.

    "Ours" is this process's CPU time plus that of its children that ended during ``fn``
    (worker processes joined before ``fn`` returns); workers still alive count as other load."""
    busy, mine, start = cpu_busy_seconds(), own_cpu_seconds(), time.perf_counter()
    result = fn()
    if busy is None:
        return result, None
    foreign = cpu_busy_seconds() - busy - (own_cpu_seconds() - mine)
    return result, max(foreign, 0.0) / (time.perf_counter() - start)


def machine(device: str) -> dict:
    """CPU model, cores, torch threads and version, GPU name when on CUDA."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
        info["matmul_tf32"] = torch.backends.cuda.matmul.allow_tf32
    return info


def bench_parser(doc: str, quick_help: str) -> argparse.ArgumentParser:
    """The flags every bench script takes: --device, --quick, --repeats, --threads, --output."""
    parser = argparse.ArgumentParser(description=doc.split("\n", 1)[0])
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per path")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--output", help="write the results as JSON here")
    return parser


def parse_bench_args(parser: argparse.ArgumentParser, argv) -> argparse.Namespace:
    """Parse, then apply ``--threads``."""
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args
