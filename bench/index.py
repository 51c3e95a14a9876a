"""Indexer benchmarks (not a test): text-encoding throughput, ANN on 1M items, MovieLens.

    python bench/index.py --section text --ml-data DIR
    python bench/index.py --section ann [--n 1000000]
    python bench/index.py --section movielens --ml-store STORE

(a) ``text``: items/s of ``model_store.text.encoder.TextEncoder.encode`` against
``sentence_transformers.SentenceTransformer.encode`` on the same model directory, the same
texts, the same batch size and max length, alternating runs, median of ``--repeats``.
(b) ``ann``: a synthetic catalog of random-but-clustered float32 vectors (dim 64, the
model's default), per kind: build seconds, RSS growth and index bytes, recall@10/@100
against exact search, single-query and batch-of-64 latency (median, p99).
(c) ``movielens``: ``index_bundle`` on a trained MovieLens-100k bundle (build time, recall).
Prints markdown tables.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


# ---- (a) text encoding -------------------------------------------------------------------


def synthetic_texts(n: int) -> list[str]:
    from model_store.data import synthetic
    from model_store.data.dataset import load_dataset

    with tempfile.TemporaryDirectory() as tmp:
        synthetic.generate(users=50, items=n, interactions=500, out=Path(tmp), seed=3)
        return load_dataset(Path(tmp)).item_texts()


def bench_text(ml_data: Path, *, repeats: int, batch_size: int, n_synth: int) -> str:
    """The indexer's TextEncoder (default precision, and forced fp32) against
    SentenceTransformer.encode (fp32, its default), alternating runs, median of ``repeats``."""
    import torch
    from sentence_transformers import SentenceTransformer

    from model_store.config import DEFAULT_TEXT_MODEL
    from model_store.data.dataset import load_dataset
    from model_store.text.encoder import TextEncoder
    from model_store.text.lm import resolve_model_path

    path = resolve_model_path(DEFAULT_TEXT_MODEL)
    ours = TextEncoder(DEFAULT_TEXT_MODEL, max_length=128, device="cpu")  # precision auto
    fp32 = TextEncoder(DEFAULT_TEXT_MODEL, max_length=128, device="cpu", precision="fp32")
    st = SentenceTransformer(path, device="cpu")
    st.max_seq_length = 128
    sets = {
        "MovieLens titles+genres": load_dataset(ml_data).item_texts(),
        "synthetic ~60-word descriptions": synthetic_texts(n_synth),
    }
    rows = []
    for name, texts in sets.items():
        tok = ours.tokenizer(texts, truncation=True, max_length=128)["input_ids"]
        mean_tokens = float(np.mean([len(t) for t in tok]))
        runs: dict[str, Callable[[], np.ndarray]] = {
            "ours": lambda t=texts: ours.encode(t, batch_size=batch_size),
            "fp32": lambda t=texts: fp32.encode(t, batch_size=batch_size),
            "st": lambda t=texts: st.encode(
                t, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True
            ),
        }
        for fn in runs.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {k: [] for k in runs}
        vecs: dict[str, np.ndarray] = {}
        for _ in range(repeats):  # alternate so drift hits all three
            for key, fn in runs.items():
                t0 = time.perf_counter()
                vecs[key] = fn()
                times[key].append(time.perf_counter() - t0)
        rate = {k: len(texts) / statistics.median(v) for k, v in times.items()}
        cos = float(np.min(np.sum(vecs["ours"] * vecs["st"], axis=1)))
        rows.append(
            [
                name,
                str(len(texts)),
                f"{mean_tokens:.0f}",
                f"{rate['ours']:,.0f}",
                f"{rate['fp32']:,.0f}",
                f"{rate['st']:,.0f}",
                f"**{rate['ours'] / rate['st']:.2f}**",
                f"{rate['fp32'] / rate['st']:.2f}",
                f"{cos:.5f}",
            ]
        )
    head = (
        f"batch size {batch_size}, max length 128, {repeats} alternating repeats (median), "
        f"torch threads {torch.get_num_threads()}; TextEncoder default precision here: "
        f"{ours.precision}"
    )
    return (
        head
        + "\n\n"
        + table(
            [
                "texts",
                "n",
                "mean tokens",
                f"TextEncoder ({ours.precision}) items/s",
                "TextEncoder fp32 items/s",
                "SentenceTransformer items/s",
                "ratio",
                "ratio fp32",
                "min cosine(ours, ST)",
            ],
            rows,
        )
    )


# ---- (b) ANN on a synthetic 1M catalog -----------------------------------------------------


def clustered(n: int, dim: int, seed: int, centers: int = 2000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = np.random.default_rng(1234).standard_normal((centers, dim)).astype(np.float32)
    x = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 200_000):
        e = min(n, s + 200_000)
        x[s:e] = c[rng.integers(0, centers, e - s)]
        x[s:e] += 0.6 * rng.standard_normal((e - s, dim)).astype(np.float32)
    return x


def latency(fn: Callable[[], object], n: int) -> tuple[float, float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times)), float(np.percentile(times, 99))


def bench_ann(n: int, dim: int, n_queries: int, kinds: list[str]) -> str:
    import faiss

    from indexer.build import IndexParams, build_index, set_faiss_threads, tune_to_floor
    from model_store.errors import IndexBuildError

    cores = os.cpu_count() or 1
    set_faiss_threads(cores)
    t0 = time.perf_counter()
    x = clustered(n, dim, 0)
    q = clustered(n_queries, dim, 1)
    rows_ids = np.arange(n, dtype=np.int64)
    gen_s = time.perf_counter() - t0
    exact = faiss.IndexFlatIP(dim)
    exact.add(x)
    t0 = time.perf_counter()
    _, truth = exact.search(q, 100)
    exact_s = time.perf_counter() - t0
    del exact
    params = IndexParams(hnsw_m=32, ef_construction=80, ef_search=64, nprobe=16, max_ef_search=1024)
    rows = []
    for kind in kinds:
        rss0 = rss_bytes()
        t0 = time.perf_counter()
        p = params
        index = build_index(x, rows_ids, kind=kind, params=p)  # type: ignore[arg-type]
        build_s = time.perf_counter() - t0
        rss1 = rss_bytes()
        tune_s = 0.0
        note = ""
        if kind != "flat":  # tune on the first 200 queries, measure on all
            t0 = time.perf_counter()
            try:
                tune_to_floor(index, x, rows_ids, q[:200], floor=0.95, params=p)
            except IndexBuildError:
                note = " (floor 0.95 missed: would be refused)"
            tune_s = time.perf_counter() - t0
        _, got = index.search(q, 100)
        r10 = np.mean(
            [len(set(a[:10]) & set(b[:10])) / 10 for a, b in zip(got, truth, strict=True)]
        )
        r100 = np.mean([len(set(a) & set(b)) / 100 for a, b in zip(got, truth, strict=True)])
        with tempfile.TemporaryDirectory() as tmp:
            faiss.write_index(index.index, f"{tmp}/i")
            size = os.path.getsize(f"{tmp}/i")
        set_faiss_threads(1)  # a server: one thread per query
        single = latency(lambda i=index: i.search(q[:1], 10), 200 if kind != "flat" else 30)
        set_faiss_threads(cores)
        batch = latency(lambda i=index: i.search(q[:64], 10), 30 if kind != "flat" else 5)
        rows.append(
            [
                kind + note,
                str(index.params.model_dump(by_alias=True)),
                f"{build_s:.1f}",
                f"{tune_s:.1f}",
                f"{(rss1 - rss0) / 2**20:,.0f}",
                f"{size / 2**20:,.0f}",
                f"{r10:.4f}",
                f"{r100:.4f}",
                f"{single[0]:.2f} / {single[1]:.2f}",
                f"{batch[0]:.1f} / {batch[1]:.1f}",
            ]
        )
        del index
    head = (
        f"Build params: {params}. "
        f"{n:,} random-but-clustered float32 vectors (2,000 Gaussian clusters, dim {dim}; "
        f"no model trained), {n_queries} held-out queries from the same distribution; "
        f"exact top-100 of all queries: {exact_s:.1f}s (generation {gen_s:.1f}s). "
        "Single-query latency with 1 FAISS thread, batch of 64 with "
        f"{cores}; k = 10. Float vectors alone: {n * dim * 4 / 2**20:,.0f} MiB."
    )
    return (
        head
        + "\n\n"
        + table(
            [
                "kind",
                "tuned params",
                "build s",
                "tune s",
                "RSS Δ MiB",
                "index MiB",
                "recall@10",
                "recall@100",
                "1 query ms (median / p99)",
                "64 queries ms (median / p99)",
            ],
            rows,
        )
    )


# ---- (c) MovieLens-100k --------------------------------------------------------------------


def bench_movielens(store: Path, kinds: list[str]) -> str:
    from indexer.publish import index_bundle
    from model_store.bundle.io import read_manifest

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "store"
        shutil.copytree(store, work)
        for kind in kinds:
            t0 = time.perf_counter()
            path = index_bundle(work, kind=kind, device="cpu")  # type: ignore[arg-type]
            total = time.perf_counter() - t0
            s = read_manifest(path).index
            assert s is not None
            rows.append(
                [
                    kind,
                    str(s.n_vectors),
                    str(s.dim),
                    str(s.params.model_dump(by_alias=True)),
                    f"{s.encode_seconds or 0:.3f}",
                    f"{s.build_seconds:.3f}",
                    f"{total:.2f}",
                    f"{s.recall10:.4f}",
                    f"{s.recall100:.4f}",
                    str(s.recall_queries),
                ]
            )
    return table(
        [
            "kind",
            "items",
            "dim",
            "params",
            "encode s",
            "build s",
            "index_bundle total s",
            "recall@10",
            "recall@100",
            "user queries",
        ],
        rows,
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--section", choices=["text", "ann", "movielens", "all"], default="all")
    ap.add_argument("--ml-data", type=Path, help="dir from `fusionrec data movielens-100k`")
    ap.add_argument("--ml-store", type=Path, help="store from `fusionrec train --data ML`")
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--kinds", default="flat,hnsw,ivfpq")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--synthetic-texts", type=int, default=512)
    args = ap.parse_args()
    kinds = args.kinds.split(",")
    print(
        f"<!-- {dt.date.today()} · {platform.processor() or platform.machine()} · "
        f"{os.cpu_count()} CPU cores, no GPU -->"
    )
    if args.section in ("text", "all"):
        if args.ml_data is None:
            ap.error("--ml-data is needed for the text section")
        print("\n### Text encoding throughput\n")
        print(
            bench_text(
                args.ml_data,
                repeats=args.repeats,
                batch_size=args.batch_size,
                n_synth=args.synthetic_texts,
            ),
            flush=True,
        )
    if args.section in ("ann", "all"):
        print("\n### ANN on a synthetic catalog\n")
        print(bench_ann(args.n, args.dim, args.queries, kinds), flush=True)
    if args.section in ("movielens", "all"):
        if args.ml_store is None:
            ap.error("--ml-store is needed for the movielens section")
        print("\n### MovieLens-100k\n")
        print(bench_movielens(args.ml_store, ["flat", "hnsw"]), flush=True)


if __name__ == "__main__":
    main()
