"""Fixture builders shared by the tests and the benchmarks: test scaffolding, kept out of the library.

    builders.work      toy data → segments → index → bake, one library call per stage
    builders.runs      minimal-width presets, random G snapshots, the inference tests' tiny runs
    builders.formats   hand-drawn datasets in the official on-disk formats (readers, stage 1)
    builders.store     segment stores fabricated from arrays (retrieval tests and benchmark)

They use only the library's public functions, as a user's script would.

How they are imported: pytest puts `tests/` on the import path (`pythonpath = ["tests"]` under
`[tool.pytest.ini_options]` in pyproject.toml), so a test writes `from builders.work import
toy_work`; work dirs that several test modules read come from the session fixtures in
tests/conftest.py. The benchmarks are scripts run as `python benchmarks/NAME.py` from the
repository root, where Python puts only `benchmarks/` on the path: each script inserts `tests/`
itself, in the one line above its `from builders… import`. Nothing here is installed with `resail`.
"""
