"""Past one machine (issue 14), measured side by side in one run.

    make bench                       # or: .venv/bin/python bench/scale.py [--sizes 1000000] [--json]

So far: PDQ search within Meta's distance (31 bits) over 100,000 and 1,000,000 hashes, one
thread, as the replica does it --

- through the replica's multi-index hash table (worker.pdq.HashIndex), after its build,
  and with a sixteenth of the hashes written since the build (checked one by one, the most
  it carries before rebuilding);
- by an exhaustive scan of the same hashes (what the replica did before);
- through faiss' IndexBinaryMultiHash (16 tables of 16 bits, one-bit flips), the library
  reference -- it has no deletes or replacements, which the replica needs.

Hashes are clustered like a collection of near-duplicates: 1,000 centres, each hash a few
to 48 bits away from one; queries are near-copies of stored hashes. Every figure is a
median (p99 beside it) over --queries queries; each index's answers are checked against
the scan's. A ``goals`` object says which goals hold.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from worker.pdq import HashIndex, PdqHash  # noqa: E402

RADIUS = 31  # Meta's suggested PDQ match distance, the collections' default
PDQ_GOAL_MS = 3.0  # issue 14: radius-31 search p50 at 1,000,000 hashes, one thread


def clustered_hashes(count: int, rng, centres: int = 1000) -> np.ndarray:
    """``count`` 256-bit hashes as (count, 32) bytes, each 0-48 random bits away from one of ``centres``."""
    origins = rng.integers(0, 256, (centres, 32), dtype=np.uint8)
    bits = np.unpackbits(origins[rng.integers(0, centres, count)], axis=1)
    flips = rng.integers(0, 49, count)
    for row in range(count):
        bits[row, rng.choice(256, flips[row], replace=False)] ^= 1
    return np.packbits(bits, axis=1)


def near_copies(hashes: np.ndarray, count: int, rng) -> np.ndarray:
    """Queries: stored hashes with 0-24 bits flipped (re-encodes, resizes)."""
    bits = np.unpackbits(hashes[rng.integers(0, len(hashes), count)], axis=1)
    for row in range(count):
        bits[row, rng.choice(256, int(rng.integers(0, 25)), replace=False)] ^= 1
    return np.packbits(bits, axis=1)


def timed_ms(search, queries: np.ndarray) -> tuple[dict, list]:
    timings, answers = [], []
    for query in queries:
        started = time.perf_counter()
        answers.append(search(query))
        timings.append(time.perf_counter() - started)
    return {"p50_ms": round(1000 * statistics.median(timings), 3),
            "p99_ms": round(1000 * float(np.percentile(timings, 99)), 3)}, answers


def measure_pdq(size: int, queries_count: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    hashes = clustered_hashes(size, rng)
    queries = near_copies(hashes, queries_count, rng)
    words = hashes.view(np.uint64)

    def scan(query: np.ndarray) -> list[tuple[int, int]]:
        distances = np.bitwise_count(words ^ query.view(np.uint64)).sum(axis=1)
        rows = np.flatnonzero(distances <= RADIUS)
        return sorted((int(distances[row]), int(row)) for row in rows)

    scan_figures, truth = timed_ms(scan, queries)

    index = HashIndex(min_quality=0)
    started = time.perf_counter()
    for row, stored in enumerate(hashes):
        index.put(str(row), PdqHash(stored.tobytes(), 100))
    filled = time.perf_counter() - started
    started = time.perf_counter()
    index.build()
    built = time.perf_counter() - started

    def indexed(query: np.ndarray) -> list[tuple[int, int]]:
        return sorted((distance, int(image_id)) for image_id, distance in index.within(query.tobytes(), RADIUS))

    index_figures, answers = timed_ms(indexed, queries)
    assert answers == truth, "the index answered differently from the scan"
    rewritten = rng.choice(size, size // 16, replace=False)  # as many fresh hashes as it carries before a rebuild
    for row in rewritten:
        index.put(str(row), PdqHash(hashes[row].tobytes(), 100))  # same bits, now checked one by one
    fresh_figures, answers = timed_ms(indexed, queries)
    assert answers == truth

    import faiss  # the reference (a dev dependency)

    faiss.omp_set_num_threads(1)
    multi_hash = faiss.IndexBinaryMultiHash(256, 16, 16)
    multi_hash.nflip = 1
    multi_hash.add(hashes)

    def with_faiss(query: np.ndarray) -> list[tuple[int, int]]:
        limits, distances, rows = multi_hash.range_search(query[None], RADIUS + 1)  # faiss: distance < radius
        return sorted(zip(distances.tolist(), rows.tolist()))

    faiss_figures, answers = timed_ms(with_faiss, queries)
    return {
        "hashes": size,
        "matches_per_query": round(statistics.mean(len(found) for found in truth), 1),
        "scan": scan_figures,
        "index": index_figures | {"fill_s": round(filled, 2), "build_s": round(built, 2),
                                  "same_answers_as_scan": True},
        "index_with_fresh_hashes": fresh_figures,
        "faiss_multi_hash": faiss_figures | {"same_answers_as_scan": answers == truth},
        "scan_over_index_p50": round(scan_figures["p50_ms"] / index_figures["p50_ms"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Lookalike scale-out benchmark")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    results = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
                          f"{round(psutil.virtual_memory().total / 2**30)} GiB", "pdq": []}
    for size in args.sizes:
        results["pdq"].append(measure_pdq(size, args.queries, args.seed))
        if not args.json:
            print(json.dumps(results["pdq"][-1]), flush=True)
    largest = results["pdq"][-1]
    results["goals"] = {
        f"PDQ radius-31 p50 <= {PDQ_GOAL_MS:g} ms at {largest['hashes']} hashes, one thread":
            largest["index"]["p50_ms"] <= PDQ_GOAL_MS and largest["index_with_fresh_hashes"]["p50_ms"] <= PDQ_GOAL_MS,
        "PDQ index answers exactly as the scan": all(entry["index"]["same_answers_as_scan"] for entry in results["pdq"]),
    }
    print(json.dumps(results, indent=2) if args.json else json.dumps(results["goals"], indent=2))


if __name__ == "__main__":
    main()
