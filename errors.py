"""Typed errors. The CLI turns each into one line and a non-zero exit; `--debug` shows the traceback."""


class ResailError(Exception):
    """A failure the user can act on. The message names the file or value and what to do."""

    exit_code = 1


class InputError(ResailError):
    """Bad or missing input data (a dataset file, a label map, a work directory)."""


class ConfigError(InputError):
    """A parameter value the library refuses: out of its range, not one of its choices, or at odds
    with another parameter. `name` is the parameter as the library calls it (a config field, e.g.
    `k_prefilter`) and the message speaks in those terms; the CLI, which knows which flag set it,
    shows the error against that flag (`cli.common`)."""

    def __init__(self, name: str, message: str):
        super().__init__(message)
        self.name = name

    def __reduce__(self):  # raised in a stage's worker process, it crosses back pickled
        return type(self), (self.name, str(self))


class StageError(ResailError):
    """A stage cannot run: a previous stage is missing, stale, or built with other parameters."""


class BusyError(StageError):
    """Another process is writing the same stage or run (its advisory lock is held)."""


class DiskFullError(StageError):
    """The disk filled up while writing an artifact; nothing was replaced."""
