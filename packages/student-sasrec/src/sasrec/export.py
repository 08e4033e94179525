"""A portable export of a SASRec student: ONNX, run by ONNX Runtime.

Why ONNX rather than TorchScript: TorchScript is in maintenance in PyTorch 2.x (`torch.export` and
the dynamo-based `torch.onnx.export` replace it) and needs libtorch to run, while an ONNX file
runs on ONNX Runtime (CPU/GPU, from Python, C/C++, C#, Java, JavaScript and the browser) and is
served as it is by the serving tools that matter (Triton, ONNX Runtime server builds, BentoML,
KServe). The graph is the student's `score`: it needs no torch at inference.

    export-student result/<run>/checkpoints/best --out exports/student [--data DIR]

writes `DIR/model.onnx`, `DIR/items.parquet` (item_id, raw_id, title, train_interactions: the raw
ids, titles and the popularity fallback's counts) and `DIR/export.json`, which says how to call
the graph (input `history`: int64 (batch, max_seq_len), left-padded with 0, the newest item in
the last column; output `scores`: float32 (batch, N+1), column 0 = padding = -inf), names the
checkpoint (kind, digest) and data (fingerprint), and records the check made at export: the
export's top-K equals the checkpoint's for the test histories of the first users.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from recdata.errors import DataError, UserError, exit_on_user_error
from sasrec.recommend import (
    Catalogue,
    Query,
    Recommender,
    cold_protocol,
    default_data,
    load_catalogue,
)

MODEL_FILE, ITEMS_FILE, META_FILE = "model.onnx", "items.parquet", "export.json"
CHECK_USERS, CHECK_K = 256, 20


class _Scores(torch.nn.Module):
    """The graph exported: left-padded windows -> scores of every item."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        return self.model.score(history)


def export_onnx(checkpoint: Path, out: Path, data: Path | None = None) -> dict:
    """Export a student checkpoint to `out` (written atomically) and check it; -> export.json."""
    from recdata.atomic import atomic_directory, write_json

    out = Path(out)
    if out.exists() and not (out / META_FILE).is_file():
        raise UserError(f"--out {out} exists and is not a student export: choose a new directory")
    reference = Recommender.load(checkpoint, data)
    with atomic_directory(out) as tmp:
        opset = _write_graph(reference.model, tmp / MODEL_FILE)
        _write_items(reference.catalogue, tmp / ITEMS_FILE)
        exported = Recommender(
            OnnxScorer(tmp / MODEL_FILE), reference.catalogue, reference.max_seq_len
        )
        meta = _metadata(reference, opset)
        meta["check"] = check_same_top_k(reference, exported)
        if not meta["check"]["equal"]:
            raise UserError(f"the ONNX export differs from {checkpoint}: {meta['check']}")
        write_json(tmp / META_FILE, meta)
    return meta


def _write_graph(model, file: Path) -> int:
    """torch.export -> ONNX with a dynamic batch axis; -> the opset written."""
    import onnx

    width = model.config.max_seq_len
    example = torch.zeros(2, width, dtype=torch.long)
    example[:, -3:] = torch.arange(1, 4).clamp(max=model.config.num_items)
    batch = torch.export.Dim("batch")
    program = torch.onnx.export(
        _Scores(model).eval(),
        (example,),
        input_names=["history"],
        output_names=["scores"],
        dynamic_shapes=({0: batch},),
        dynamo=True,
        verbose=False,
    )
    program.save(str(file))
    return max(o.version for o in onnx.load(str(file)).opset_import if o.domain in ("", "ai.onnx"))


def _write_items(catalogue: Catalogue, file: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = catalogue.num_items
    table = pa.table(
        {
            "item_id": pa.array(np.arange(1, n + 1), pa.int32()),
            "raw_id": pa.array(catalogue.item_raw, pa.string()),
            "title": pa.array(catalogue.titles[1:], pa.string()),
            "train_interactions": pa.array(catalogue.popularity[1:], pa.int64()),
        }
    )
    pq.write_table(table, file)


def _metadata(reference: Recommender, opset: int) -> dict:
    info = reference.info
    return {
        "format": "onnx",
        "opset": opset,
        "runtime": "onnxruntime",
        "input": {
            "name": "history",
            "dtype": "int64",
            "shape": ["batch", reference.max_seq_len],
            "layout": "dense item ids (items.parquet item_id), left-padded with 0: the newest item "
            "in the last column; a longer history keeps its last max_seq_len items",
        },
        "output": {
            "name": "scores",
            "dtype": "float32",
            "shape": ["batch", info["num_items"] + 1],
            "layout": "column i scores item_id i; column 0 (padding) is -inf",
        },
        "checkpoint": {k: info[k] for k in ("checkpoint", "kind", "digest")},
        "data": {
            **{k: info[k] for k in ("dataset", "data_fingerprint", "num_items")},
            **cold_protocol(info),
        },
        "max_seq_len": reference.max_seq_len,
        "fallback": "an empty history: items by train_interactions, descending (ties by item_id)",
    }


class OnnxScorer:
    """The export's graph as a Recommender scorer (ONNX Runtime on the CPU)."""

    def __init__(self, model_file: Path, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(model_file), options, providers=["CPUExecutionProvider"]
        )

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        (scores,) = self.session.run(["scores"], {"history": windows.numpy()})
        return torch.from_numpy(scores)


def load_export(
    export_dir: Path, data: Path | None = None, threads: int | None = None
) -> Recommender:
    """A Recommender scoring with the export, over the dataset it names (or `data`)."""
    import json

    export_dir = Path(export_dir)
    if not (export_dir / META_FILE).is_file():
        raise UserError(f"{export_dir} is not a student export (no {META_FILE})")
    meta = json.loads((export_dir / META_FILE).read_text())
    data = Path(data) if data is not None else default_data({"data": meta["data"]})
    dataset, catalogue = load_catalogue(data, meta["data"])
    if dataset.fingerprint != meta["data"]["data_fingerprint"]:
        raise DataError(f"{export_dir} was exported for other data than {data}")
    info = {**meta["checkpoint"], **meta["data"], "export": str(export_dir)}
    scorer = OnnxScorer(export_dir / MODEL_FILE, threads)
    return Recommender(scorer, catalogue, meta["max_seq_len"], info=info)


def check_same_top_k(reference: Recommender, exported: Recommender) -> dict:
    """Top-K of both for the test histories (all but the last item) of the first users."""
    catalogue = reference.catalogue
    users = range(1, min(CHECK_USERS, len(catalogue.user_raw)) + 1)
    histories = [
        catalogue.items[catalogue.offsets[u - 1] : catalogue.offsets[u] - 1] for u in users
    ]
    queries = [Query(h.tolist(), CHECK_K) for h in histories]
    expected, got = reference.rank(queries), exported.rank(queries)
    same = [a.items == b.items for a, b in zip(expected, got, strict=True)]
    diff = max(
        (
            float(np.abs(np.subtract(a.scores, b.scores)).max(initial=0))
            for a, b in zip(expected, got, strict=True)
        ),
        default=0.0,
    )
    return {"histories": len(queries), "k": CHECK_K, "equal": all(same), "max_abs_score_diff": diff}


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="export-student", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="checkpoints/best (or its run directory)")
    parser.add_argument("--out", type=Path, required=True, help="export directory to write")
    parser.add_argument("--data", type=Path, help="prepared dataset (default: the card's)")
    args = parser.parse_args(argv)
    meta = export_onnx(args.checkpoint, args.out, args.data)
    check = meta["check"]
    print(
        f"wrote {args.out / MODEL_FILE} (opset {meta['opset']}); top-{check['k']} equal to the "
        f"checkpoint's for {check['histories']} test histories (max |score diff| "
        f"{check['max_abs_score_diff']:.1e})"
    )


if __name__ == "__main__":
    main()
