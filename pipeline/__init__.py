"""Offline stages: dataset readers, segment decomposition and store, composition, distortion, bake, toy data."""
