"""Shape retrieval: mask descriptors, FAISS shards per class, numba exact scoring, batched search."""
