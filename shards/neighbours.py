"""Nearest neighbours of many embeddings among many, with FAISS instead of all pairs.

Up to ``EXACT_UP_TO`` references the search is exact (``IndexFlatL2``, one matrix product per
block of queries). Above it a graph index (``IndexHNSWFlat``, ``LINKS`` links a node): each
query walks the graph from an entry point towards nearer nodes, so the work grows about as
n log n instead of n^2, and memory is one copy of the vectors plus the links. A neighbour the
walk does not reach is missed, which for grouping means a link not proposed.

Why a graph and not an inverted file (k-means cells, a few probed): face embeddings of one
person in a large set are close only relative to strangers (ArcFace: a person's videos about
1.2 apart on the unit sphere where strangers are 1.4 apart), not inside one tight cell, and on
the calibrated worlds of ``bench/identity_world.py`` the inverted file (4 sqrt(n) cells, 16
probed) missed about a fifth of the pairs under the grouping threshold; the graph missed about
1%. The graph is built on one thread: with several, the order in which nodes are linked, and so
the neighbours found, would change from run to run. Searches then use every thread.
"""
from __future__ import annotations

import faiss
import numpy as np

EXACT_UP_TO = 120_000
LINKS = 32           # HNSW's M: links a node keeps (more: better recall, more memory and time)
BUILD_DEPTH = 64     # HNSW's efConstruction: candidates kept while linking a node
SEARCH_DEPTH = 256   # HNSW's efSearch: candidates kept while searching (at least k); fewer
                     # miss neighbours, and a missed one can leave a video with a stranger


def _graph_index(references: np.ndarray, k: int) -> faiss.Index:
    index = faiss.IndexHNSWFlat(references.shape[1], LINKS)
    index.hnsw.efConstruction = BUILD_DEPTH
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # the same graph on every run
    try:
        index.add(references)
    finally:
        faiss.omp_set_num_threads(threads)
    index.hnsw.efSearch = max(SEARCH_DEPTH, k)
    return index


def knn(references: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(distances, rows): each query's ``k`` nearest references, Euclidean, nearest first; rows
    are -1 (distance inf) where fewer than ``k`` were found."""
    references = np.ascontiguousarray(references, np.float32)
    queries = np.ascontiguousarray(queries, np.float32)
    k = min(k, len(references))
    if k == 0 or len(queries) == 0:
        return np.full((len(queries), k), np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
    if len(references) <= EXACT_UP_TO:
        index = faiss.IndexFlatL2(references.shape[1])
        index.add(references)
    else:
        index = _graph_index(references, k)
    squared, rows = index.search(queries, k)
    distances = np.sqrt(np.clip(squared, 0.0, None))
    distances[rows < 0] = np.inf
    return distances, rows
