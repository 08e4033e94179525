"""`recdata fetch|prepare|stats <dataset>`: the built-in MovieLens datasets, or your own data
with `recdata prepare NAME --from PATH [options]` (docs/data.md)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from recdata import paths
from recdata.contract import load_prepared
from recdata.custom import CustomSource, build_custom_contract, check_name
from recdata.errors import UserError, report_and_exit
from recdata.fetch import fetch, install_local, is_fetched
from recdata.filters import DUPLICATES, Filters
from recdata.prepare import build_contract
from recdata.sources import DATASETS, dataset_spec

# Options that only a dataset of your own takes (dest -> option, for the error message).
_CUSTOM_ONLY = {
    "format": "--format",
    "user_col": "--user-col",
    "item_col": "--item-col",
    "time_col": "--time-col",
    "rating_col": "--rating-col",
    "items_path": "--items",
    "item_id_col": "--item-id-col",
    "text_cols": "--text-cols",
    "year_col": "--year-col",
    "genres_col": "--genres-col",
    "genres_sep": "--genres-sep",
    "max_text_chars": "--max-text-chars",
    "allow_missing_items": "--allow-missing-items",
}


def _common(parser: argparse.ArgumentParser, help_text: str | None = None) -> None:
    parser.add_argument("dataset", help=help_text or f"one of: {', '.join(sorted(DATASETS))}")
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
    _common(p_prep, f"{', '.join(sorted(DATASETS))}, or a name for your own data (with --from)")
    p_prep.add_argument("--out", type=Path, help="default: <data-root>/processed/<dataset>")
    p_prep.add_argument(
        "--from",
        dest="from_path",
        type=Path,
        help="built-in dataset: an already-downloaded directory or zip; your own data: RecBole "
        "atomic files (a directory holding NAME.inter [NAME.item], or the .inter file), or a "
        "CSV/TSV/Parquet file",
    )
    p_prep.add_argument(
        "--sha256", help="expected sha256 of the --from zip (default: the official one)"
    )
    _filter_options(p_prep.add_argument_group("filters (every dataset)"))
    _custom_options(p_prep.add_argument_group("your own data"))
    p_stats = sub.add_parser("stats", help="print the statistics of a prepared dataset")
    _common(p_stats, "a built-in dataset or one of your own, prepared")
    p_stats.add_argument(
        "--out", type=Path, help="prepared directory (default: <data-root>/processed/<dataset>)"
    )
    return parser


def _filter_options(group) -> None:
    group.add_argument(
        "--min-user-interactions",
        type=int,
        default=3,
        help="drop users with fewer (>= 3; default 3)",
    )
    group.add_argument(
        "--min-item-interactions",
        type=int,
        default=1,
        help="drop items with fewer; with the user minimum, repeated to a fixed point (k-core)",
    )
    group.add_argument(
        "--duplicates",
        choices=DUPLICATES,
        default="keep-all",
        help="repeated (user, item) pairs: keep all (default), or the chronologically first/last",
    )
    group.add_argument(
        "--rating-threshold",
        type=float,
        help="drop interactions rated below it (implicit feedback)",
    )


def _custom_options(group) -> None:
    group.add_argument(
        "--format",
        choices=("atomic", "csv", "tsv", "parquet"),
        help="of the --from file (default: from its extension; a directory is atomic)",
    )
    group.add_argument("--user-col", "--user-field", dest="user_col", help="default: user_id")
    group.add_argument("--item-col", "--item-field", dest="item_col", help="default: item_id")
    group.add_argument(
        "--time-col",
        "--time-field",
        dest="time_col",
        help="default: timestamp when there is one, else the file order is the order",
    )
    group.add_argument(
        "--rating-col",
        "--rating-field",
        dest="rating_col",
        help="default: rating when there is one, else every rating is 1",
    )
    group.add_argument(
        "--items",
        dest="items_path",
        type=Path,
        help="items table (CSV/TSV/Parquet/.item; default: NAME.item next to NAME.inter)",
    )
    group.add_argument(
        "--item-id-col", help="item id column of the items table (default: the item column's name)"
    )
    group.add_argument(
        "--text-cols",
        help="comma-separated columns describing an item, joined into its title "
        "(default: every text column of the items table)",
    )
    group.add_argument(
        "--max-text-chars", type=int, help="cap on an item's text, cut between words (default 512)"
    )
    group.add_argument("--year-col", help="items column holding a year (default: none)")
    group.add_argument(
        "--genres-col", help="items column holding genres/categories (default: none)"
    )
    group.add_argument(
        "--genres-sep", help="separator of --genres-col in CSV/TSV cells (default: |)"
    )
    group.add_argument(
        "--allow-missing-items",
        action="store_true",
        default=None,
        help="rated items the items table lacks get empty text instead of an error",
    )


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
        (_dropped_users_label(meta["filters"]), f"{counts['dropped_users']}"),
        *_extra_stats(meta),
        ("train samples", f"{samples['train']}"),
        ("valid samples", f"{samples['valid']}"),
        ("test samples", f"{samples['test']}"),
        ("fingerprint", meta["fingerprint"][:16]),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _dropped_users_label(filters: dict) -> str:
    if "min_item_interactions" in filters:  # users also go when their items do (k-core)
        return "dropped users (all filters)"
    return "dropped users (< {} interactions)".format(filters["min_user_interactions"])


def _extra_stats(meta: dict) -> list[tuple[str, str]]:
    """Rows only a dataset with more than the per-user minimum (or of your own) has."""
    filters, counts, rows = meta["filters"], meta["counts"], []
    if "min_item_interactions" in filters:
        dropped = filters["dropped"]
        if filters["rating_threshold"] is not None:
            rows.append(
                (
                    f"dropped by rating < {filters['rating_threshold']:g}",
                    f"{dropped['rating_threshold']} interactions",
                )
            )
        if filters["duplicates"] != "keep-all":
            rows.append(
                (
                    f"dropped duplicates ({filters['duplicates']})",
                    f"{dropped['duplicates']} interactions",
                )
            )
        rounds = filters["k_core_rounds"]
        text = "; ".join(
            f"-{r['users']} users -{r['items']} items -{r['interactions']} interactions"
            for r in rounds
        )
        label = (
            f"k-core rounds (users >= {filters['min_user_interactions']}, "
            f"items >= {filters['min_item_interactions']})"
        )
        rows.append((label, f"{len(rounds)}" + (f": {text}" if rounds else " (nothing to drop)")))
    if "dropped_items" in counts:
        rows.append(("dropped items", f"{counts['dropped_items']}"))
    if "order" in meta:
        rows.append(("order", meta["order"]))
    if "item_text" in meta:
        text = meta["item_text"]
        rows.append(
            (
                "item text",
                "none"
                if text is None
                else f"{', '.join(text['columns'])} ({text['items_with_text']} items with text)",
            )
        )
    return rows


def _custom_source(args: argparse.Namespace) -> CustomSource:
    given = {dest: getattr(args, dest) for dest in _CUSTOM_ONLY if getattr(args, dest) is not None}
    if "text_cols" in given:
        given["text_cols"] = tuple(c.strip() for c in given["text_cols"].split(",") if c.strip())
    return CustomSource(path=args.from_path, **given)


def _filters(args: argparse.Namespace) -> Filters:
    return Filters(
        args.min_user_interactions,
        args.min_item_interactions,
        args.duplicates,
        args.rating_threshold,
    )


def _prepare_custom(args: argparse.Namespace) -> None:
    if args.from_path is None:
        known = ", ".join(sorted(DATASETS))
        raise UserError(
            f"unknown dataset {args.dataset!r}; known datasets: {known}; for your own data: "
            f"recdata prepare {args.dataset} --from PATH ... (docs/data.md)"
        )
    check_name(args.dataset)
    if args.sha256:
        raise UserError(
            "--sha256 checks a built-in dataset's zip; your own files are read as they are"
        )
    started = time.perf_counter()
    default_out = paths.processed_dir(args.data_root, args.dataset)
    out = args.out or default_out
    use = [f"dataset.name={args.dataset}"]
    if Path(out).resolve() != Path("data/processed", args.dataset).resolve():
        use.append(f"dataset.processed_dir={Path(out).resolve()}")
    meta = build_custom_contract(args.dataset, _custom_source(args), out, _filters(args), use=use)
    print(format_stats(meta))
    print(f"prepared {args.dataset} into {out} in {time.perf_counter() - started:.1f}s")
    print(f"use it in every command with: {' '.join(use)}")


def run(args: argparse.Namespace) -> None:
    if args.command == "stats" and args.dataset not in DATASETS:
        check_name(args.dataset)
        print(
            format_stats(
                load_prepared(args.out or paths.processed_dir(args.data_root, args.dataset)).meta
            )
        )
        return
    if args.command == "prepare" and args.dataset not in DATASETS:
        return _prepare_custom(args)
    if args.command == "prepare":
        given = [option for dest, option in _CUSTOM_ONLY.items() if getattr(args, dest) is not None]
        if given:
            raise UserError(
                f"{', '.join(given)}: only for your own data; {args.dataset} is built in "
                f"(prepare your copy under another name to read it your way)"
            )
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
            return build_contract(spec, source, out, filters=_filters(args))

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
