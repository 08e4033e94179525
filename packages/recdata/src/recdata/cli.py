"""`recdata fetch|prepare|stats <dataset>`."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from recdata import paths
from recdata.contract import load_prepared
from recdata.errors import UserError, report_and_exit
from recdata.fetch import fetch, install_local, is_fetched
from recdata.prepare import build_contract
from recdata.sources import DATASETS, dataset_spec


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help=f"one of: {', '.join(sorted(DATASETS))}")
    parser.add_argument("--data-root", type=Path, default=Path("data"), help="default: data/")
    parser.add_argument("--raw-dir", type=Path, help="raw files (default: <data-root>/<dataset>)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="default: $ILORA_CACHE or ~/.cache/ilora-dllm2rec",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recdata", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_fetch = sub.add_parser("fetch", help="fetch the raw files (checksum-verified)")
    _common(p_fetch)
    p_fetch.add_argument(
        "--from", dest="from_path", type=Path, help="use an already-downloaded directory or zip"
    )
    p_fetch.add_argument("--url", help="override the download URL (mirrors)")
    p_fetch.add_argument("--sha256", help="expected sha256 of the archive at --url")
    p_prep = sub.add_parser(
        "prepare", help="write the parquet data contract (fetching first when needed)"
    )
    _common(p_prep)
    p_prep.add_argument("--out", type=Path, help="default: <data-root>/processed/<dataset>")
    p_prep.add_argument("--min-user-interactions", type=int, default=3)
    p_prep.add_argument(
        "--from", dest="from_path", type=Path, help="use an already-downloaded directory or zip"
    )
    p_prep.add_argument("--sha256", help="expected sha256 of the --from zip (default: the official one)")
    p_stats = sub.add_parser("stats", help="print the statistics of a prepared dataset")
    _common(p_stats)
    p_stats.add_argument(
        "--out", type=Path, help="prepared directory (default: <data-root>/processed/<dataset>)"
    )
    return parser


def format_stats(meta: dict) -> str:
    counts, samples = meta["counts"], meta["split"]["samples"]
    density = counts["interactions"] / (counts["users"] * counts["items"])
    rows = [
        ("dataset", meta["dataset"]),
        ("users", f"{counts['users']}"),
        ("items", f"{counts['items']}"),
        ("interactions", f"{counts['interactions']}"),
        ("avg sequence length", f"{counts['interactions'] / counts['users']:.1f}"),
        ("density", f"{density:.4%}"),
        (
            "dropped users (< {} interactions)".format(meta["filters"]["min_user_interactions"]),
            f"{counts['dropped_users']}",
        ),
        ("train samples", f"{samples['train']}"),
        ("valid samples", f"{samples['valid']}"),
        ("test samples", f"{samples['test']}"),
        ("fingerprint", meta["fingerprint"][:16]),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def run(args: argparse.Namespace) -> None:
    spec = dataset_spec(args.dataset)
    raw = args.raw_dir or paths.raw_dir(args.data_root, spec.name)
    cache = args.cache_dir or paths.cache_dir()
    if args.command == "fetch":
        fetch(spec, raw, cache, from_path=args.from_path, url=args.url, sha256=args.sha256)
        print(f"fetched {spec.name} into {raw}")
        return
    out = args.out or paths.processed_dir(args.data_root, spec.name)
    if args.command == "prepare":
        started = time.perf_counter()

        def prepare(source: Path) -> dict:
            return build_contract(spec, source, out, min_user_interactions=args.min_user_interactions)

        if args.from_path is not None:  # prepared from the user's files, then installed
            meta = install_local(spec, args.from_path, raw, prepare, sha256=args.sha256)
        else:
            if not is_fetched(spec, raw):
                fetch(spec, raw, cache)
            meta = prepare(raw)
        print(format_stats(meta))
        print(f"prepared {spec.name} into {out} in {time.perf_counter() - started:.1f}s")
        return
    print(format_stats(load_prepared(out).meta))


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except UserError as error:
        report_and_exit(error)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
