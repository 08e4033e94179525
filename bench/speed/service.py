"""Teacher service speed on this machine (CPU): soft-label throughput in-process vs through the
BentoML service, and the service's latency under concurrent single-history clients.

(a) throughput (samples/s, after one warm-up batch each) over the first `--samples` training prefixes (last_n_per_user=1, the
    distill default): in-process precompute-style scoring (`teacher(history)` + top-K, batches of
    `--batch-size`) vs `distill.teacher_client.fetch_soft_labels` against the service (same batch
    size, one call at a time), and whether the two agree;
(b) p50/p99 latency of single-history `/topk` calls at 1, 4 and 16 concurrent clients, a bounded
    `--requests` calls per level shared by its clients (or, with `--duration S`, as many calls as
    each client makes in S seconds), errors, /readyz probes during the level, and the mean model
    batch the adaptive batcher formed (from the service's /metrics);
(a') with `--all-prefixes`, instead of (a)-(c): soft labels for every training prefix
    (`distill.soft_label_samples=all`), in-process by precompute-soft-labels' own units and
    batches (windows in sequence mode) vs `fetch_soft_labels` through the service at the same
    batch size: seconds, prefixes/s, their ratio and whether the labels are bitwise equal;
(c) with `--restart`: the soft-label fetch of (a) again, with the server killed (SIGKILL) after
    a third of its calls and restarted on the same port: seconds until the port is free, seconds
    until the fetch resumed, samples lost and whether the labels equal the uninterrupted fetch.

The service is started here (`bentoml serve teacher.service:TeacherService` on a free localhost
port) and stopped at the end.

    uv run python -m bench.speed.service [--checkpoint result/<run>/checkpoints/best] [--data data/processed/ml-100k]
                                         [--samples 32] [--batch-size 8] [--requests 32] [--levels 1,4,16]
                                         [--duration 60] [--restart]
    uv run python -m bench.speed.service --all-prefixes [--batch-size 16] [--checkpoint ...]
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def batch_histogram(url: str) -> tuple[float, float]:
    """(sum, count) of the service's adaptive batch sizes for /topk so far."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    total = count = 0.0
    for line in text.splitlines():
        if "adaptive_batch_size" in line and 'method_name="topk"' in line:
            value = float(line.rsplit(" ", 1)[1])
            if re.match(r"\S*adaptive_batch_size_sum\{", line):
                total += value
            elif re.match(r"\S*adaptive_batch_size_count\{", line):
                count += value
    return total, count


def in_process(teacher, dataset, n: int, batch_size: int, k: int):
    from ilora.inference import topk_with_history_masked

    items, scores = [], []
    start = time.perf_counter()
    for lo in range(0, n, batch_size):
        batch = dataset.__getitems__(list(range(lo, min(lo + batch_size, n))))
        with torch.no_grad():
            s = teacher(batch["history"])
        top_items, top_scores = topk_with_history_masked(s, batch["full_history"], k)
        items.append(top_items), scores.append(top_scores)
    return time.perf_counter() - start, torch.cat(items), torch.cat(scores)


def label_all(checkpoint: Path, data: Path, batch_size: int, k: int) -> None:
    """(a'): every training prefix, in-process (precompute's units, shards and batches) vs the service."""
    from distill.labelling import labelling_units
    from distill.precompute import scorer, training_keys
    from distill.shards import label_shard, merge_shards, shard_path, shard_ranges
    from distill.soft_labels import SoftLabels
    from distill.teacher_client import fetch_soft_labels
    from ilora.checkpoint import load_teacher, teacher_window
    from recdata.datamodule import SequentialDataModule
    from runkit.checkpoint import read_card
    from teacher.testing import ServiceProcess

    config, window = teacher_window(read_card(checkpoint), checkpoint)
    sequence_mode = config.prompt_mode == "sequence"
    dm = SequentialDataModule(data, max_seq_len=window)  # as precompute-soft-labels builds it
    dm.setup()
    keys = training_keys(dm, "all")
    teacher, _ = load_teacher(checkpoint, dm.dataset)
    units = labelling_units(dm.store, dm.keys["train"], keys, sequence_mode=sequence_mode, width=window,
                            stride=config.sequence_window_stride)  # fmt: skip
    label = scorer(units, teacher, k, True, "cpu")
    with tempfile.TemporaryDirectory(prefix="bench-service-shards-") as shards:
        t0 = time.perf_counter()
        paths = []
        for index, lo, hi in shard_ranges(len(units)):
            paths.append(shard_path(Path(shards), index))
            label_shard(paths[-1], lo, hi, batch_size, label, b"bench")
        local_s = time.perf_counter() - t0
        local = SoftLabels(*merge_shards(paths, k), torch.zeros(1), {}).aligned_to(keys)
    print(f"in-process (precompute) {len(keys) / local_s:7.1f} prefixes/s  ({len(keys)} prefixes in {len(units)} "
          f"{'windows' if sequence_mode else 'prompts'}, batch {batch_size}, {local_s:.0f} s)")  # fmt: skip
    del teacher
    log = Path(tempfile.mkdtemp(prefix="bench-service-")) / "serve.log"
    with ServiceProcess(checkpoint, data, log_file=log, startup_timeout=600) as service:
        t0 = time.perf_counter()
        served = fetch_soft_labels(service.url, dm, keys, k=k, batch_size=batch_size, timeout=1800)
        served_s = time.perf_counter() - t0
    same = torch.equal(served.topk_items, local.topk_items) and torch.equal(served.topk_scores, local.topk_scores)
    print(f"through the service     {len(keys) / served_s:7.1f} prefixes/s  ({served_s:.0f} s incl. info + item "
          f"embeddings; x{served_s / local_s:.2f} the in-process time; labels bitwise equal: {same})")  # fmt: skip


def latency_level(url: str, histories: list[list[int]], clients: int, total: int, k: int,
                  duration: float | None = None) -> tuple[list[float], int, list[int]]:  # fmt: skip
    """(latencies of answered calls, errors, /readyz statuses polled once a second)."""
    per_client = [total // clients + (1 if c < total % clients else 0) for c in range(clients)]
    deadline = time.perf_counter() + duration if duration else None
    done = threading.Event()

    def client(c: int) -> tuple[list[float], int]:
        times, errors, j = [], 0, 0
        with httpx.Client(base_url=url, timeout=1800) as http:
            while (time.perf_counter() < deadline) if deadline else j < per_client[c]:
                history = histories[(c * 7919 + j) % len(histories)]
                j += 1
                t0 = time.perf_counter()
                try:
                    response = http.post("/topk", json={"requests": [{"history": history, "k": k}]})
                    response.raise_for_status()
                except httpx.HTTPError:
                    errors += 1
                    continue
                times.append(time.perf_counter() - t0)
        return times, errors

    def probe() -> list[int]:
        statuses = []
        while not done.wait(1.0):
            try:
                statuses.append(httpx.get(f"{url}/readyz", timeout=5).status_code)
            except httpx.HTTPError:
                statuses.append(0)
        return statuses

    with ThreadPoolExecutor(clients + 1) as pool:
        probes = pool.submit(probe)
        results = list(pool.map(client, range(clients)))
        done.set()
    return [t for times, _ in results for t in times], sum(e for _, e in results), probes.result()


def restart_mid_fetch(service, dm, keys, batch_size: int, k: int, reference) -> None:
    """(c): kill -9 the server after a third of the fetch's calls, restart it, let the fetch finish."""
    from distill.teacher_client import fetch_soft_labels

    calls, events = [0], {}
    kill_at = max(1, -(-len(keys) // batch_size) // 3)
    restart = threading.Thread(target=service.start)

    class KillMidway(httpx.HTTPTransport):
        def handle_request(self, request):
            if request.url.path == "/topk":
                calls[0] += 1
                if calls[0] == kill_at:
                    t0 = time.perf_counter()
                    service.kill()
                    while not _port_free(service.port) and time.perf_counter() - t0 < 30:
                        time.sleep(0.05)
                    events["port_free"], events["killed"] = time.perf_counter() - t0, t0
                    restart.start()
            response = super().handle_request(request)
            if request.url.path == "/topk" and "killed" in events and "resumed" not in events:
                events["resumed"] = time.perf_counter() - events["killed"]
            return response

    with tempfile.TemporaryDirectory() as cache:
        labels = fetch_soft_labels(service.url, dm, keys, k=k, batch_size=batch_size, timeout=1800,
                                   cache_dir=Path(cache), transport=KillMidway())  # fmt: skip
    restart.join()
    lost = len(keys) - len(labels.user_ids)
    same = torch.equal(labels.topk_items, reference[0]) and torch.equal(labels.topk_scores, reference[1])
    print(f"restart mid-fetch       server killed before call {kill_at} of {-(-len(keys) // batch_size)}; port free after "
          f"{events['port_free']:.2f} s; fetch resumed {events['resumed']:.1f} s after the kill; "
          f"{lost} of {len(keys)} samples lost; labels equal to the uninterrupted fetch: {same}")  # fmt: skip


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.speed.service", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="teacher checkpoints/best (default: newest under result/)",
    )
    parser.add_argument("--data", type=Path, default=Path("data/processed/ml-100k"))
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--requests", type=int, default=32, help="single-history calls per concurrency level"
    )
    parser.add_argument("--levels", default="1,4,16")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds per concurrency level (instead of --requests calls)")
    parser.add_argument("--restart", action="store_true", help="(c): kill -9 and restart the service mid-fetch")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--all-prefixes", action="store_true",
                        help="(a'): label every training prefix in-process and through the service, nothing else")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from distill.precompute import training_keys
    from distill.teacher_client import fetch_soft_labels
    from ilora.checkpoint import load_teacher
    from recdata.contract import load_prepared
    from recdata.datamodule import SequentialDataModule, SplitDataset
    from recdata.splits import SampleKeys
    from runkit.runs import find_newest_checkpoint
    from teacher.testing import ServiceProcess

    checkpoint = args.checkpoint or find_newest_checkpoint(Path("result"), ("ilora-teacher",))
    print(f"teacher checkpoint      {checkpoint}")
    if args.all_prefixes:
        return label_all(checkpoint, args.data, args.batch_size, args.k)
    t0 = time.perf_counter()
    teacher, ckpt = load_teacher(checkpoint, load_prepared(args.data))
    print(
        f"in-process load         {time.perf_counter() - t0:.1f} s  ({ckpt.hparams['teacher']['llm_model_name']})"
    )
    dm = SequentialDataModule(
        args.data, max_seq_len=teacher.student.config.max_seq_len, train_mode="prefixes"
    )
    dm.setup()
    keys = training_keys(dm, "last_n_per_user=1")
    n = min(args.samples, len(keys))
    keys = SampleKeys(keys.user_ids[:n], keys.positions[:n])
    dataset = SplitDataset(dm.store, keys, dm.max_seq_len, with_full_history=True)

    in_process(teacher, dataset, min(n, args.batch_size), args.batch_size, args.k)  # warm-up
    seconds, ref_items, ref_scores = in_process(teacher, dataset, n, args.batch_size, args.k)
    print(
        f"in-process scoring      {n / seconds:7.2f} samples/s  ({n} samples, batch {args.batch_size}, {seconds:.1f} s)"
    )
    del teacher

    log = Path(tempfile.mkdtemp(prefix="bench-service-")) / "serve.log"
    t0 = time.perf_counter()
    with ServiceProcess(checkpoint, args.data, log_file=log, startup_timeout=600) as service:
        print(f"service start-up        {time.perf_counter() - t0:.1f} s  (to /readyz; log {log})")
        histories = [
            row[row > 0].tolist() for row in dataset.__getitems__(list(range(n)))["full_history"]
        ]
        warm = {"requests": [{"history": h, "k": args.k} for h in histories[: args.batch_size]]}
        httpx.post(f"{service.url}/topk", json=warm, timeout=1800).raise_for_status()  # warm-up
        t0 = time.perf_counter()
        labels = fetch_soft_labels(service.url, dm, keys, k=args.k, batch_size=args.batch_size)
        seconds = time.perf_counter() - t0
        same_items = torch.equal(labels.topk_items, ref_items)
        diff = (labels.topk_scores - ref_scores).abs().max().item()
        print(
            f"through the service     {n / seconds:7.2f} samples/s  ({n} samples, batch {args.batch_size}, {seconds:.1f} s "
            f"incl. info + item embeddings; items identical: {same_items}, max |score diff| {diff:.2e})"
        )

        histories = [
            row[row > 0].tolist() for row in dataset.__getitems__(list(range(n)))["full_history"]
        ]
        for clients in (int(c) for c in args.levels.split(",")):
            before = batch_histogram(service.url)
            start = time.perf_counter()
            times, errors, probes = latency_level(service.url, histories, clients, args.requests, args.k,
                                                  args.duration)  # fmt: skip
            wall = time.perf_counter() - start
            after = batch_histogram(service.url)
            batches = after[1] - before[1]
            mean_batch = (after[0] - before[0]) / batches if batches else float("nan")
            print(
                f"latency {clients:>2} client(s)    p50 {statistics.median(times):6.2f} s  p99 {percentile(times, 99):6.2f} s  "
                f"({len(times)} calls, {errors} errors in {wall:.0f} s, {len(times) / wall:.2f} calls/s, mean model batch "
                f"{mean_batch:.1f}; /readyz {sum(p == 200 for p in probes)}/{len(probes)} probes 200)"
            )
        if args.restart:
            restart_mid_fetch(service, dm, keys, args.batch_size, args.k, (labels.topk_items, labels.topk_scores))


if __name__ == "__main__":
    main()
