"""Resident memory of the search server while N clients upload a large flat PNG at once, and after.

    PYTHONPATH=$PWD:$PWD/tests python benchmarks/upload_memory.py --out benchmarks/results/upload-memory.jsonl

Each setting runs in its own process (a process's peak RSS cannot be reset), with the fake colour
encoder, so the numbers are the upload path's (decoding, resizing) and not a model's. Prints one
JSON line per setting and appends it to --out.
"""
import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one_setting(side: int, clients: int, slots: int, rounds: int) -> dict:
    import httpx
    from PIL import Image

    from fake_encoder import FakeEncoder
    from kclip.serve import BackgroundServer, create_app
    from serve_fixtures import build_colour_index

    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 30)).save(buffer, format="PNG")
    data = buffer.getvalue()
    with tempfile.TemporaryDirectory() as folder:
        index_dir = build_colour_index(Path(folder))
        app = create_app(FakeEncoder(), index_dir, max_concurrent_decodes=slots)
        with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=300) as http:
            start_rss = rss_mb("VmRSS")
            statuses, started = [], time.perf_counter()
            for _ in range(rounds):
                with ThreadPoolExecutor(clients) as pool:
                    statuses += list(pool.map(lambda _: http.post("/api/search/image", files={
                        "image": ("big.png", data, "image/png")}).status_code, range(clients)))
            seconds = time.perf_counter() - started
            time.sleep(2)
            idle_rss = rss_mb("VmRSS")
    return {"benchmark": "upload_memory", "side": side, "megapixels": round(side * side / 1e6, 1),
            "png_bytes": len(data), "clients": clients, "rounds": rounds, "decode_slots": slots,
            "statuses": sorted(set(statuses)), "rss_before_mb": round(start_rss), "peak_rss_mb": round(rss_mb("VmHWM")),
            "idle_rss_after_mb": round(idle_rss), "seconds": round(seconds, 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=7000, help="the PNG is side x side pixels (7000: 49 MP)")
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--slots", type=int, nargs="+", default=[6, 2], help="decode slots to compare")
    parser.add_argument("--out", default="benchmarks/results/upload-memory.jsonl")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(one_setting(args.side, args.clients, args.child, args.rounds)))
        return
    flags = subprocess.run("grep -o -w 'avx512_bf16\\|amx_bf16\\|avx2' /proc/cpuinfo | sort -u", shell=True,
                           capture_output=True, text=True).stdout.split()
    for slots in args.slots:
        output = subprocess.run([sys.executable, __file__, "--child", str(slots), "--side", str(args.side),
                                 "--clients", str(args.clients), "--rounds", str(args.rounds)],
                                capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        line = {**json.loads(output), "cpu_flags": flags, "cpus": os.cpu_count(), "python": platform.python_version(),
                "load_average": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d", time.gmtime())}
        print(json.dumps(line))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as handle:
            handle.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
