"""Load on the search server over HTTP: many text queries from concurrent clients against a large index.

    PYTHONPATH=$PWD python benchmarks/serve_load.py --model runs/demo-page/model.keras \
        --out benchmarks/results/serve-load-2026-11-29.jsonl
    python benchmarks/serve_load.py --smoke        # a tiny random model, a few queries: a check only

The index holds --rows random unit vectors (default 100,000; the issue allows random vectors) written
in the real index format by kclip.index.store.commit, under the model's fingerprint, so the server
loads it like any other. The server is scripts/serve.py in its own process on a loopback port; the
clients are threads here, each with one keep-alive connection. First one client runs queries one at a
time (the latency of a lone query), then --clients clients send --queries queries together.
Prints one JSON line per phase, with the CPU model, its flags of interest and the load average.
"""
import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import httpx  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
SHAPES = ["circle", "square", "triangle", "star"]
PLACES = ["", " to the left of a blue square", " above a small red circle", " next to two triangles"]


def cpu_info() -> dict:
    model, flags = platform.processor(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                break
    except OSError:
        pass
    wanted = ["avx2", "avx512f", "avx512_bf16", "amx_bf16", "fma"]
    return {"cpu": model, "cpu_flags": [flag for flag in wanted if flag in flags], "cores": os.cpu_count()}


def queries(count: int) -> list:
    texts = [f"a {size}{colour} {shape}{place}" for size, colour, shape, place in
             itertools.product(["", "big ", "small "], COLOURS, SHAPES, PLACES)]
    rng = np.random.default_rng(0)
    return [texts[i] for i in rng.permutation(len(texts))[:count]] if count <= len(texts) else \
        [texts[i % len(texts)] for i in range(count)]


def write_random_index(model, rows: int, out_dir: Path) -> None:
    from kclip.index.store import FORMAT_NAME, FileRecord, commit

    dim = int(model.backbone.projection_dim)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((rows, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    header = {"format": FORMAT_NAME, "model_fingerprint": str(model.fingerprint()),
              "image_dir": str(out_dir.parent / "photos"), "dtype": "float16"}
    records = [FileRecord(f"{i // 1000:03d}/img_{i:06d}.jpg", 100_000, 0) for i in range(rows)]
    commit(out_dir, header, vectors.astype(np.float16), records, [])


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of this process (pid None), or of another one and its live
    descendants (a server's worker processes), from /proc."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    tree = {pid}
    for _ in range(3):  # the server, its workers, and anything they start
        tree |= {child for child, (parent, _) in stats.items() if parent in tree}
    total = sum(stats[member][1] for member in tree if member in stats)
    return total / os.sysconf("SC_CLK_TCK")


def run_clients(url: str, texts: list, clients: int, k: int) -> dict:
    latencies, errors, lock = [], [], threading.Lock()
    server_ms = {"embed": [], "search": []}  # from the Server-Timing header: time inside the server
    work = iter(texts)

    def client():
        with httpx.Client(base_url=url, timeout=60) as http:
            while True:
                with lock:
                    text = next(work, None)
                if text is None:
                    return
                started = time.perf_counter()
                try:
                    response = http.get("/api/search", params={"q": text, "k": k})
                    ok = response.status_code == 200 and len(response.json()["results"]) == k
                    problem = None if ok else f"HTTP {response.status_code}: {response.text[:200]}"
                    timing = dict(part.strip().split(";dur=") for part in response.headers.get("server-timing", "").split(",")
                                  if ";dur=" in part)
                except httpx.HTTPError as error:
                    problem = f"{type(error).__name__}: {error}"
                elapsed = time.perf_counter() - started
                with lock:
                    (errors.append(problem) if problem else latencies.append(elapsed))
                    for name in server_ms:
                        if name in timing:
                            server_ms[name].append(float(timing[name]))

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000
    return {
        "clients": clients, "queries": len(texts), "k": k, "errors": len(errors), "first_errors": errors[:3],
        "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
        "p90_ms": round(float(np.percentile(ms, 90)), 2) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
        "max_ms": round(float(ms.max()), 2) if len(ms) else None,
        "mean_ms": round(float(statistics.fmean(ms)), 2) if len(ms) else None,
        "queries_per_s": round(len(texts) / wall, 1), "wall_s": round(wall, 2),
        **{f"server_{name}_p50_ms": round(float(np.median(values)), 2) for name, values in server_ms.items() if values},
    }


def save_tiny_model(path):
    """The tests' tiny random-init model (tests/helpers.py), saved for the server process to load."""
    sys.path.insert(0, str(ROOT / "tests"))
    import keras
    from helpers import tiny_model

    keras.utils.set_random_seed(0)
    tiny_model().save(path)
    return str(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--model", default="runs/demo-page/model.keras")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--k", type=int, default=24)
    parser.add_argument("--backend", default="auto", choices=["auto", "exact", "ann"])
    parser.add_argument("--compute-threads", type=int, default=1,
                        help="the server's --compute-threads (0: the libraries' own thread defaults)")
    parser.add_argument("--note", default="", help="free text recorded with the results")
    parser.add_argument("--out", help="append the JSON lines to this file too")
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny random model, 2,000 rows, a few queries: a check, not a measurement")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rows, args.queries, args.clients = 2000, 6, 2

    import kclip
    from kclip.serve.server import free_port

    with tempfile.TemporaryDirectory(prefix="kclip-serve-load-") as folder:
        if args.smoke and not os.path.isfile(args.model):
            args.model = save_tiny_model(Path(folder) / "tiny.keras")
        model = kclip.load_model(args.model)
        index_dir = Path(folder) / "index"
        write_random_index(model, args.rows, index_dir)
        params = int(model.count_params())
        del model  # the server process loads its own copy
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        server = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "serve.py"), "--model", args.model, "--index", str(index_dir),
             "--port", str(port), "--backend", args.backend,
             "--compute-threads", str(args.compute_threads), "--log-level", "warning"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 300
            while True:
                try:
                    info = httpx.get(url + "/api/index", timeout=5).json()
                    break
                except httpx.TransportError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"the server did not start: {server.communicate()[0][-2000:]}")
                    time.sleep(0.5)
            # The server may still be busy starting up after its first answer: wait until it idles.
            for _ in range(3 if args.smoke else 120):
                before = cpu_seconds(server.pid)
                time.sleep(1.0)
                if cpu_seconds(server.pid) - before < 0.1:
                    break
            # Warm-up, sequential and concurrent phases get different texts: the server keeps recent
            # texts' embeddings, and a text seen before would be answered without the model.
            sequential_count = min(50, args.queries // 2 if args.smoke else args.queries)
            texts = queries(20 + sequential_count + args.queries)
            warmup, texts = texts[:20], texts[20:]
            run_clients(url, warmup, 1, args.k)  # warm-up: first calls build the model's graphs
            base = {"benchmark": "serve_load", "smoke": args.smoke, "rows": args.rows, "index_backend": info["backend"],
                    "index_dtype": "float16", "model": args.model, "vectors": "random unit",
                    "transport": "HTTP/1.1 keep-alive, loopback, uvicorn in its own process",
                    **cpu_info(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "default"),
                    "server_compute_threads": args.compute_threads or "library default", "note": args.note}
            base["model_params"] = params
            lines = []
            floor = [time.perf_counter()]
            with httpx.Client(base_url=url, timeout=60) as http:
                for _ in range(50):
                    started = time.perf_counter()
                    http.get("/api/index").raise_for_status()
                    floor.append(time.perf_counter() - started)
            base["http_floor_p50_ms"] = round(float(np.median(floor[1:])) * 1000, 2)  # GET /api/index, no model
            phases = ((1, texts[:sequential_count]), (args.clients, texts[sequential_count:]))
            for clients, phase_texts in phases:
                count = len(phase_texts)
                load_before = os.getloadavg()
                cpu_before = cpu_seconds(), cpu_seconds(server.pid)
                result = run_clients(url, phase_texts, clients, args.k)
                result["distinct_texts"] = len(set(phase_texts))
                # Clients and server share the CPU: what each spends per query says where the time goes.
                result["client_cpu_ms_per_query"] = round((cpu_seconds() - cpu_before[0]) / count * 1000, 2)
                result["server_cpu_ms_per_query"] = round((cpu_seconds(server.pid) - cpu_before[1]) / count * 1000, 2)
                lines.append({**base, "phase": "sequential" if clients == 1 else "concurrent", **result,
                              "load_average_before": [round(x, 2) for x in load_before],
                              "load_average_after": [round(x, 2) for x in os.getloadavg()],
                              "date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())})
        finally:
            server.terminate()
            server.communicate(timeout=30)
    for line in lines:
        text = json.dumps(line)
        print(text)
        if args.out:
            with open(args.out, "a") as handle:
                handle.write(text + "\n")


if __name__ == "__main__":
    main()
