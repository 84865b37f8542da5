"""Nearest neighbours of many embeddings among many, with FAISS instead of all pairs.

Up to ``EXACT_UP_TO`` references the search is exact (``IndexFlatL2``, one matrix product per
block of queries). Above it an inverted-file index (``IndexIVFFlat``) clusters the references
into about ``4 sqrt(n)`` cells (k-means on a sample of 64 references a cell) and searches only the ``nprobe`` cells nearest each query: the
work grows as n^1.5 instead of n^2 and memory stays one copy of the vectors. A neighbour in a
cell that was not probed is missed, which for grouping means a link not proposed; close pairs
(the ones that matter) share a cell or a neighbouring one. Results are deterministic: FAISS's
k-means has a fixed seed and the input order is the caller's.
"""
from __future__ import annotations

import faiss
import numpy as np

EXACT_UP_TO = 20_000
NPROBE = 16


def knn(references: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(distances, rows): each query's ``k`` nearest references, Euclidean, nearest first; rows
    are -1 (distance inf) where fewer than ``k`` were found."""
    references = np.ascontiguousarray(references, np.float32)
    queries = np.ascontiguousarray(queries, np.float32)
    k = min(k, len(references))
    if k == 0 or len(queries) == 0:
        return np.full((len(queries), k), np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
    dim = references.shape[1]
    if len(references) <= EXACT_UP_TO:
        index = faiss.IndexFlatL2(dim)
    else:
        cells = int(min(4 * np.sqrt(len(references)), len(references) / 40))  # FAISS wants 39 a cell
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, cells)
        index.cp.niter, index.cp.max_points_per_centroid = 10, 64
        index.train(references)
        index.nprobe = NPROBE
    index.add(references)
    squared, rows = index.search(queries, k)
    distances = np.sqrt(np.clip(squared, 0.0, None))
    distances[rows < 0] = np.inf
    return distances, rows
