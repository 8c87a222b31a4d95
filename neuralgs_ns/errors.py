"""User-facing failures: caught at the CLI boundary and printed as one line, no traceback."""


class NeuralGSError(Exception):
    """Base class for errors caused by the user's input (files, flags, data), not by a bug."""


class InputFileError(NeuralGSError):
    """A file the user named is missing, unreadable or not what it claims to be."""

    def __init__(self, path, problem: str):
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")
