"""im2col and col2im on NumPy arrays, with shortcuts the plain versions cannot take.

Same results as ``extract_windows`` and ``scatter_windows`` in ``scratchcnn/ops/windows.py``
(``tests/test_fast_paths.py`` checks it), for NumPy arrays only.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from scratchcnn.ops import windows


def extract_windows(x_padded, window, strides, out_hw):
    """im2col as one copy of a strided view of every window.

    x_padded: (N, Hp, Wp, C) -> windows: (N, Ho, Wo, kh*kw, C). In the view, one window
    row (kw pixels x C channels) is kw*C adjacent values, so the copy moves long
    contiguous runs: about twice as fast as stacking the kh*kw taps when kw*C >= 16,
    slower for shorter rows (one-channel images), which keep the plain version.
    """
    if window[1] * x_padded.shape[3] < 16:
        return windows.extract_windows(x_padded, window, strides, out_hw)
    (kh, kw), (sh, sw), (ho, wo) = window, strides, out_hw
    n, c = x_padded.shape[0], x_padded.shape[3]
    view = sliding_window_view(x_padded, window, axis=(1, 2))  # (N, H', W', C, kh, kw)
    view = view[:, : sh * (ho - 1) + 1 : sh, : sw * (wo - 1) + 1 : sw]
    return view.transpose(0, 1, 2, 4, 5, 3).reshape(n, ho, wo, kh * kw, c)


def scatter_windows(dwindows, padded_hw, window, strides):
    """col2im by adding each window offset's values into one buffer, in place.

    dwindows: (N, Ho, Wo, kh*kw, C) -> (N, Hp, Wp, C).
    """
    (kh, kw), (sh, sw), (hp, wp) = window, strides, padded_hw
    n, ho, wo, _, c = dwindows.shape
    if (sh, sw) == (kh, kw) and (hp, wp) == (ho * kh, wo * kw):
        # The windows tile the image without overlap (2x2 pooling): nothing adds up,
        # scattering is only a reordering of the values.
        tiles = dwindows.reshape(n, ho, wo, kh, kw, c).transpose(0, 1, 3, 2, 4, 5)
        return tiles.reshape(n, hp, wp, c)
    out = np.zeros((n, hp, wp, c), dtype=dwindows.dtype)
    for k, tap in enumerate(windows.window_taps(out, window, strides, (ho, wo))):
        tap += dwindows[:, :, :, k, :]  # a strided view of out: adds in place
    return out
