"""Data: the IDX file format and the MNIST database (found, verified, loaded)."""

from scratchcnn.data.idx import (
    IdxHeader,
    decode_idx,
    encode_idx_header,
    parse_idx_header,
    read_idx,
    write_idx,
)
from scratchcnn.data.mnist import (
    MnistFile,
    MnistLocation,
    cache_dir,
    find_mnist,
    load_mnist,
    read_split,
    summarize_mnist,
)

__all__ = [
    "IdxHeader",
    "MnistFile",
    "MnistLocation",
    "cache_dir",
    "decode_idx",
    "encode_idx_header",
    "find_mnist",
    "load_mnist",
    "parse_idx_header",
    "read_idx",
    "read_split",
    "summarize_mnist",
    "write_idx",
]
