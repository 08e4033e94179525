"""Teacher service speed on this machine (CPU): soft-label throughput in-process vs through the
BentoML service, the service's latency under concurrent single-history clients, and what a crash
of the server mid-fetch costs.

(a) throughput (samples/s, after one warm-up batch each) over the first `--samples` training
    prefixes (last_n_per_user=1, the distill default): in-process precompute-style scoring
    (`teacher(history)` + top-K, batches of `--batch-size`) vs
    `distill.teacher_client.fetch_soft_labels` against the service (same batch size, one call at
    a time), and whether the two agree;
(b) p50/p99 latency of single-history `/topk` calls at 1, 4 and 16 concurrent clients, a bounded
    `--requests` calls per level shared by its clients (or, with `--duration S`, as many calls as
    each client makes in S seconds), errors, /readyz probes during the level, and the mean model
    batch the adaptive batcher formed (from the service's /metrics);
(c) with `--restart`: the soft-label fetch of (a) again, with the server killed (SIGKILL) as the
    first label call after a third of them is sent and restarted on the same port: seconds until
    the port is free, until the restarted server is ready and until the fetch resumed, prefixes
    lost and whether the labels are bitwise equal to the uninterrupted fetch. The calls counted are
    those of the endpoint the fetch uses: /topk for a prefix-mode teacher, /topk_windows for a
    sequence-mode teacher (the default);
(a') with `--all-prefixes`, instead of (a)-(c): soft labels for every training prefix
    (`distill.soft_label_samples=all`), in-process by precompute-soft-labels' own units, shards
    and batches (windows in sequence mode; `--no-in-process` skips this) vs `fetch_soft_labels`
    through the service at the same batch size: seconds, prefixes/s, their ratio and whether the
    labels are bitwise equal; with `--restart`, (c) on this whole fetch;
(d) with `--distill-restart`, instead of all the above: `uv run distill experiment=cpu_demo
    distill.teacher_source=service` against the served teacher (a fresh label cache), its server
    SIGKILLed once a third of the fetch's label calls are answered (counted in the service's
    access log) and restarted on the same port; then `distill experiment=cpu_demo` on the
    precomputed labels with the same seed (or `--precomputed-run`): port free / resumed / lost,
    whether the fetched labels equal the precomputed ones bitwise, both runs' test NDCG@10 / HR@10
    and whether their per-user test predictions are identical. Extra arguments are Hydra
    overrides of both distill runs.

The service is started here (`bentoml serve teacher.service:TeacherService` on a free localhost
port) and stopped at the end. `fetch_with_restart` is reusable (tests/test_bench_service.py).

    uv run python -m bench.speed.service [--checkpoint result/<run>/checkpoints/best]
                                         [--data data/processed/ml-100k] [--samples 32]
                                         [--batch-size 8] [--requests 32] [--levels 1,4,16]
                                         [--duration 60] [--restart]
    uv run python -m bench.speed.service --all-prefixes [--restart] [--no-in-process]
                                         [--batch-size 16] [--checkpoint ...]
    uv run python -m bench.speed.service --distill-restart [--seed 42] [--precomputed-run DIR]
                                         [--out DIR] [--checkpoint ...] [overrides...]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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


def label_all(
    checkpoint: Path,
    data: Path,
    batch_size: int,
    k: int,
    restart: bool = False,
    in_process: bool = True,
) -> None:
    """(a'): every training prefix, in-process (precompute's units, shards and batches) vs the
    service; with `restart`, (c) on this whole fetch."""
    from distill.precompute import scorer, teacher_units, training_keys
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
    local = None
    if in_process:
        teacher, _ = load_teacher(checkpoint, dm.dataset)
        units = teacher_units(dm, keys, config, window)
        label = scorer(units, teacher, k, True, "cpu")
        with tempfile.TemporaryDirectory(prefix="bench-service-shards-") as shards:
            t0 = time.perf_counter()
            paths = []
            for index, lo, hi in shard_ranges(len(units)):
                paths.append(shard_path(Path(shards), index))
                label_shard(paths[-1], lo, hi, batch_size, label, b"bench")
            local_s = time.perf_counter() - t0
            local = SoftLabels(*merge_shards(paths, k), torch.zeros(1), {}).aligned_to(keys)
        print(
            f"in-process (precompute) {len(keys) / local_s:7.1f} prefixes/s  ({len(keys)} prefixes "
            f"in {len(units)} {'windows' if sequence_mode else 'prompts'}, batch "
            f"{batch_size}, {local_s:.0f} s)",
            flush=True,
        )
        del teacher
    log = Path(tempfile.mkdtemp(prefix="bench-service-")) / "serve.log"
    with ServiceProcess(checkpoint, data, log_file=log, startup_timeout=600) as service:
        t0 = time.perf_counter()
        served = fetch_soft_labels(service.url, dm, keys, k=k, batch_size=batch_size, timeout=1800)
        served_s = time.perf_counter() - t0
        versus = ""
        if local is not None:
            same = torch.equal(served.topk_items, local.topk_items) and torch.equal(
                served.topk_scores, local.topk_scores
            )
            versus = (
                f"; x{served_s / local_s:.2f} the in-process time; labels bitwise equal: {same}"
            )
        print(
            f"through the service     {len(keys) / served_s:7.1f} prefixes/s  ({len(keys)} "
            f"prefixes, {served_s:.0f} s incl. info + item embeddings{versus}; log {log})",
            flush=True,
        )
        if restart:
            t0 = time.perf_counter()
            report = fetch_with_restart(
                service, dm, keys, k=k, batch_size=batch_size, reference=served
            )
            print(
                f"restart mid-fetch       {report.text()}; {time.perf_counter() - t0:.0f} s in all "
                f"(x{(time.perf_counter() - t0) / served_s:.2f} the uninterrupted fetch)"
            )


def latency_level(
    url: str,
    histories: list[list[int]],
    clients: int,
    total: int,
    k: int,
    duration: float | None = None,
) -> tuple[list[float], int, list[int]]:
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


# -- (c) a crash and a restart mid-fetch ----------------------------------------------------------
def label_endpoint_and_calls(
    info: dict, dm, keys, batch_size: int, shard_size: int | None = None
) -> tuple[str, int]:
    """(the endpoint, the number of calls) of `fetch_soft_labels` for `keys` from a service that
    answers /info with `info`: a prefix-mode teacher is asked /topk per batch of prefixes, a
    sequence-mode teacher (the default) /topk_windows per batch of user windows; each shard is cut
    into batches from its start. The units are fetch_soft_labels' own (`service_units`)."""
    from distill.shards import shard_ranges
    from distill.teacher_client import service_units

    sequence_mode = info.get("prompt_mode") == "sequence"
    units = service_units(info, dm, keys)
    calls = sum(-(-(hi - lo) // batch_size) for _, lo, hi in shard_ranges(len(units), shard_size))
    return ("/topk_windows" if sequence_mode else "/topk"), calls


def wait_port_free(port: int, timeout: float = 30.0) -> float | None:
    """Seconds until nothing accepts connections on `port` (None: still taken after `timeout`)."""
    import socket

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return time.perf_counter() - t0
        time.sleep(0.05)
    return None


@dataclass
class RestartReport:
    """A fetch during which the server was SIGKILLed and restarted on the same port."""

    endpoint: str  # the label endpoint the fetch used (and the kill counted)
    calls: int  # label calls of an uninterrupted fetch
    kill_at: int  # the server was killed as label call kill_at was sent (kill_at - 1 answered)
    port_free_s: float | None  # kill -> nothing listens on the port (None: still taken after 30 s)
    restart_s: float  # kill -> the restarted server answered /readyz
    resumed_s: float  # kill -> the first label call answered after it
    sent: int  # label requests sent, retries included
    lost: int  # keys without a label at the end
    equal: bool | None  # labels bitwise equal to the reference (None: no reference given)
    labels: object  # the fetched SoftLabels

    def text(self) -> str:
        port = (
            f"{self.port_free_s:.2f} s"
            if self.port_free_s is not None
            else "NEVER (still taken after 30 s)"
        )
        return (
            f"server SIGKILLed as {self.endpoint} call {self.kill_at} of {self.calls} was sent; "
            f"port free after {port}; restarted (ready) {self.restart_s:.1f} s and the fetch "
            f"resumed {self.resumed_s:.1f} s after the kill; {self.sent - self.calls} requests "
            f"retried; {self.lost} of {len(self.labels.user_ids) + self.lost} prefixes lost; "
            f"labels bitwise equal to the uninterrupted fetch: {self.equal}"
        )


class KillMidFetch(httpx.HTTPTransport):
    """An httpx transport that counts the label calls to `endpoint` and, as call `kill_at` is
    sent, SIGKILLs the server (`service.kill()`), waits for its port to be free and restarts it
    on the same port in a thread (`service.start()`); the call itself then fails and is retried
    by the client until the restarted server answers."""

    def __init__(self, service, endpoint: str, kill_at: int):
        super().__init__()
        self.service, self.endpoint, self.kill_at = service, endpoint, kill_at
        self.sent, self.events = 0, {}
        self.restart = threading.Thread(target=self._restart, daemon=True)

    def _restart(self) -> None:
        self.service.start()
        self.events["ready"] = time.perf_counter() - self.events["killed"]

    def handle_request(self, request):
        label_call = request.url.path == self.endpoint
        if label_call:
            self.sent += 1
            if self.sent == self.kill_at and "killed" not in self.events:
                self.events["killed"] = time.perf_counter()
                self.service.kill()
                self.events["port_free"] = wait_port_free(self.service.port)
                self.restart.start()
        response = super().handle_request(request)
        if (
            label_call
            and "killed" in self.events
            and "resumed" not in self.events
            and response.status_code == 200
        ):
            self.events["resumed"] = time.perf_counter() - self.events["killed"]
        return response

    def report(self, calls: int, keys, labels, reference) -> RestartReport:
        if "killed" not in self.events:
            raise RuntimeError(
                f"the fetch sent {self.sent} {self.endpoint} calls and never reached call "
                f"{self.kill_at}: the server was not killed"
            )
        self.restart.join()
        if "ready" not in self.events:
            raise RuntimeError("the killed server did not restart (see its log)")
        equal = None
        if reference is not None:
            equal = all(
                torch.equal(getattr(labels, f), getattr(reference, f))
                for f in ("user_ids", "positions", "topk_items", "topk_scores")
            )
        return RestartReport(
            self.endpoint,
            calls,
            self.kill_at,
            self.events["port_free"],
            self.events["ready"],
            self.events["resumed"],
            self.sent,
            len(keys) - len(labels.user_ids),
            equal,
            labels,
        )


def fetch_with_restart(
    service,
    dm,
    keys,
    *,
    k: int,
    batch_size: int,
    reference=None,
    fraction: float = 1 / 3,
    shard_size: int | None = None,
    retry_budget: float = 600.0,
    timeout: float = 1800.0,
    cache_dir: Path | None = None,
) -> RestartReport:
    """`fetch_soft_labels` of `keys` from `service` (a `teacher.testing.ServiceProcess`) with the
    server SIGKILLed as the first label call after `fraction` of them is sent and restarted on the
    same port; the report compares the labels with `reference` (an uninterrupted fetch) bitwise.
    Works for both teacher modes: the calls counted are those of the endpoint the fetch uses."""
    from distill.teacher_client import TeacherClient, fetch_soft_labels

    with TeacherClient(service.url, timeout=timeout) as client:
        info = client.info()
    endpoint, calls = label_endpoint_and_calls(info, dm, keys, batch_size, shard_size)
    # after a `fraction` of the calls, and after at least one when there are several: mid-fetch
    transport = KillMidFetch(
        service, endpoint, kill_at=min(calls, max(2, int(calls * fraction) + 1))
    )
    with tempfile.TemporaryDirectory(prefix="bench-restart-") as scratch:
        labels = fetch_soft_labels(
            service.url,
            dm,
            keys,
            k=k,
            batch_size=batch_size,
            timeout=timeout,
            retry_budget=retry_budget,
            cache_dir=cache_dir or Path(scratch),
            shard_size=shard_size,
            transport=transport,
        )
    return transport.report(calls, keys, labels, reference)


# -- (d) a real distillation through the service, with the same crash --------------------------
class AccessLog:
    """The label calls the service answered (status 200), counted in its access log, which
    BentoML writes one line per request to (`... (scheme=http,method=POST,path=/topk_windows,...)
    (status=200,...)`); the log is appended to across restarts, counted from its size now."""

    def __init__(self, path: Path, endpoint: str):
        self.path, self.offset = Path(path), Path(path).stat().st_size
        self.pattern = re.compile(rf"path={re.escape(endpoint)}[,)][^\n]*\(status=200\b")

    def answered(self) -> int:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return len(self.pattern.findall(f.read().decode(errors="replace")))


def distill_command(
    out: Path, name: str, checkpoint: Path, data: Path, seed: int, extra: list[str]
) -> list[str]:
    return [
        "uv",
        "run",
        "--frozen",
        "distill",
        "experiment=cpu_demo",
        f"paths.result_dir={out}",
        f"hydra.run.dir={out / name}",
        f"dataset.processed_dir={data}",
        f"distill.teacher_checkpoint_path={checkpoint}",
        f"seed={seed}",
        "trainer.enable_progress_bar=false",
        *extra,
    ]


def run_child(cmd: list[str], log: Path) -> subprocess.Popen:
    """`cmd` in the background, stderr to `log`, stdout to `log` with suffix .out."""
    print(f"[{time.strftime('%H:%M:%S')}] {' '.join(cmd)}  (log {log})", flush=True)
    with open(log, "w") as err, open(log.with_suffix(".out"), "w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=err, text=True)


def finished_run(child: subprocess.Popen, cmd: list[str], log: Path) -> Path:
    """The run dir a finished child printed last (`run_dir: ...`)."""
    if child.wait() != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {child.returncode}); see {log}")
    return Path(
        log.with_suffix(".out").read_text().strip().splitlines()[-1].removeprefix("run_dir: ")
    )


def cached_labels(cache: Path, k: int):
    """The soft labels a service-mode distill fetched: its cache's shards, merged by key."""
    from distill.shards import merge_shards

    (job,) = [d for d in cache.iterdir() if d.is_dir()]
    return merge_shards(sorted(job.glob("shard_*.parquet")), k)


def distill_restart(args, checkpoint: Path) -> None:
    """(d): `distill experiment=cpu_demo distill.teacher_source=service` against a served teacher
    whose server is SIGKILLed a third of the way through the label fetch and restarted on the same
    port, vs `distill experiment=cpu_demo` on the precomputed labels, same seed."""
    import pyarrow.parquet as pq

    from distill.precompute import soft_labels_dir, training_keys
    from distill.soft_labels import SoftLabels, read_soft_labels
    from distill.teacher_client import TeacherClient
    from recdata.datamodule import SequentialDataModule
    from runkit.entry import compose
    from runkit.evaluation import read_metrics
    from teacher.testing import ServiceProcess

    out = (args.out or Path(tempfile.mkdtemp(prefix="bench-distill-restart-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    checkpoint, data = checkpoint.resolve(), args.data.resolve()
    cache = out / "service_cache"
    served_by = [
        "distill.teacher_source=service",
        f"distill.service_cache_dir={cache}",
        f"distill.retry_budget={args.retry_budget}",
    ]
    cmd = distill_command(
        out, "service", checkpoint, data, args.seed, [*served_by, *args.overrides]
    )
    # the run's config
    cfg = compose("run_distill", [o for o in cmd[4:] if not o.startswith("hydra.")])
    d = cfg.distill
    dm = SequentialDataModule(
        data, max_seq_len=cfg.student.max_seq_len, limit_data_rows=cfg.dataset.limit_data_rows
    )
    dm.setup()
    keys = training_keys(dm, d.soft_label_samples)
    log = out / "serve.log"
    t_service = time.perf_counter()
    with ServiceProcess(checkpoint, data, log_file=log, startup_timeout=600) as service:
        with TeacherClient(service.url) as client:
            endpoint, calls = label_endpoint_and_calls(
                client.info(), dm, keys, d.teacher_batch_size
            )
        # answered calls before the kill (the next one is in flight or about to be sent): a third,
        # and at least one when there are several, so the kill is mid-fetch
        kill_after = min(calls - 1, max(1, calls // 3))
        print(
            f"service on {service.url} ready in {time.perf_counter() - t_service:.0f} s; the fetch "
            f"of {len(keys)} prefixes makes {calls} {endpoint} calls; SIGKILL after "
            f"{kill_after} answered (counted in {log})",
            flush=True,
        )
        answered = AccessLog(log, endpoint)
        cmd = distill_command(
            out,
            "service",
            checkpoint,
            data,
            args.seed,
            [*served_by, f"distill.teacher_url={service.url}", *args.overrides],
        )
        t0 = time.perf_counter()
        child = run_child(cmd, out / "service.log")
        events: dict[str, float] = {}
        while child.poll() is None and "resumed" not in events:
            n = answered.answered()
            if "killed" not in events and n >= kill_after:
                events["killed"], events["answered_at_kill"] = time.perf_counter(), n
                service.kill()
                events["port_free"] = wait_port_free(service.port)
                print(
                    f"[{time.strftime('%H:%M:%S')}] killed the server (SIGKILL) after {n} answered "
                    f"calls, {events['killed'] - t0:.0f} s into the run; port free after "
                    f"{events['port_free'] or float('nan'):.2f} s",
                    flush=True,
                )
                service.start()
                events["ready"] = time.perf_counter() - events["killed"]
                print(
                    f"[{time.strftime('%H:%M:%S')}] restarted on the same port, ready "
                    f"{events['ready']:.1f} s after the kill",
                    flush=True,
                )
            elif "killed" in events and n > events["answered_at_kill"]:
                events["resumed"] = time.perf_counter() - events["killed"]
            time.sleep(0.05)
        run_service = finished_run(child, cmd, out / "service.log")
        service_s = time.perf_counter() - t0
        total_answered = answered.answered()
    if "resumed" not in events:
        raise SystemExit(
            f"the run ended without the kill and a resumed fetch ({events}); see {log}"
        )

    if args.precomputed_run:
        run_pre, pre_note = args.precomputed_run.resolve(), "given"
    else:
        cmd = distill_command(out, "precomputed", checkpoint, data, args.seed, list(args.overrides))
        t0 = time.perf_counter()
        run_pre = finished_run(
            run_child(cmd, out / "precomputed.log"), cmd, out / "precomputed.log"
        )
        pre_note = f"{time.perf_counter() - t0:.0f} s"

    fetched = cached_labels(cache, d.candidate_topk)
    lost = len(keys) - len({(int(u), int(p)) for u, p in zip(fetched[0], fetched[1], strict=True)})
    served = SoftLabels(*fetched, torch.zeros(1), {}).aligned_to(keys)
    precomputed = read_soft_labels(
        soft_labels_dir(cfg, checkpoint), fingerprint=dm.fingerprint
    ).aligned_to(keys)
    labels_equal = (
        torch.equal(served.user_ids, precomputed.user_ids)
        and torch.equal(served.positions, precomputed.positions)
        and torch.equal(served.topk_items, precomputed.topk_items[:, : served.k])
        and torch.equal(served.topk_scores, precomputed.topk_scores[:, : served.k])
    )
    metrics = {
        name: read_metrics(run / "test_metrics.json")["metrics_masked"]
        for name, run in (("service, killed", run_service), ("precomputed", run_pre))
    }
    tables = [
        pq.read_table(run / "test_predictions.parquet").sort_by(
            [("user_id", "ascending"), ("position", "ascending")]
        )
        for run in (run_service, run_pre)
    ]
    print(f"\nteacher                 {checkpoint}")
    print(
        f"label fetch             {len(keys)} prefixes, {calls} {endpoint} calls of batch "
        f"{d.teacher_batch_size}; {total_answered} answered in all "
        f"({total_answered - calls} answered twice)"
    )
    port = (
        "NEVER (taken 30 s after)"
        if events["port_free"] is None
        else f"{events['port_free']:.2f} s"
    )
    print(
        f"server SIGKILLed        after {events['answered_at_kill']} of {calls} calls answered; "
        f"port free after {port}; restarted (ready) {events['ready']:.1f} s and the fetch resumed "
        f"{events['resumed']:.1f} s after the kill"
    )
    print(
        f"prefixes lost           {lost} of {len(keys)}; fetched labels bitwise equal to the "
        f"precomputed ones: {labels_equal}"
    )
    for name, run in (("service, killed", run_service), ("precomputed", run_pre)):
        m = metrics[name]
        wall = (
            f"{service_s:.0f} s (fetch, restart and training)" if run == run_service else pre_note
        )
        print(
            f"distill ({name:15s}) test NDCG@10 {m['ndcg@10']:.6f}  HR@10 "
            f"{m['hr@10']:.6f}  wall {wall}  {run}"
        )
    print(
        f"test metrics identical  {metrics['service, killed'] == metrics['precomputed']}; per-user "
        f"test predictions identical: {tables[0].equals(tables[1])} ({tables[0].num_rows} users)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.speed.service", description=__doc__.split("\n\n")[0]
    )
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
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds per concurrency level (instead of --requests calls)",
    )
    parser.add_argument(
        "--restart", action="store_true", help="(c): kill -9 and restart the service mid-fetch"
    )
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--all-prefixes",
        action="store_true",
        help="(a'): label every training prefix in-process and through the service (with "
        "--restart: (c) on that fetch), nothing else",
    )
    parser.add_argument(
        "--in-process",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="--all-prefixes: also label in-process (--no-in-process: the service's figures only)",
    )
    parser.add_argument(
        "--distill-restart",
        action="store_true",
        help="(d): distill experiment=cpu_demo distill.teacher_source=service with the server "
        "killed a third of the way through the fetch and restarted, vs distill on the precomputed "
        "labels",
    )
    parser.add_argument(
        "--seed", type=int, default=42, help="--distill-restart: seed of both distill runs"
    )
    parser.add_argument(
        "--precomputed-run",
        type=Path,
        help="--distill-restart: an existing precomputed-labels distill run of the same seed and "
        "settings to compare with (default: run one)",
    )
    parser.add_argument(
        "--retry-budget",
        type=float,
        default=600.0,
        help="--distill-restart: distill.retry_budget, seconds (a restart must fit)",
    )
    parser.add_argument(
        "--out", type=Path, help="--distill-restart: directory for the runs and logs"
    )
    args, args.overrides = parser.parse_known_args()
    bad = [o for o in args.overrides if o.startswith("-") or "=" not in o]
    if bad or (args.overrides and not args.distill_restart):
        parser.error(
            f"unrecognised arguments {bad or args.overrides} (Hydra overrides "
            "key=value go with --distill-restart)"
        )
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
        return label_all(
            checkpoint, args.data, args.batch_size, args.k, args.restart, args.in_process
        )
    if args.distill_restart:
        return distill_restart(args, checkpoint)
    t0 = time.perf_counter()
    teacher, ckpt = load_teacher(checkpoint, load_prepared(args.data))
    print(
        f"in-process load         {time.perf_counter() - t0:.1f} s  "
        f"({ckpt.hparams['teacher']['llm_model_name']})"
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
        f"in-process scoring      {n / seconds:7.2f} samples/s  ({n} samples, batch "
        f"{args.batch_size}, {seconds:.1f} s)"
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
            f"through the service     {n / seconds:7.2f} samples/s  ({n} samples, batch "
            f"{args.batch_size}, {seconds:.1f} s incl. info + item embeddings; items identical: "
            f"{same_items}, max |score diff| {diff:.2e})"
        )

        histories = [
            row[row > 0].tolist() for row in dataset.__getitems__(list(range(n)))["full_history"]
        ]
        for clients in (int(c) for c in args.levels.split(",")):
            before = batch_histogram(service.url)
            start = time.perf_counter()
            times, errors, probes = latency_level(
                service.url, histories, clients, args.requests, args.k, args.duration
            )
            wall = time.perf_counter() - start
            after = batch_histogram(service.url)
            batches = after[1] - before[1]
            mean_batch = (after[0] - before[0]) / batches if batches else float("nan")
            print(
                f"latency {clients:>2} client(s)    p50 {statistics.median(times):6.2f} s  p99 "
                f"{percentile(times, 99):6.2f} s  ({len(times)} calls, {errors} errors in "
                f"{wall:.0f} s, {len(times) / wall:.2f} calls/s, mean model batch "
                f"{mean_batch:.1f}; /readyz {sum(p == 200 for p in probes)}/{len(probes)} "
                "probes 200)"
            )
        if args.restart:
            report = fetch_with_restart(
                service, dm, keys, k=args.k, batch_size=args.batch_size, reference=labels
            )
            print(f"restart mid-fetch       {report.text()}")


if __name__ == "__main__":
    main()
