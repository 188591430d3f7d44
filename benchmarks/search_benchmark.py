"""Search benchmarks: memory bandwidth, exact search, the ANN index, end-to-end search and index build.

    python benchmarks/search_benchmark.py [--model M.keras] [--only bandwidth,exact,ann,e2e,build]
    python benchmarks/search_benchmark.py --smoke     # seconds: every part at a toy size, a check only

Prints one JSON line per measurement. Vectors are random unit vectors (normal samples divided by
their norm), the hard case for ANN: real embeddings cluster. Latencies time the similarity stage only
(the query embedding is given), except "e2e", which includes the text tower. Without --model the
model is the tiny random-init one from tests/helpers.py (its size is printed).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def emit(name, **values):
    print(json.dumps({"benchmark": name, **values}), flush=True)


def unit_rows(count, dim, seed, dtype=np.float32, chunk=100_000):
    rng = np.random.default_rng(seed)
    out = np.empty((count, dim), dtype=dtype)
    for start in range(0, count, chunk):
        rows = rng.standard_normal((min(chunk, count - start), dim), dtype=np.float32)
        out[start:start + len(rows)] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return out


def timings(function, repeats, warmup=3):
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return np.asarray(times)


def ms(times, q):
    return round(1e3 * float(np.percentile(times, q)), 3)


def peak_rss_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def reset_peak_rss():
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux)
    except OSError:
        pass


def bandwidth(log2_floats=28):
    """Streaming read bandwidth of a 1 GiB float32 array: numpy sum (1 thread) and BLAS GEMV (all threads)."""
    big = np.ones(1 << log2_floats, dtype=np.float32)
    matrix = big.reshape(-1, 256)
    vector = np.ones(256, dtype=np.float32)
    out = np.empty(len(matrix), dtype=np.float32)
    results = {}
    for name, function in (("numpy_sum", big.sum), ("blas_gemv", lambda: np.dot(matrix, vector, out=out))):
        times = timings(function, 9, warmup=2)
        results[name] = round(big.nbytes / float(np.median(times)) / 1e9, 2)
    emit("bandwidth", bytes=big.nbytes, gb_per_s=results, method=f"median of 9 full reads of {big.nbytes / 2**30:g} GiB")
    return max(results.values()) * 1e9


def exact(bytes_per_second, rows, dim):
    from kclip.index.index import ExactSearcher

    database32 = unit_rows(rows, dim, seed=0)
    queries = unit_rows(64 * 20, dim, seed=1)
    for dtype in ("float32", "float16"):
        stored = database32.astype(dtype)
        searcher = ExactSearcher(stored)  # what Index.search uses: float32 in memory
        counter = iter(range(10**9))
        single = timings(lambda: searcher.search(queries[next(counter) % len(queries)][None], 10), 200)
        scanned = searcher.embeddings.nbytes
        floor_ms = 1e3 * scanned / bytes_per_second
        emit("exact_single_query", rows=rows, dim=dim, stored_dtype=dtype, searched_dtype="float32", k=10,
             p50_ms=ms(single, 50), p99_ms=ms(single, 99), scanned_bytes=scanned, floor_ms=round(floor_ms, 3),
             p50_over_floor=round(ms(single, 50) / floor_ms, 2), vectors="random unit")
        batches = iter(range(10**9))
        batch = timings(lambda: searcher.search(queries[(next(batches) % 20) * 64:][:64], 10), 20)
        emit("exact_batch64", rows=rows, dim=dim, stored_dtype=dtype, k=10, p50_ms=ms(batch, 50),
             p99_ms=ms(batch, 99), queries_per_s=round(64 / float(np.median(batch)), 1), vectors="random unit")


def ann(rows, dim, num_queries, dtype):
    from kclip.index.ann import AnnSearcher
    from kclip.evaluation.metrics import top_k

    database = unit_rows(rows, dim, seed=2, dtype=dtype)
    queries = unit_rows(num_queries, dim, seed=3)
    start = time.perf_counter()
    truth, _ = top_k(queries, database, 10)
    exact_seconds = time.perf_counter() - start

    reset_peak_rss()
    rss_before = peak_rss_mb()
    start = time.perf_counter()
    searcher = AnnSearcher.build(database)
    build_seconds = time.perf_counter() - start
    rss_peak = peak_rss_mb()
    import faiss

    index_bytes = len(faiss.serialize_index(searcher.faiss_index))
    emit("ann_build", rows=rows, dim=dim, stored_dtype=dtype, build_s=round(build_seconds, 2),
         rss_before_mb=rss_before, rss_peak_mb=rss_peak, build_extra_peak_mb=round(rss_peak - rss_before, 1),
         ann_file_mb=round(index_bytes / 2**20, 1), embeddings_mb=round(database.nbytes / 2**20, 1),
         spec=f"PQ{searcher.faiss_index.pq.M}x4fs + exact rerank of {searcher.rerank}", vectors="random unit")

    latencies, found = [], []
    for query in queries:  # one query at a time, as an interactive search would
        start = time.perf_counter()
        indices, _ = searcher.search(query[None], 10)
        latencies.append(time.perf_counter() - start)
        found.append(indices[0])
    recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]))
    latencies = np.asarray(latencies)
    emit("ann_search", rows=rows, dim=dim, stored_dtype=dtype, queries=num_queries, k=10,
         p50_ms=ms(latencies, 50), p99_ms=ms(latencies, 99), recall_at_10=round(recall, 4),
         exact_batch_search_s=round(exact_seconds, 2), faiss_threads=faiss.omp_get_max_threads(),
         vectors="random unit (database and queries)")


def load_model(path):
    import keras

    if path:
        import kclip

        return kclip.load_model(path), Path(path).name
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import tiny_model

    keras.utils.set_random_seed(0)
    return tiny_model(), "tests/helpers.tiny_model (random init)"


def model_facts(model, name):
    return {"model": name, "params": int(model.count_params()), "image_size": int(model.image_size)}


def end_to_end(model, name, rows):
    from kclip.index.index import Index
    from kclip.index.search import search

    dim = int(model.encode_text(["warm up"]).shape[1])
    index = Index([f"/photos/{i}.jpg" for i in range(rows)], unit_rows(rows, dim, seed=4, dtype=np.float16),
                  model.fingerprint())
    index.prepare()
    text = timings(lambda: model.encode_text(["a dog on the beach"]), 30)
    total = timings(lambda: search("a dog on the beach", model, index, top_k=9), 30)
    emit("e2e_text_search", **model_facts(model, name), index_rows=rows, dim=dim, backend=index.resolved_backend,
         p50_ms=ms(total, 50), p99_ms=ms(total, 99), text_tower_p50_ms=ms(text, 50))


def build_throughput(model, name, count, side):
    from PIL import Image

    from kclip.index.index import build_index

    rng = np.random.default_rng(5)
    with tempfile.TemporaryDirectory() as folder:
        photos = Path(folder) / "photos"
        photos.mkdir()
        for number in range(count):  # smooth random pictures, saved as JPEG like camera photos
            small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(small).resize((side, side), Image.Resampling.BICUBIC).save(
                photos / f"{number:05d}.jpg", quality=90)
        build_index(model, photos, Path(folder) / "warm", progress=False)  # warm-up (graph building)
        start = time.perf_counter()
        index = build_index(model, photos, Path(folder) / "index", batch_size=32, progress=False)
        seconds = time.perf_counter() - start
    emit("index_build", **model_facts(model, name), images=count, jpeg_side=side, batch_size=32,
         seconds=round(seconds, 2), images_per_s=round(len(index) / seconds, 1))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="bandwidth,exact,ann,e2e,build")
    parser.add_argument("--model", help=".keras model for e2e and build (default: the tiny test model)")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--exact-rows", type=int, default=100_000)
    parser.add_argument("--ann-rows", type=int, default=1_000_000)
    parser.add_argument("--ann-queries", type=int, default=1000)
    parser.add_argument("--ann-dtype", default="float16", choices=["float16", "float32"])
    parser.add_argument("--e2e-rows", type=int, default=100_000)
    parser.add_argument("--build-images", type=int, default=256)
    parser.add_argument("--build-side", type=int, default=500, help="side of the generated JPEGs")
    parser.add_argument("--smoke", action="store_true", help="every part at a toy size: a check, not a measurement")
    args = parser.parse_args(argv)
    if args.smoke:
        from kclip.index.ann import MIN_ANN_ROWS

        args.dim, args.exact_rows, args.ann_rows, args.ann_queries = 16, 2000, MIN_ANN_ROWS + 16, 8
        args.e2e_rows, args.build_images, args.build_side = 2000, 4, 64
    parts = set(args.only.split(","))
    emit("machine", smoke=args.smoke, cpu=platform.processor() or platform.machine(), cores=os.cpu_count(),
         numpy=np.__version__, date=time.strftime("%Y-%m-%d"),
         openblas_num_threads=os.environ.get("OPENBLAS_NUM_THREADS", "default"), load_average=os.getloadavg())
    bytes_per_second = bandwidth(20 if args.smoke else 28) if {"bandwidth", "exact"} & parts else None
    if "exact" in parts:
        exact(bytes_per_second, args.exact_rows, args.dim)
    if "ann" in parts:
        ann(args.ann_rows, args.dim, args.ann_queries, args.ann_dtype)
    if {"e2e", "build"} & parts:
        model, name = load_model(args.model)
        if "e2e" in parts:
            end_to_end(model, name, args.e2e_rows)
        if "build" in parts:
            build_throughput(model, name, args.build_images, args.build_side)


if __name__ == "__main__":
    main()
