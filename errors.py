"""Typed errors. The CLI turns each into one line and a non-zero exit; `--debug` shows the traceback."""


class ResailError(Exception):
    """A failure the user can act on. The message names the file or value and what to do."""

    exit_code = 1


class InputError(ResailError):
    """Bad or missing input data (a dataset file, a label map, a work directory)."""


class StageError(ResailError):
    """A stage cannot run: a previous stage is missing, stale, or built with other parameters."""


class BusyError(StageError):
    """Another process is writing the same stage or run (its advisory lock is held)."""


class DiskFullError(StageError):
    """The disk filled up while writing an artifact; nothing was replaced."""
