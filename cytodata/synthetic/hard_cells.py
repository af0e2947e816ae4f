"""Hard-screen cell drawing: morphology differs between treatments, intensity and size do not.

One field: cells (rotated ellipses, areas from one log-normal for every treatment) own the
pixels where their normalised distance is smallest; every channel of every cell is rendered as
a spatial *pattern* of its state (radial fibres, puncta, bundles, cables, rings, organelle
clusters, nuclear lobes, fragments, metaphase bars) and then rank-mapped, inside the cell, onto
one reference intensity distribution per channel. So a cell's pixel histogram is the same
whatever its state: only where the bright pixels are changes (patterns are dimmed towards the
membrane before ranking: a soft edge). Then the plate's focus blur, background with a
gradient, the plate's vignette, gain and offset, and shot noise.
"""

from __future__ import annotations

import numpy as np

from .acquisition import Plate
from .cells import shot_noise, smooth_noise
from .morphology import AXES

#: cells per 128 x 128 px field and their geometric-mean semi-axis (px): the same for every
#: treatment (cell size and density are not phenotypes of the hard screen)
HARD_COUNT = 12.0
HARD_RADIUS = 11.0
HARD_ELONGATION = 1.6
NUCLEUS_RATIO = 0.45
#: width of the soft cell edge, in units of the normalised distance (state-independent)
EDGE = 0.15

#: per-channel role of the hard renderer by channel count (3: DAPI/Tubulin/Actin; 6: RxRx1
#: w1..w6 Hoechst, ConA (ER, here the microtubule-like network), phalloidin, SYTO14 (nucleoli),
#: MitoTracker (organelles), WGA (membrane))
HARD_ROLES: dict[int, tuple[str, ...]] = {
    1: ("nucleus",),
    3: ("nucleus", "microtubules", "actin"),
    6: ("nucleus", "microtubules", "actin", "nucleoli", "organelles", "membrane"),
}


def hard_roles(n_channels: int) -> tuple[str, ...]:
    """Channel roles for ``n_channels`` (nucleus first; others cycle through the cytoplasm ones)."""
    if n_channels in HARD_ROLES:
        return HARD_ROLES[n_channels]
    cycle = ("microtubules", "actin", "organelles", "membrane", "nucleoli")
    return ("nucleus",) + tuple(cycle[i % len(cycle)] for i in range(n_channels - 1))


def reference_quantile(role: str, q: np.ndarray) -> np.ndarray:
    """The one intensity distribution of a channel inside a cell: value at quantile ``q`` (0-1).

    Nuclear stains are flat-topped (0.55-1), cytoplasmic ones skewed (few bright pixels).
    """
    if role in ("nucleus", "nucleoli"):
        return 0.55 + 0.45 * q
    return 0.15 + 0.85 * q**2.2


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Blur the last two axes of ``image`` with a Gaussian of ``sigma`` px (FFT, periodic)."""
    if sigma <= 0:
        return image
    h, w = image.shape[-2:]
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    kernel = np.exp(-2 * (np.pi * sigma) ** 2 * (fy**2 + fx**2)).astype(np.float32)
    return np.fft.irfft2(np.fft.rfft2(image) * kernel, s=(h, w)).astype(np.float32)


def _rank_map(values: np.ndarray, role: str) -> np.ndarray:
    """Replace ``values`` (1-D) by the reference distribution at their ranks."""
    n = len(values)
    if n == 0:
        return values
    ranks = np.empty(n)
    ranks[np.argsort(values, kind="stable")] = (np.arange(n) + 0.5) / n
    return reference_quantile(role, ranks)


def _geometry(rng: np.random.Generator, shape: tuple[int, int], n_cells: int,
              latents: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-cell centre, size, shape and orientation draws (independent of the treatment)."""
    height, width = shape
    n = n_cells
    condensed = latents["nucleus"] == AXES["nucleus"].index("condensed")
    elong = HARD_ELONGATION * np.exp(rng.normal(0, 0.15, n))
    # mitotic arrest rounds the cell up (same area: radius is the geometric-mean semi-axis)
    elong = np.where(condensed, elong ** (1 - latents["strength"]), elong)
    return {
        "cy": rng.uniform(0, height, n), "cx": rng.uniform(0, width, n),
        "radius": HARD_RADIUS * np.exp(rng.normal(0, 0.12, n)),
        "elong": np.maximum(elong, 1.0), "theta": rng.uniform(0, np.pi, n),
        "bright": np.exp(rng.normal(0, 0.12, n)),
        "nuc_du": rng.normal(0, 0.08, n), "nuc_dv": rng.normal(0, 0.08, n),
        "psi": rng.uniform(0, 2 * np.pi, n), "alpha": rng.uniform(0, np.pi, n),
        "lobes": rng.integers(3, 5, n), "spot_angle": rng.uniform(0, 2 * np.pi, (n, 6)),
        "spot_rho": rng.uniform(0.3, 0.85, (n, 6)), "frag_angle": rng.uniform(0, 2 * np.pi, (n, 4)),
    }


def _nucleus_mask(un: np.ndarray, vn: np.ndarray, rn: float, state: str, s: float, g: dict,
                  i: int) -> np.ndarray:
    """Boolean nucleus of one cell in its window; area ``pi * rn**2`` whatever the state."""
    en = 1.25 + (2.75 * s if state == "condensed" else 0.0)   # metaphase bar: same area
    an, bn = rn * np.sqrt(en), rn / np.sqrt(en)
    rho = np.sqrt((un / an) ** 2 + (vn / bn) ** 2)
    if state == "lobed":
        amp = 0.45 * s
        phi = np.arctan2(vn, un)
        return rho * np.sqrt(1 + amp**2 / 2) < 1 + amp * np.cos(g["lobes"][i] * phi + g["psi"][i])
    if state == "fragmented":
        share = 0.45 * s                        # area moved into 4 micronuclei
        mask = rho < np.sqrt(1 - share)
        rm = rn * np.sqrt(share / 4)
        for a in g["frag_angle"][i]:
            fu, fv = 1.6 * rn * np.cos(a), 1.6 * rn * np.sin(a)
            mask |= (un - fu) ** 2 + (vn - fv) ** 2 < rm**2
        return mask
    return rho < 1


def _patterns(role: str, states: dict[str, str], s: float, u, v, rho, phic, noise_f, noise_c,
              nucleus: np.ndarray, g: dict, i: int, rn: float, ab: tuple[float, float]
              ) -> np.ndarray:
    """Unnormalised spatial pattern of one channel of one cell (only its ranks matter)."""
    psi = g["psi"][i]
    if role == "nucleus":
        return noise_f
    if role == "nucleoli":
        return noise_f**3 * nucleus + 0.2 * noise_c
    if role == "membrane":
        return np.exp(-(((rho - 0.9) / 0.12) ** 2)) + 0.3 * noise_c
    if role == "microtubules":
        fil = (0.5 + 0.5 * np.cos(14 * phic + psi)) ** 3 * (0.6 + 0.4 * noise_c)
        other = {"punctate": noise_f**4,
                 "bundled": np.exp(-(((rho - 0.78) / 0.12) ** 2)) * (0.7 + 0.3 * np.cos(2 * phic + psi))
                 + 0.1 * noise_f}.get(states["microtubules"])
        return fil if other is None else (1 - s) * fil + s * other
    if role == "actin":
        mesh = noise_c
        a = g["alpha"][i]
        other = {"stress_fibres": (0.5 + 0.5 * np.cos(2 * np.pi / 4.5 * (u * np.cos(a)
                                                                         + v * np.sin(a)) + psi)) ** 3
                 * (0.7 + 0.3 * noise_f),
                 "cortical": np.exp(-(((rho - 0.88) / 0.1) ** 2)) + 0.1 * noise_f}.get(
                     states["actin"])
        base = mesh if other is None else (1 - s) * mesh + s * other
        return base + 0.8 * _organelles(u, v, states, s, g, i, rn, *ab)
    if role == "organelles":
        return _organelles(u, v, states, s, g, i, rn, *ab) + 0.05 * noise_f
    raise ValueError(f"unknown channel role {role!r}")


def _organelles(u, v, states: dict, s: float, g: dict, i: int, rn: float, a: float,
                b: float) -> np.ndarray:
    """Six organelle blobs: spread through the cytoplasm, or (clustered) next to the nucleus.

    ``a``, ``b``: the cell's semi-axes (px); a share ``s`` of the blobs moves into the cluster.
    """
    clustered = states["organelles"] == "clustered"
    out = np.zeros_like(u)
    for k in range(6):
        if clustered and k < 6 * s:
            ang = g["psi"][i] + 0.35 * np.sin(g["spot_angle"][i][k])
            cu, cv = 1.35 * rn * np.cos(ang), 1.35 * rn * np.sin(ang)
        else:
            ang, frac = g["spot_angle"][i][k], g["spot_rho"][i][k]
            cu, cv = frac * a * np.cos(ang), frac * b * np.sin(ang)
        out += np.exp(-((u - cu) ** 2 + (v - cv) ** 2) / (2 * 1.4**2))
    return out


def render_hard_field(rng: np.random.Generator, n_channels: int, shape: tuple[int, int],
                      latents_fn, *, background: float, peak: float,
                      bit_depth: int, plate: Plate | None,
                      intensities: tuple[float, ...] = (0.5, 0.4, 0.4, 0.4, 0.4, 0.4)):
    """One hard-screen field: ``(image (C, H, W) uint16, cells: dict of per-cell arrays)``.

    ``latents_fn(rng, n)`` draws the ``n`` cells' latents (:func:`morphology.draw_cell_states`);
    ``cells`` holds them with the nucleus centres ``x``, ``y`` (px), the owned ``area`` and
    ``nucleus_area`` (px) of every cell. ``intensities`` are the channels' peak fractions (the
    same for every treatment).
    """
    height, width = shape
    area = height * width / 128**2
    n = max(1, int(rng.poisson(HARD_COUNT * area)))
    lat = latents_fn(rng, n)
    g = _geometry(rng, shape, n, lat)
    noise_f = smooth_noise(rng, shape, 1.0)
    noise_c = smooth_noise(rng, shape, 2.5)
    roles = hard_roles(n_channels)
    names = {axis: np.asarray(values) for axis, values in AXES.items()}
    # pass 1: every pixel belongs to the cell with the smallest normalised distance (< 1)
    best = np.full(shape, np.inf, np.float32)
    owner = np.full(shape, -1, np.int64)
    windows = []
    for i in range(n):
        r, e = g["radius"][i], g["elong"][i]
        a, b = r * np.sqrt(e), r / np.sqrt(e)
        half = int(np.ceil(a)) + 3
        y0, x0 = int(np.floor(g["cy"][i])) - half, int(np.floor(g["cx"][i])) - half
        ys = slice(max(y0, 0), min(y0 + 2 * half + 1, height))
        xs = slice(max(x0, 0), min(x0 + 2 * half + 1, width))
        if ys.start >= ys.stop or xs.start >= xs.stop:
            windows.append(None)
            continue
        dy = np.arange(ys.start, ys.stop, dtype=np.float32)[:, None] - g["cy"][i]
        dx = np.arange(xs.start, xs.stop, dtype=np.float32)[None, :] - g["cx"][i]
        c, s_ = np.cos(g["theta"][i]), np.sin(g["theta"][i])
        u, v = dx * c + dy * s_, -dx * s_ + dy * c
        rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        win = best[ys, xs]
        take = (rho < 1) & (rho < win)
        win[take] = rho[take]
        owner[ys, xs][take] = i
        windows.append((ys, xs, u, v, rho))
    # pass 2: patterns, rank-mapped inside the owned pixels
    signal = np.zeros((n_channels, height, width), np.float32)
    areas = np.zeros(n, np.int64)
    nuc_areas = np.zeros(n, np.int64)
    centres = np.zeros((n, 2))
    for i in range(n):
        c, s_ = np.cos(g["theta"][i]), np.sin(g["theta"][i])
        r = g["radius"][i]
        nu, nv = g["nuc_du"][i] * r, g["nuc_dv"][i] * r
        centres[i] = (g["cx"][i] + nu * c - nv * s_, g["cy"][i] + nu * s_ + nv * c)
        if windows[i] is None:
            continue
        ys, xs, u, v, rho = windows[i]
        mine = owner[ys, xs] == i
        areas[i] = int(mine.sum())
        if not areas[i]:
            continue
        cell_states = {axis: str(names[axis][lat[axis][i]]) for axis in AXES}
        st = float(lat["strength"][i])
        rn = NUCLEUS_RATIO * r
        un, vn = u - nu, v - nv
        nucleus = _nucleus_mask(un, vn, rn, cell_states["nucleus"], st, g, i) & mine
        nuc_areas[i] = int(nucleus.sum())
        phic = np.arctan2(vn, un)
        nf, nc = noise_f[ys, xs], noise_c[ys, xs]
        for ch, role in enumerate(roles):
            region = nucleus if role in ("nucleus", "nucleoli") else mine
            if not region.any():
                continue
            ab = (r * np.sqrt(g["elong"][i]), r / np.sqrt(g["elong"][i]))
            pattern = _patterns(role, cell_states, st, u, v, rho, phic, nf, nc, nucleus, g, i,
                                rn, ab)
            plane = signal[ch, ys, xs]
            # ranks of the pattern dimmed towards the membrane: a soft edge, histogram intact
            edge = np.clip((1 - rho[region]) / EDGE, 0.05, 1)
            plane[region] = _rank_map(pattern[region] * edge, role) * g["bright"][i]
    if plate is not None:
        signal = gaussian_blur(signal, plate.blur)
    inten = np.asarray((list(intensities) * n_channels)[:n_channels], np.float32)
    bg = np.full(shape, background, np.float32)
    if plate is not None and plate.gradient:
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        ramp = ((xx / max(width - 1, 1) - 0.5) * np.cos(plate.angle)
                + (yy / max(height - 1, 1) - 0.5) * np.sin(plate.angle))
        bg = bg * (1 + plate.gradient * 2 * ramp)
    lam = bg[None] + peak * inten[:, None, None] * signal
    if plate is not None:
        acq = plate.acquisition
        lam = (lam * acq.field * acq.gain[:, None, None].astype(np.float32)
               + acq.offset[:, None, None].astype(np.float32))
    image = np.clip(shot_noise(rng, lam), 0, 2**bit_depth - 1).astype(np.uint16)
    centres = np.clip(centres, 0.0, [width - 1.0, height - 1.0])
    keep = areas > 0
    cells = {k: np.asarray(val)[keep] for k, val in lat.items()}
    cells.update(x=centres[keep, 0], y=centres[keep, 1], area=areas[keep],
                 nucleus_area=nuc_areas[keep])
    return image, cells


__all__ = ["HARD_ROLES", "gaussian_blur", "hard_roles", "reference_quantile",
           "render_hard_field"]
