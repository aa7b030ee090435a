"""Batched float32 QEF minimisation inside a voxel box, rounding like the official C++ (Eigen, float32).

The official converter accumulates and solves its quadrics in float32, and its QEFs are ill-conditioned
enough (condition ~100) that a different but correct solver moves dual vertices by ~1e-5. So this module
reproduces Eigen's column-pivoting Householder QR operation for operation (pivot choice, reflector
construction, norm downdates, back substitution), vectorised over all voxels, in float32 numpy
(no FMA, the same summation order as Eigen's unrolled 2- and 3-term reductions).
"""

from __future__ import annotations

import numpy as np

F32 = np.float32
EPS = np.finfo(F32).eps
TINY = np.finfo(F32).tiny


def _sum3(terms: list[np.ndarray]) -> np.ndarray:
    """Eigen's complete-unrolled reduction order for up to 3 terms: a0 + (a1 + a2)."""
    if len(terms) == 1:
        return terms[0]
    if len(terms) == 2:
        return terms[0] + terms[1]
    return terms[0] + (terms[1] + terms[2])


def _sumsq(cols: list[np.ndarray]) -> np.ndarray:
    return _sum3([c * c for c in cols]) if cols else None


def colpiv_qr_solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Eigen `ColPivHouseholderQR(A).solve(b)` in float32 for a batch: a [M, n, n], b [M, n] -> [M, n].

    Full rank assumed (the regularised quadrics are positive definite), so no pivot is cut off.
    Entries are kept as separate contiguous [M] arrays (m[i][j]) so every step is a plain vector op.
    """
    n = a.shape[1]
    m = [[np.ascontiguousarray(a[:, i, j], dtype=F32) for j in range(n)] for i in range(n)]
    c = [np.ascontiguousarray(b[:, i], dtype=F32) for i in range(n)]
    size = a.shape[0]
    norm_direct = [np.sqrt(_sumsq([m[i][j] for i in range(n)])).astype(F32) for j in range(n)]
    norm_updated = [x.copy() for x in norm_direct]
    perm = [np.full(size, j, dtype=np.int8) for j in range(n)]
    taus = []
    downdate_threshold = np.sqrt(EPS).astype(F32)
    for k in range(n):
        # pivot: the first column among k.. with the largest updated norm
        pivot = np.full(size, k, dtype=np.int8)
        best = norm_updated[k]
        for j in range(k + 1, n):
            bigger = norm_updated[j] > best
            pivot = np.where(bigger, j, pivot)
            best = np.where(bigger, norm_updated[j], best)
        for j in range(k + 1, n):
            swap = pivot == j
            if not swap.any():
                continue
            for i in range(n):
                m[i][k], m[i][j] = np.where(swap, m[i][j], m[i][k]), np.where(swap, m[i][k], m[i][j])
            for arr in (norm_updated, norm_direct, perm):
                arr[k], arr[j] = np.where(swap, arr[j], arr[k]), np.where(swap, arr[k], arr[j])

        # Householder reflector of column k below the diagonal (Eigen makeHouseholder)
        c0 = m[k][k]
        tail = [m[i][k] for i in range(k + 1, n)]
        tail_sq = _sumsq(tail) if tail else np.zeros(size, dtype=F32)
        trivial = tail_sq <= TINY
        beta = np.sqrt(c0 * c0 + tail_sq).astype(F32)
        beta = np.where(c0 >= 0, -beta, beta)
        with np.errstate(divide="ignore", invalid="ignore"):
            ess = [np.where(trivial, F32(0), t / (c0 - beta)) for t in tail]
            tau = np.where(trivial, F32(0), (beta - c0) / beta)
        m[k][k] = np.where(trivial, c0, beta)
        for i, e in zip(range(k + 1, n), ess, strict=True):
            m[i][k] = e
        taus.append(tau)

        # apply it to the remaining columns (Eigen applyHouseholderOnTheLeft)
        active = tau != 0
        for jj in range(k + 1, n):
            col = [m[i][jj] for i in range(k, n)]
            _reflect(col, ess, tau, active)
            for i in range(k, n):
                m[i][jj] = col[i - k]

        # downdate the remaining column norms
        for jj in range(k + 1, n):
            nonzero = norm_updated[jj] != 0
            with np.errstate(divide="ignore", invalid="ignore"):
                t = np.abs(m[k][jj]) / norm_updated[jj]
                t = np.maximum((F32(1) + t) * (F32(1) - t), F32(0))
                ratio = norm_updated[jj] / norm_direct[jj]
                t2 = t * (ratio * ratio)
            recompute = nonzero & (t2 <= downdate_threshold)
            rest = [m[i][jj] for i in range(k + 1, n)]
            fresh = np.sqrt(_sumsq(rest)).astype(F32) if rest else np.zeros(size, dtype=F32)
            scaled = norm_updated[jj] * np.sqrt(t).astype(F32)
            norm_direct[jj] = np.where(recompute, fresh, norm_direct[jj])
            norm_updated[jj] = np.where(recompute, fresh, np.where(nonzero, scaled, norm_updated[jj]))

    for k in range(n - 1):  # c = Q^T b; the last reflector has length 1 and tau 0
        ess = [m[i][k] for i in range(k + 1, n)]
        col = c[k:]
        _reflect(col, ess, taus[k], taus[k] != 0)
        c[k:] = col
    for i in range(n - 1, -1, -1):  # upper-triangular back substitution, column oriented
        c[i] = c[i] / m[i][i]
        for r in range(i):
            c[r] = c[r] - c[i] * m[r][i]
    x = np.empty((size, n), dtype=F32)
    for j in range(n):  # undo the column permutation: x[perm[i]] = c[i]
        value = c[n - 1]
        for i in range(n - 2, -1, -1):
            value = np.where(perm[i] == j, c[i], value)
        x[:, j] = value
    return x


def _reflect(v: list[np.ndarray], ess: list[np.ndarray], tau: np.ndarray, active: np.ndarray) -> None:
    """In place: v <- (I - tau [1; ess][1; ess]^T) v for a column given as a list of [M] arrays."""
    tmp = ess[0] * v[1]
    for i in range(1, len(ess)):
        tmp = tmp + ess[i] * v[1 + i]
    tmp = tmp + v[0]
    v[0] = np.where(active, v[0] - tau * tmp, v[0])
    for i, e in enumerate(ess):
        v[1 + i] = np.where(active, v[1 + i] - (tau * e) * tmp, v[1 + i])


def _sum4(t: list[np.ndarray]) -> np.ndarray:
    """Eigen's SSE horizontal sum of one 4-float packet: (t0 + t2) + (t1 + t3)."""
    return (t[0] + t[2]) + (t[1] + t[3])


def _energy(q: np.ndarray, p: np.ndarray) -> np.ndarray:
    """float32 [p; 1]^T Q [p; 1] for p [M, 3], as Eigen evaluates `p.transpose() * Q * p` (Vector4f)."""
    h = [p[:, 0], p[:, 1], p[:, 2], np.ones(p.shape[0], dtype=F32)]
    row = [_sum4([h[k] * q[:, k, j] for k in range(4)]) for j in range(4)]
    return _sum4([row[j] * h[j] for j in range(4)])


def solve_in_boxes(q: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Minimise [x; 1]^T Q [x; 1] per voxel with x in the box [lo, hi] (float32 [M, 4, 4], [M, 3], [M, 3]).

    The free minimiser when it lies in the box (inclusive); otherwise the best (first strict minimum)
    of the 6 face, 12 edge and 8 corner candidates, in the official enumeration order.
    """
    q, lo, hi = q.astype(F32), lo.astype(F32), hi.astype(F32)
    x = free_minimisers(q)
    idx = np.flatnonzero(~inside_boxes(x, lo, hi))
    if idx.size:
        x[idx] = solve_on_box_surfaces(q[idx], lo[idx], hi[idx], x[idx])
    return x


def free_minimisers(q: np.ndarray) -> np.ndarray:
    """float32 [M, 3]: the unconstrained minimiser of each quadric [M, 4, 4] (Eigen's QR solve)."""
    return colpiv_qr_solve(q[:, :3, :3], -q[:, :3, 3])


def inside_boxes(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """bool [M]: x [M, 3] lies in its box, bounds included."""
    return ((x >= lo) & (x <= hi)).all(axis=1)


def solve_on_box_surfaces(q: np.ndarray, lo: np.ndarray, hi: np.ndarray, free: np.ndarray) -> np.ndarray:
    """float32 [M, 3]: the best of the face, edge and corner candidates of each box, for quadrics whose
    free minimiser `free` lies outside it (kept where no candidate has a finite energy)."""
    m = q.shape[0]
    best = np.full(m, np.inf, dtype=F32)
    best_p = free.astype(F32)  # a copy

    def consider(p: np.ndarray, valid: np.ndarray) -> None:
        err = _energy(q, p)
        better = valid & (err < best)
        best[better] = err[better]
        best_p[better] = p[better]

    for fixed in range(3):  # one coordinate pinned to a face
        a1, a2 = (fixed + 1) % 3, (fixed + 2) % 3
        sub = q[:, [a1, a2]][:, :, [a1, a2]]  # [m, 2, 2]
        for bound in (lo, hi):
            rhs = -(q[:, [a1, a2], fixed] * bound[:, fixed, None] + q[:, [a1, a2], 3])
            y = colpiv_qr_solve(sub, rhs)
            p = np.empty((m, 3), dtype=F32)
            p[:, fixed], p[:, a1], p[:, a2] = bound[:, fixed], y[:, 0], y[:, 1]
            ok = (y[:, 0] >= lo[:, a1]) & (y[:, 0] <= hi[:, a1]) & (y[:, 1] >= lo[:, a2]) & (y[:, 1] <= hi[:, a2])
            consider(p, ok)
    for free in range(3):  # two coordinates pinned to an edge
        a1, a2 = (free + 1) % 3, (free + 2) % 3
        for b1, b2 in ((lo, lo), (lo, hi), (hi, lo), (hi, hi)):
            dot = q[:, free, a1] * b1[:, a1] + (q[:, free, a2] * b2[:, a2] + q[:, free, 3])
            with np.errstate(divide="ignore", invalid="ignore"):
                t = -dot / q[:, free, free]
            p = np.empty((m, 3), dtype=F32)
            p[:, free], p[:, a1], p[:, a2] = t, b1[:, a1], b2[:, a2]
            consider(p, (t >= lo[:, free]) & (t <= hi[:, free]))
    for cx in (hi, lo):  # the 8 corners, max before min on each axis as in the official loop
        for cy in (hi, lo):
            for cz in (hi, lo):
                consider(np.stack([cx[:, 0], cy[:, 1], cz[:, 2]], axis=1), np.ones(m, dtype=bool))
    return best_p
