"""The project's exceptions: every bad input a user can give raises one of these.

Each message is one sentence that names the input (a file, a flag, a shape) and what is
wrong with it, so the command line can print it as is and exit with a non-zero status.
"""


class ScratchCNNError(Exception):
    """Base class of every error scratchcnn raises on purpose."""


class DataError(ScratchCNNError, ValueError):
    """A data file is missing, corrupt, truncated, or not what it claims to be."""


class WriteError(ScratchCNNError, OSError):
    """A file cannot be written: no space, no permission, a missing folder."""


class ChecksumError(DataError):
    """A data file's SHA-256 digest does not match the published one."""


class ShapeError(ScratchCNNError, ValueError):
    """An array or a layer configuration has a shape the operation cannot accept."""


class InputError(ScratchCNNError, ValueError):
    """A value has the right shape but not an accepted value: its type, dtype or range."""


class WeightError(ScratchCNNError, ValueError):
    """A network's weights cannot be used: NaN or inf, or a BatchNorm variance below 0."""
