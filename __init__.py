"""resail: Retrieval-based Spatially Adaptive Normalization for semantic image synthesis.

The repository root is this package (see pyproject.toml): `resail.pipeline.labels` holds the label
vocabulary (class tables, id spaces, label channels, label-map files), `resail.pipeline` the dataset
readers and offline stages, `resail.index` the shape retrieval, `resail.synth` the networks,
trainer and evaluation, and `resail.cli` the command line.
"""

__version__ = "0.1.0"
