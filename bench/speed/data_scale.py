"""Wall time and peak RSS of `recdata prepare NAME --from interactions.csv --items items.csv` on
synthetic data (recdata.synthetic: Zipf popularity, clustered items, item text) of 1M and 10M
interactions, as a user's own CSV files with string ids (u_<n>, ASIN-like B<9 digits>).

Each prepare is a fresh `recdata` process run under /usr/bin/time -v (its own wall clock and
maximum RSS; without GNU time, the child's rusage from os.wait4), so start-up and imports are
counted and nothing of the generator's memory is.

    uv run python -m bench.speed.data_scale [--sizes 1000000,10000000] [--keep DIR]

Targets at 10M: <= 60 s and <= 4 GB peak RSS on a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_SECONDS, TARGET_BYTES = 60.0, 4 * 1000**3
GNU_TIME = Path("/usr/bin/time")


def write_dataset(root: Path, interactions: int, seed: int) -> tuple[Path, Path, float]:
    from recdata.synthetic import generate

    started = time.perf_counter()
    data = generate(
        max(interactions // 20, 1), max(interactions // 100, 50), interactions, seed, id_style="str"
    )
    generated = time.perf_counter() - started
    inter, items = data.write_csv(root)
    return inter, items, generated


def run_prepare(args: list[str]) -> tuple[float, int, str]:
    """(wall seconds, peak RSS bytes, stdout) of one `recdata prepare` process."""
    recdata = shutil.which("recdata") or str(Path(sys.executable).with_name("recdata"))
    command = [recdata, *args]
    if GNU_TIME.is_file():
        result = subprocess.run([str(GNU_TIME), "-v", *command], capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"recdata prepare failed:\n{result.stderr[-2000:]}")
        rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)[1])
        clock = re.search(
            r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", result.stderr
        )[1]
        seconds = sum(float(part) * 60**k for k, part in enumerate(reversed(clock.split(":"))))
        return seconds, rss_kb * 1024, result.stdout
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        raise SystemExit(f"recdata prepare failed (status {status})")
    return time.perf_counter() - started, usage.ru_maxrss * 1024, out


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.speed.data_scale", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--sizes", default="1000000,10000000", help="interaction counts, comma-separated"
    )
    parser.add_argument("--keep", type=Path, help="keep the CSV files and prepared data here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="data-scale-"))
    rows = []
    try:
        for size in (int(float(s)) for s in args.sizes.split(",")):
            work = root / f"syn-{size}"
            inter, items, generated = write_dataset(work / "csv", size, args.seed)
            mib = (inter.stat().st_size + items.stat().st_size) / 2**20
            seconds, rss, out = run_prepare(
                [
                    "prepare",
                    f"syn-{size}",
                    "--from",
                    str(inter),
                    "--items",
                    str(items),
                    "--out",
                    str(work / "processed"),
                ]
            )
            stats = dict(
                line.split(None, 1)
                for line in out.splitlines()
                if line.startswith(("users ", "items "))
            )
            rows.append(
                (
                    size,
                    mib,
                    generated,
                    seconds,
                    rss,
                    stats.get("users", "?").strip(),
                    stats.get("items", "?").strip(),
                )
            )
            print(
                f"{size:>11,} interactions ({mib:,.0f} MiB CSV, generated in {generated:.1f}s): "
                f"prepare {seconds:.1f}s, peak RSS {rss / 1000**3:.2f} GB",
                flush=True,
            )
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print("\n| interactions | CSV MiB | users | items | prepare s | peak RSS GB |")
    print("|---:|---:|---:|---:|---:|---:|")
    for size, mib, _, seconds, rss, users, items in rows:
        print(
            f"| {size:,} | {mib:,.0f} | {users} | {items} | {seconds:.1f} | {rss / 1000**3:.2f} |"
        )
    largest = rows[-1]
    ok = largest[3] <= TARGET_SECONDS and largest[4] <= TARGET_BYTES
    print(
        f"\n{largest[0]:,} interactions: {'within' if ok else 'OVER'} the targets "
        f"({TARGET_SECONDS:.0f} s, {TARGET_BYTES / 1000**3:.0f} GB)"
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
