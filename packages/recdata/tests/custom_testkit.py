"""A tiny dataset of one's own (string ids, like Amazon's) written as CSV, TSV, Parquet and RecBole
atomic files, and what `recdata prepare NAME --from ...` must make of it.

File order (ties in time are broken by it):

    u_b B002 5 t100 | u_a B001 4 t50 | u_b B010 3 t100 | u_a B002 2 t60 | u_c B001 5 t10
    u_a B010 1 t70  | u_b B001 4 t90 | u_c B002 3 t20  | u_c B003 4 t30 | u_d B001 5 t5
    u_d B003 5 t6   (u_d has 2 interactions: dropped by the default minimum of 3)

Users u_a u_b u_c -> 1 2 3; items B001 B002 B003 B010 -> 1 2 3 4 (string order); the items
table also lists B099, never rated, which is left out.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROWS = [
    ("u_b", "B002", 5, 100),
    ("u_a", "B001", 4, 50),
    ("u_b", "B010", 3, 100),
    ("u_a", "B002", 2, 60),
    ("u_c", "B001", 5, 10),
    ("u_a", "B010", 1, 70),
    ("u_b", "B001", 4, 90),
    ("u_c", "B002", 3, 20),
    ("u_c", "B003", 4, 30),
    ("u_d", "B001", 5, 5),
    ("u_d", "B003", 5, 6),
]
# item -> (title, categories, price); B003 has no text at all
ITEMS = {
    "B001": ("Red Shoes", ["Clothing", "Shoes"], 19.99),
    "B002": ("Blue Hat", ["Hats"], 5.0),
    "B003": ("", [], 7.0),
    "B010": ("Green, Scarf", ["Scarves"], 12.0),
    "B099": ("Never rated", ["X"], 1.0),
}

USERS = ["u_a", "u_b", "u_c"]
ITEM_IDS = ["B001", "B002", "B003", "B010"]
SEQUENCES = [[1, 2, 4], [1, 2, 4], [1, 2, 3]]
TIMES = [[50, 60, 70], [90, 100, 100], [10, 20, 30]]
RATINGS = [[4, 2, 1], [4, 5, 3], [5, 3, 4]]
# the CSV/TSV categories cell is "|"-joined text; Parquet holds a list, joined with ", "
CSV_TITLES = [
    "title: Red Shoes; categories: Clothing|Shoes",
    "title: Blue Hat; categories: Hats",
    "",
    "title: Green, Scarf; categories: Scarves",
]
PARQUET_TITLES = [CSV_TITLES[0].replace("|", ", "), *CSV_TITLES[1:]]


def write_csv(directory: Path, rows=ROWS, items=ITEMS, sep: str = ",") -> tuple[Path, Path]:
    """interactions.csv (user,item,rating,ts) and items.csv (item_id,title,categories,price)."""
    directory.mkdir(parents=True, exist_ok=True)
    ext = "csv" if sep == "," else "tsv"

    def cell(text: str) -> str:
        return f'"{text}"' if sep == "," and ("," in text or '"' in text) else text

    inter = directory / f"interactions.{ext}"
    inter.write_text(
        sep.join(["user", "item", "rating", "ts"])
        + "\n"
        + "".join(sep.join(map(str, row)) + "\n" for row in rows)
    )
    lines = [sep.join(["item_id", "title", "categories", "price"])]
    lines += [sep.join([i, cell(t), "|".join(c), f"{p:g}"]) for i, (t, c, p) in items.items()]
    item_path = directory / f"items.{ext}"
    item_path.write_text("\n".join(lines) + "\n")
    return inter, item_path


def write_parquet(directory: Path) -> tuple[Path, Path]:
    """The same data as Parquet: ts as a timestamp column, categories as a list column."""
    directory.mkdir(parents=True, exist_ok=True)
    users, items, ratings, ts = zip(*ROWS, strict=True)
    inter = pa.table(
        {
            "user": list(users),
            "item": list(items),
            "rating": pa.array(ratings, pa.float64()),
            "ts": pa.array(ts, pa.int64()).cast(pa.timestamp("s")),
        }
    )
    table = pa.table(
        {
            "item_id": list(ITEMS),
            "title": [v[0] for v in ITEMS.values()],
            "categories": [v[1] for v in ITEMS.values()],
            "price": [v[2] for v in ITEMS.values()],
        }
    )
    pq.write_table(inter, directory / "interactions.parquet")
    pq.write_table(table, directory / "items.parquet")
    return directory / "interactions.parquet", directory / "items.parquet"


def write_atomic(directory: Path, name: str = "shop", rows=ROWS, items=ITEMS) -> Path:
    """NAME.inter / NAME.item with RecBole's typed headers (field names RecBole's defaults)."""
    directory.mkdir(parents=True, exist_ok=True)
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    inter += "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows)
    (directory / f"{name}.inter").write_text(inter)
    item = "item_id:token\ttitle:token_seq\tcategories:token_seq\tprice:float\n"
    item += "".join(f"{i}\t{t}\t{' '.join(c)}\t{p:g}\n" for i, (t, c, p) in items.items())
    (directory / f"{name}.item").write_text(item)
    return directory
