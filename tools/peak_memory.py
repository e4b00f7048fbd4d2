"""Run a command and report its peak memory, counted over its whole process tree.

    python tools/peak_memory.py -- vskip export /tmp/b8/ckpt -o /tmp/b8/onnx --dtype bfloat16

``/usr/bin/time -v`` reports the largest single process's RSS. vskip's export traces
prefill and decode in two processes that share the loaded weights copy-on-write, and a
checkpoint stored in the export's type stays memory-mapped, so neither RSS nor a sum of
RSS says what the machine needed. Every 0.5 s this samples, over the command and all its
descendants (from /proc):

- the summed PSS (``smaps_rollup``: a page shared by two processes counts half in each);
- the summed anonymous RSS (memory that cannot be dropped and re-read from a file);
- the largest single RSS, as ``time -v`` reports it;
- the machine's lowest ``MemAvailable`` while the command ran.

Linux only. Prints one line per measure at the end, and the command's exit status is this
tool's.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

GIB = 2**30


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def _tree(root: int) -> list[int]:
    tree, found, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(tree.get(pid, ()))
    return found


def _kib(path: Path, keys: tuple[str, ...]) -> dict[str, int]:
    values = {}
    try:
        for line in path.read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in keys:
                values[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return values


def sample(root: int) -> tuple[int, int, int]:
    """(summed PSS, summed anonymous RSS, largest RSS) of ``root``'s tree, in bytes."""
    pss = anon = largest = 0
    for pid in _tree(root):
        rollup = _kib(Path(f"/proc/{pid}/smaps_rollup"), ("Pss",))
        status = _kib(Path(f"/proc/{pid}/status"), ("VmRSS", "RssAnon"))
        pss += rollup.get("Pss", 0) * 1024
        anon += status.get("RssAnon", 0) * 1024
        largest = max(largest, status.get("VmRSS", 0) * 1024)
    return pss, anon, largest


def available() -> int:
    return _kib(Path("/proc/meminfo"), ("MemAvailable",)).get("MemAvailable", 0) * 1024


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between samples (default 0.5)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --")
    start = time.perf_counter()
    before = available()
    process = subprocess.Popen(command)
    peak = [0, 0, 0]
    lowest = before
    while process.poll() is None:
        for i, value in enumerate(sample(process.pid)):
            peak[i] = max(peak[i], value)
        lowest = min(lowest, available())
        time.sleep(args.interval)
    wall = time.perf_counter() - start
    print(f"wall {wall:.1f} s, exit {process.returncode}", file=sys.stderr)
    print(f"peak summed PSS {peak[0] / GIB:.2f} GiB, summed anonymous RSS {peak[1] / GIB:.2f} GiB, "
          f"largest RSS {peak[2] / GIB:.2f} GiB", file=sys.stderr)
    print(f"MemAvailable {before / GIB:.2f} GiB before, lowest {lowest / GIB:.2f} GiB "
          f"(the machine needed up to {(before - lowest) / GIB:.2f} GiB more)", file=sys.stderr)
    return process.returncode


if __name__ == "__main__":
    if not sys.platform.startswith("linux"):
        sys.exit("peak_memory.py reads /proc: Linux only")
    sys.exit(main())
