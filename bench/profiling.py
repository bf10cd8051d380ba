"""py-spy around a benchmark's hot phase, and a summary of where the samples went.

    python -m bench.profiling STACKS.raw [--match audit/ --match api/] [--top 25]

prints the share of samples spent inside each matching function (inclusive time).
"""

from __future__ import annotations

import argparse
import collections
import re
import signal
import subprocess
import sys
from pathlib import Path


def start(
    pid: int, out: Path, *, subprocesses: bool = False, gil: bool = False, idle: bool = False
) -> subprocess.Popen[bytes]:
    """Sample `pid` (and its children) at 200 Hz into collapsed stacks; stop() writes them.

    gil: only the thread holding the GIL, i.e. where the process's Python CPU goes (a
    threadpool's idle and I/O-waiting threads would otherwise fill most samples).
    idle: also the samples of threads waiting (on a socket, a lock): where wall time goes."""
    py_spy = Path(sys.executable).with_name("py-spy")
    argv = [str(py_spy), "record", "--pid", str(pid), "--format", "raw", "--rate", "200",
            "--output", str(out), "--nonblocking"]  # fmt: skip
    if subprocesses:
        argv.append("--subprocesses")
    if gil:
        argv.append("--gil")
    if idle:
        argv.append("--idle")
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(profiler: subprocess.Popen[bytes] | None) -> None:
    if profiler is not None and profiler.poll() is None:
        profiler.send_signal(signal.SIGINT)
        profiler.wait(30)


def inclusive(raw: Path, match: list[str]) -> tuple[int, collections.Counter[str]]:
    """(samples, samples inside each function whose file matches one of `match`)."""
    shares: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        total += samples
        seen = set()
        for frame in stack.split(";"):
            name = re.sub(r":\d+\)$", ")", frame)
            if name not in seen and any(m in name for m in match):
                seen.add(name)
                shares[name] += samples
    return total, shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("raw", type=Path)
    parser.add_argument("--match", action="append", default=None)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    total, shares = inclusive(args.raw, args.match or ["audit/", "api/", "worker/"])
    print(f"{total} samples")
    for name, samples in shares.most_common(args.top):
        print(f"{samples / total:6.1%}  {name}")


if __name__ == "__main__":
    main()
