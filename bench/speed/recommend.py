"""Recommendation speed of a student: latency p50/p99 and throughput at 1/16/64 concurrent clients,
in-process (`sasrec.recommend.Recommender`), over HTTP (the recommender service, started here)
and from the ONNX export (ONNX Runtime), plus one batched call of `--batch` histories each way.

Each client sends one user's whole history (raw item ids, as a product would) per call and asks
for the top `--k`; clients cycle through the dataset's users. In-process and export clients are
threads calling the recommender directly (no batcher); HTTP clients are threads with their own
keep-alive connection, and the service's adaptive batcher merges their calls. The clients run on
the same machine as the server, so HTTP figures include their CPU.

    uv run python -m bench.speed.recommend --checkpoint result/<run>/checkpoints/best \\
        [--data DIR] [--export DIR] [--levels 1,16,64] [--calls 400] [--batch 256] [--k 10]
        [--modes in-process,http,export] [--threads N] [--new-item-slot]

`--new-item-slot`: every call asks for the calibrated new-item slot (fit it first with `recommend
CHECKPOINT --fit-new-item-slot`), to compare its cost with a run without it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MODES = ("in-process", "http", "export")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def run_level(make_client: Callable[[], Callable[[int], None]], clients: int, calls: int):
    """`calls` calls shared by `clients` threads -> (latencies in s, wall s)."""
    counter, lock = iter(range(calls)), threading.Lock()

    def client(_: int) -> list[float]:
        call, times = make_client(), []
        while True:
            with lock:
                j = next(counter, None)
            if j is None:
                return times
            t0 = time.perf_counter()
            call(j)
            times.append(time.perf_counter() - t0)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        times = [t for part in pool.map(client, range(clients)) for t in part]
    return times, time.perf_counter() - start


def local_client(recommender, histories: list[list[int]], k: int, slot: bool):
    from sasrec.recommend import Query

    def make() -> Callable[[int], None]:
        return lambda j: recommender.rank(
            [Query(histories[j % len(histories)], k, new_item_slot=slot)]
        )

    return make


def http_client(url: str, bodies: list[dict]):
    import httpx

    def make() -> Callable[[int], None]:
        http = httpx.Client(base_url=url, timeout=300)

        def call(j: int) -> None:
            http.post("/recommend", json=bodies[j % len(bodies)]).raise_for_status()

        return call

    return make


def batched(call: Callable[[], None], size: int, repeats: int = 3) -> float:
    """Recommendations per second of one call of `size` histories (best of `repeats`)."""
    call()  # warm-up
    best = min(_timed(call) for _ in range(repeats))
    return size / best


def _timed(call: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


def row(name: str, mode: str, clients: str, times: list[float], recs_per_s: float) -> str:
    p50 = f"{statistics.median(times) * 1e3:.1f}" if times else "-"
    p99 = f"{percentile(times, 99) * 1e3:.1f}" if times else "-"
    calls = str(len(times)) if times else "1"
    return f"| {name} | {mode} | {clients} | {calls} | {p50} | {p99} | {recs_per_s:,.0f} |"


def measure(mode: str, args, recommender, histories, bodies) -> list[str]:
    from sasrec.recommend import Query

    name = recommender.info.get("dataset", "?")
    if mode == "http":
        return measure_http(args, name, bodies)
    if mode == "export":
        recommender = exported(args, recommender)
    make = local_client(recommender, histories, args.k, args.new_item_slot)
    lines = []
    for clients in args.levels:
        run_level(make, clients, min(args.calls, 4 * clients))  # warm-up
        times, wall = run_level(make, clients, args.calls)
        lines.append(row(name, mode, str(clients), times, len(times) / wall))
    batch = [
        Query(histories[j % len(histories)], args.k, new_item_slot=args.new_item_slot)
        for j in range(args.batch)
    ]
    lines.append(
        row(
            name,
            mode,
            f"batch {args.batch}",
            [],
            batched(lambda: recommender.rank(batch), args.batch),
        )
    )
    return lines


def measure_http(args, name: str, bodies: list[dict]) -> list[str]:
    import httpx

    from serving.testing import ServerProcess

    env = {"STUDENT_CHECKPOINT": str(args.checkpoint)}
    if args.data:
        env["STUDENT_DATA"] = str(args.data)
    log = Path(tempfile.mkdtemp(prefix="bench-recommend-")) / "serve.log"
    lines = []
    with ServerProcess(
        "recommender.service:RecommenderService", env, log_file=log, startup_timeout=900
    ) as service:
        make = http_client(service.url, bodies)
        for clients in args.levels:
            run_level(make, clients, min(args.calls, 4 * clients))  # warm-up
            times, wall = run_level(make, clients, args.calls)
            lines.append(row(name, "http", str(clients), times, len(times) / wall))
        big = {"requests": [b["requests"][0] for b in (bodies * args.batch)[: args.batch]]}
        with httpx.Client(base_url=service.url, timeout=600) as http:
            rate = batched(lambda: http.post("/recommend", json=big).raise_for_status(), args.batch)
        lines.append(row(name, "http", f"batch {args.batch}", [], rate))
    return lines


def exported(args, recommender):
    from sasrec.export import export_onnx, load_export

    directory = args.export
    if directory is None or not (Path(directory) / "export.json").is_file():
        directory = directory or Path(tempfile.mkdtemp(prefix="bench-export-")) / "student"
        t0 = time.perf_counter()
        export_onnx(args.checkpoint, directory, args.data)
        print(f"exported to {directory} in {time.perf_counter() - t0:.0f} s", flush=True)
    return load_export(directory, args.data or recommender.info["data"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=None, help="default: the card's dataset")
    parser.add_argument(
        "--export", type=Path, default=None, help="an existing export (else one is made)"
    )
    parser.add_argument("--levels", default="1,16,64")
    parser.add_argument("--calls", type=int, default=400, help="single-user calls per level")
    parser.add_argument("--batch", type=int, default=256, help="histories in the batched call")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument(
        "--new-item-slot",
        action="store_true",
        help="every call asks for the new-item slot (fitted beside the checkpoint; not exports)",
    )
    args = parser.parse_args()
    if args.new_item_slot and "export" in args.modes.split(","):
        parser.error("--new-item-slot is served from the checkpoint: leave export out of --modes")
    args.levels = [int(c) for c in args.levels.split(",")]
    import torch

    from sasrec.recommend import Recommender

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    recommender = Recommender.load(args.checkpoint, args.data)
    c = recommender.catalogue
    print(
        f"loaded {args.checkpoint} in {time.perf_counter() - t0:.1f} s: {c.num_items} items, "
        f"{len(c.user_raw)} users, max_seq_len {recommender.max_seq_len}",
        flush=True,
    )  # noqa: E501
    users = c.user_raw[: max(args.calls, args.batch)]
    histories = [c.user_history(u) for u in users]
    bodies = [
        {"requests": [{"history": c.raw(h), "k": args.k, "new_item_slot": args.new_item_slot}]}
        for h in histories
    ]
    print("| catalogue | mode | clients | calls | p50 ms | p99 ms | recs/s |")
    print("|:--|:--|--:|--:|--:|--:|--:|")
    for mode in args.modes.split(","):
        for line in measure(mode, args, recommender, histories, bodies):
            print(line, flush=True)


if __name__ == "__main__":
    main()
