"""Search at scale: cold loads, latency, recall and memory of Lookalike's replicas, in one run.

    make bench                       # runs this after bench/throughput.py
    .venv/bin/python bench/search.py --sizes 10000 100000 1000000 [--json]

For each size, clustered synthetic 512-d unit vectors are written to a fresh embedded
Redis the way the service writes them (Store.save_images), then, each in a fresh process
so its memory is its own:

- exact replica (one contiguous matrix): cold load from Redis, query latency p50/p99
  (refresh round trip included, as a worker does per query, and of the index alone),
  resident bytes per vector;
- exact replica, then whitened: reading a sample and learning a whitening from it, the
  replica's reload in the background when the whitening is stored, query latency while
  it runs (the old replica answers) and in the whitened space after;
- HNSW replica (hnswlib): cold load from Redis (queryable once the exact replica is in,
  index ready once the graph built in the background is), restart from its snapshot,
  latency p50/p99, recall@10 against exact search at several ef, bytes per vector.

In the same run: faiss IndexFlatIP as the reference for exact search speed, and at
10,000 vectors a pure-Python loop over the vectors (the original write-up's approach:
NumPy Euclidean distance per stored vector, then a sort) as the floor. All searches run
on one thread, as the worker runs them (its BLAS is limited to one thread).
"""

import argparse
import ctypes
import dataclasses
import gc
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shared import keys  # noqa: E402
from shared.embedded_redis import EmbeddedRedis, free_port  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.store import Descriptor, Store  # noqa: E402

DIMENSION = 512
DESCRIPTOR = Descriptor("bench-model", DIMENSION, "bench-weights")
COLLECTION = "bench"
WRITE_CHUNK = 2_000
EF_SWEEP = (32, 64, 128, 256, 512)


def clustered_vectors(count: int, seed: int, clusters: int = 1000) -> np.ndarray:
    """Unit vectors around ``clusters`` random centres: closer to real image features than uniform noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, DIMENSION)).astype(np.float32)
    vectors = np.empty((count, DIMENSION), dtype=np.float32)
    for start in range(0, count, 100_000):
        stop = min(count, start + 100_000)
        vectors[start:stop] = centres[rng.integers(clusters, size=stop - start)]
        vectors[start:stop] += 0.6 * rng.standard_normal((stop - start, DIMENSION)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def percentiles_ms(seconds: list[float]) -> dict:
    return {"p50_ms": round(1000 * float(np.percentile(seconds, 50)), 3),
            "p99_ms": round(1000 * float(np.percentile(seconds, 99)), 3)}


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


# --- One replica in a process of its own ------------------------------------------------------


def resident_bytes() -> int:
    """This process's resident memory once freed heap pages are handed back (glibc's malloc_trim)."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return psutil.Process().memory_info().rss


def replica_child(redis_url: str, kind: str, snapshot_dir: str, queries: np.ndarray, truth: list[list[str]],
                  k: int, ef_search: int, results: multiprocessing.Queue) -> None:
    from threadpoolctl import threadpool_limits

    from shared.settings import Settings
    from worker.replica import HnswConfig, Replicas

    threadpool_limits(limits=1, user_api="blas")
    store = Store.from_settings(Settings(redis_url=redis_url))
    config = HnswConfig(ef_search=ef_search)
    exact_max = 10**12 if kind == "exact" else 0
    # (The bench times the load itself: a query waits for it however long it takes.)
    replicas = Replicas(store, DIMENSION, exact_max=exact_max, hnsw=config, snapshot_dir=Path(snapshot_dir),
                        load_wait_seconds=3600)
    replicas.search("warm-up", queries[0], k)  # imports and first-call costs, not the collection's
    rss_before = resident_bytes()
    started = time.perf_counter()
    replicas.search(COLLECTION, queries[0], k)  # answers as soon as the exact replica is loaded
    queryable_seconds = time.perf_counter() - started
    replicas.wait_for_builds()  # HNSW only: the graph is built in the background meanwhile
    ready_seconds = time.perf_counter() - started
    rss_after = resident_bytes()
    index = replicas._replicas[COLLECTION].index
    latencies, search_latencies, found = [], [], []
    for query in queries:
        started = time.perf_counter()
        result = replicas.search(COLLECTION, query, k)  # what a worker does: refresh, then search
        latencies.append(time.perf_counter() - started)
        search_latencies.append(timed(lambda query=query: index.search(query, k)))  # the index alone
        found.append([image_id for image_id, _ in result.matches])
    recall = float(np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth)]))
    figures = {"cold_load_s": round(queryable_seconds, 2), "index_ready_s": round(ready_seconds, 2),
               "bytes_per_vector": round((rss_after - rss_before) / len(index)),
               "recall_at_10": round(recall, 4), **percentiles_ms(latencies),
               "index_only": percentiles_ms(search_latencies)}
    if kind == "hnsw":  # recall against latency for other ef_search values, on the same graph
        figures["ef_sweep"] = {}
        for ef in EF_SWEEP:
            index.config = dataclasses.replace(index.config, ef_search=ef)
            timings, found = [], []
            for query in queries:
                started = time.perf_counter()
                ids, _ = index.search(query, k)
                timings.append(time.perf_counter() - started)
                found.append(ids)
            sweep_recall = float(np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth)]))
            figures["ef_sweep"][ef] = {"recall_at_10": round(sweep_recall, 4), **percentiles_ms(timings)}
    if kind == "exact":
        figures["whitening"] = measure_whitening(store, replicas, queries, k)
    if kind == "hnsw":  # a restarted worker: newest snapshot, then catch up from the stream
        restarted = Replicas(store, DIMENSION, exact_max=exact_max, hnsw=config, snapshot_dir=Path(snapshot_dir),
                             load_wait_seconds=3600)
        figures["restart_from_snapshot_s"] = round(timed(lambda: restarted.search(COLLECTION, queries[0], k)), 2)
    results.put(figures)


def measure_whitening(store: Store, replicas, queries: np.ndarray, k: int) -> dict:
    """What a collection's whitening costs, done as the worker's whitening task does it; turned off again after."""
    from shared.collection_settings import DEFAULT_COLLECTION_SETTINGS
    from shared.store import StoredWhitening, utc_now
    from worker.descriptors import Whitening

    settings = Settings()
    store.put_collection_settings(COLLECTION, DEFAULT_COLLECTION_SETTINGS | {"whitening": True})
    started = time.perf_counter()
    sample = store.sample_vectors(COLLECTION, settings.whitening_sample_images, DIMENSION)
    read_seconds = time.perf_counter() - started
    learn_seconds = timed(lambda: Whitening.learn(sample))
    whitening = Whitening.learn(sample)
    size = store.count_vectors(COLLECTION)
    store.save_whitening(COLLECTION, StoredWhitening(whitening.mean, whitening.projection, len(sample), size,
                                                     utc_now()), DESCRIPTOR.model)
    # The next search sees the "whiten" event and starts loading the replica in the new whitening in
    # the background; queries go on, answered by the old one, until it is swapped in.
    started = time.perf_counter()
    during = [timed(lambda: replicas.search(COLLECTION, queries[0], k))]
    while replicas._background:
        during.append(timed(lambda: replicas.search(COLLECTION, queries[len(during) % len(queries)], k)))
    replicas.wait_for_builds()
    reload_seconds = time.perf_counter() - started
    assert replicas.search(COLLECTION, queries[0], k).whitening is not None
    latencies = [timed(lambda query=query: replicas.search(COLLECTION, query, k)) for query in queries]
    store.put_collection_settings(COLLECTION, DEFAULT_COLLECTION_SETTINGS)  # forgotten: the next child sees it plain
    return {"sample": len(sample), "sample_read_s": round(read_seconds, 2), "learn_s": round(learn_seconds, 2),
            "replica_reload_s": round(reload_seconds, 2), "dimensions": whitening.dimension,
            "during_reload": {"queries": len(during), **percentiles_ms(during)}, **percentiles_ms(latencies)}


def measure_replica(redis_url: str, kind: str, snapshot_dir: Path, queries, truth, k: int, ef_search: int) -> dict:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    child = context.Process(target=replica_child,
                            args=(redis_url, kind, str(snapshot_dir), queries, truth, k, ef_search, results))
    child.start()
    figures = results.get()
    child.join()
    return figures


# --- References ---------------------------------------------------------------------------------


def faiss_flat(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[dict, list[list[int]]]:
    import faiss

    faiss.omp_set_num_threads(1)
    index = faiss.IndexFlatIP(DIMENSION)
    index.add(vectors)
    latencies, rows = [], []
    for query in queries:
        started = time.perf_counter()
        _, found = index.search(query[None], k)
        latencies.append(time.perf_counter() - started)
        rows.append(found[0].tolist())
    return percentiles_ms(latencies), rows


def python_loop(vectors: np.ndarray, queries: np.ndarray, k: int) -> dict:
    stored = [(f"v/{n}", vector) for n, vector in enumerate(vectors)]
    latencies = []
    for query in queries[:20]:
        started = time.perf_counter()
        distances = [(float(np.linalg.norm(vector - query)), image_id) for image_id, vector in stored]
        sorted(distances)[:k]
        latencies.append(time.perf_counter() - started)
    return percentiles_ms(latencies)


# --- One size -------------------------------------------------------------------------------------


def measure_size(size: int, args, folder: Path) -> dict:
    vectors = clustered_vectors(size, seed=size)
    rng = np.random.default_rng(1)
    picked = vectors[rng.integers(size, size=args.queries)]
    queries = picked + 0.3 * clustered_vectors(args.queries, seed=7) / np.sqrt(DIMENSION) * 10
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)

    with EmbeddedRedis(folder / f"redis-{size}", free_port()) as redis_server:
        store = Store.from_settings(Settings(redis_url=redis_server.url))
        used_before = store.redis.info("memory")["used_memory"]
        write_seconds = 0.0
        for start in range(0, size, WRITE_CHUNK):
            chunk = [(f"v/{n}", vectors[n], {}, None, None) for n in range(start, min(size, start + WRITE_CHUNK))]
            write_seconds += timed(lambda chunk=chunk: store.save_images(COLLECTION, chunk, DESCRIPTOR))
        used_after = store.redis.info("memory")["used_memory"]
        vectors_hash = store.redis.memory_usage(keys.collection_vectors(COLLECTION), samples=0)
        images_hash = store.redis.memory_usage(keys.collection_images(COLLECTION), samples=0)

        reference, faiss_rows = faiss_flat(vectors, queries, args.k)
        truth = [[f"v/{row}" for row in rows] for rows in faiss_rows]
        exact = measure_replica(redis_server.url, "exact", folder / f"snap-exact-{size}", queries, truth, args.k,
                                args.ef_search)
        hnsw = measure_replica(redis_server.url, "hnsw", folder / f"snap-hnsw-{size}", queries, truth, args.k,
                               args.ef_search)

    figures = {
        "vectors": size,
        "redis_write_vectors_per_s": round(size / write_seconds),
        "redis_bytes_per_image": round((used_after - used_before) / size),
        "redis_bytes_per_image_vector_hash": round(vectors_hash / size),
        "redis_bytes_per_image_metadata_hash": round(images_hash / size),
        "faiss_flat": reference,
        "exact": exact,
        "hnsw": hnsw,
        "exact_over_faiss_p50": round(exact["index_only"]["p50_ms"] / reference["p50_ms"], 2),
    }
    if size <= 10_000:
        figures["python_loop"] = python_loop(vectors, queries, args.k)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description="Lookalike search benchmark")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--ef-search", type=int, default=Settings().hnsw_ef_search)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    results = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
                          f"{round(psutil.virtual_memory().total / 2**30)} GiB",
               "ef_search": args.ef_search, "sizes": []}
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes:
            results["sizes"].append(measure_size(size, args, Path(folder)))
            if not args.json:
                print(json.dumps(results["sizes"][-1]), flush=True)
    largest = results["sizes"][-1]
    results["goals"] = {
        "exact <= 1.5 x faiss flat (every size)": all(s["exact_over_faiss_p50"] <= 1.5 for s in results["sizes"]),
        f"HNSW p50 <= 5 ms at {largest['vectors']}": largest["hnsw"]["p50_ms"] <= 5,
        f"HNSW recall@10 >= 0.95 at {largest['vectors']}": largest["hnsw"]["recall_at_10"] >= 0.95,
        f"cold load <= 60 s at {largest['vectors']} (queryable)": largest["hnsw"]["cold_load_s"] <= 60,
    }
    print(json.dumps(results, indent=2) if args.json else json.dumps(results["goals"], indent=2))


if __name__ == "__main__":
    main()
