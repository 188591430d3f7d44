"""The result tables of README.md and benchmarks/README.md, made from the raw lines in benchmarks/results/.

    python benchmarks/tables.py            # print every table
    python benchmarks/tables.py --write    # rewrite the tables between their markers in the Markdown files
    python benchmarks/tables.py --check    # exit 1 if a Markdown table differs from results/ (a test runs this)

A table sits between `<!-- table:NAME -->` and `<!-- /table:NAME -->` in a Markdown file. Each row is
the latest line (by file name, then line order) for its key, and says which file it came from.
"""

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MARKDOWN = [HERE.parent / "README.md", HERE / "README.md", HERE.parent / "docs" / "performance.md",
            *sorted(HERE.glob("RESULTS-*.md"))]


def cpu_kind(line):
    flags = set(line.get("cpu_flags") or [])
    return "bf16-native (avx512_bf16)" if {"avx512_bf16", "amx_bf16"} & flags else "AVX2-only (bf16 emulated)"


def latest(pattern, benchmark, key, where=lambda line: True):
    """{key(line): (line, file name)}, the last line per key among files matching `pattern` (and `where`)."""
    chosen = {}
    for path in sorted(RESULTS.glob(pattern)):
        for text in path.read_text().splitlines():
            if not text.startswith("{"):
                continue
            line = json.loads(text)
            if line.get("benchmark") == benchmark and not line.get("smoke") and where(line):
                chosen[key(line)] = (line, path.name)
    return chosen


def percent(value):
    return f"{100 * value:.1f}"


def demo_table():
    rows = ["| CPU kind | precision | wall (fresh clone, set-up included) | training | epochs | t2i R@1 | R@5 | R@10 "
            "| i2t R@1 | R@5 | source |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for kind, (line, name) in sorted(latest("demo-*.jsonl", "demo_run", cpu_kind).items()):
        test = line["test"]
        wall = line["wall_seconds"]
        rows.append(f"| {kind} | {line['precision']} | {int(wall // 60)} min {int(wall % 60)} s | "
                    f"{line['train_seconds']:.0f} s | {line['epochs_run']} | **{percent(test['t2i_r@1'])}** | "
                    f"{percent(test['t2i_r@5'])} | {percent(test['t2i_r@10'])} | {percent(test['i2t_r@1'])} | "
                    f"{percent(test['i2t_r@5'])} | `benchmarks/results/{name}` |")
    return "\n".join(rows)


def matmul_table():
    rows = ["| CPU kind | float32 GFLOP/s | bfloat16 GFLOP/s | oneDNN bf16 | source |", "|---|---|---|---|---|"]
    for kind, (line, name) in sorted(latest("matmul-*.jsonl", "matmul_gflops", cpu_kind).items()):
        onednn = line.get("onednn_bf16_supported", "not recorded")
        rows.append(f"| {kind} | {line['float32']} | {line['bfloat16']} | {onednn} | `benchmarks/results/{name}` |")
    return "\n".join(rows)


def search_table():
    rows = ["| measurement | rows | dim | stored as | p50 ms | p99 ms | source |", "|---|---|---|---|---|---|---|"]
    wanted = ("exact_single_query", "exact_batch64", "ann_search")
    for benchmark in wanted:
        for (_, dtype), (line, name) in sorted(latest("search-*.jsonl", benchmark,
                                                      lambda line: (line["rows"], line["stored_dtype"])).items()):
            extra = f" (recall@10 {line['recall_at_10']})" if "recall_at_10" in line else ""
            rows.append(f"| {benchmark}{extra} | {line['rows']:,} | {line['dim']} | {dtype} | {line['p50_ms']} | "
                        f"{line['p99_ms']} | `benchmarks/results/{name}` |")
    return "\n".join(rows)


def serve_table():
    rows = ["| phase | clients | index | p50 ms | p99 ms | queries/s | source |", "|---|---|---|---|---|---|---|"]
    for phase, (line, name) in sorted(latest("serve-load-*.jsonl", "serve_load", lambda line: line["phase"]).items(),
                                      reverse=True):
        rows.append(f"| {phase} | {line['clients']} | {line['rows']:,} rows, {line['index_backend']} | "
                    f"{line['p50_ms']} | {line['p99_ms']} | {line['queries_per_s']} | `benchmarks/results/{name}` |")
    return "\n".join(rows)


LEVERS = ("fused_batch_norm", "release_intermediates", "fast_conv_kernels", "fused_attention", "fold_pool_padding",
          "inplace_activations", "fused_adam")


def training_table():
    """kclip's fit step against the plain PyTorch reference: the latest line of each per CPU kind, size, precision."""
    precision = {"fp32": "float32", "bf16": "mixed_bfloat16"}
    key = lambda line: (cpu_kind(line), line["size"], precision.get(line["precision"], line["precision"]))  # noqa: E731
    # The defaults only: a line with a speed lever switched off measured that lever, not kclip.
    defaults = lambda line: "off" not in {line.get(lever) for lever in LEVERS}  # noqa: E731
    kclip_lines = latest("train-compare-*.jsonl", "kclip_fit_step", key, defaults)
    reference = latest("train-compare-*.jsonl", "torch_reference_step", key)
    rows = ["| CPU kind | size | precision | batch | kclip step s | reference step s | kclip / reference | source |",
            "|---|---|---|---|---|---|---|---|"]
    for (kind, size, dtype), (line, name) in sorted(kclip_lines.items()):
        other = reference.get((kind, size, dtype))
        ratio = f"{line['median_step_s'] / other[0]['median_step_s']:.2f}" if other else "not measured"
        rows.append(f"| {kind} | {size} | {dtype} | {line['batch_size']} | {line['median_step_s']} | "
                    f"{other[0]['median_step_s'] if other else '-'} | {ratio} | `benchmarks/results/{name}` |")
    return "\n".join(rows)


TABLES = {"training": training_table, "demo": demo_table, "matmul": matmul_table, "search": search_table, "serve": serve_table}


def render(text, tables):
    """`text` with every marked table replaced by its current rows."""
    for name, table in tables.items():
        start, end = f"<!-- table:{name} -->", f"<!-- /table:{name} -->"
        while start in text:
            head, rest = text.split(start, 1)
            if end not in rest:
                raise ValueError(f"{start} has no closing {end}")
            _, tail = rest.split(end, 1)
            text = f"{head}{start.replace('table:', 'TABLE:')}\n{table}\n{end}{tail}"
        text = text.replace(start.replace("table:", "TABLE:"), start)
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the marked tables in the Markdown files")
    mode.add_argument("--check", action="store_true", help="exit 1 if a marked table differs from results/")
    args = parser.parse_args(argv)
    tables = {name: make() for name, make in TABLES.items()}
    if not (args.write or args.check):
        for name, table in tables.items():
            print(f"{name}:\n{table}\n")
        return 0
    stale = []
    for path in MARKDOWN:
        if not path.is_file():
            continue
        text = path.read_text()
        current = render(text, tables)
        if current != text:
            stale.append(path)
            if args.write:
                path.write_text(current)
    if args.check and stale:
        print(f"tables differ from benchmarks/results/ in: {', '.join(map(str, stale))}; "
              "run python benchmarks/tables.py --write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
