"""Plain float64 numpy references, written from the papers' definitions with loops."""

import numpy as np


def dist(x):
    x = np.asarray(x, np.float64)
    n = len(x)
    d = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            d[i, j] = np.sum((x[i] - x[j]) ** 2)
    return d


def krum_scores(d, f, cand):
    m = len(cand)
    k = max(m - f - 2, 1)
    scores = []
    for i in cand:
        others = sorted(d[i, j] for j in cand if j != i)
        scores.append(sum(others[:k]) if m > 1 else 0.0)
    return np.array(scores)


def multikrum(x, f, m=None):
    x = np.asarray(x, np.float64)
    n = len(x)
    m = n - f if m is None else m
    order = np.argsort(krum_scores(dist(x), f, list(range(n))), kind="stable")
    return x[order[:m]].mean(axis=0)


def krum(x, f):
    return multikrum(x, f, 1)


def median(x):
    return np.median(np.asarray(x, np.float64), axis=0)


def trimmed_mean(x, f):
    s = np.sort(np.asarray(x, np.float64), axis=0)
    return s[f : len(s) - f].mean(axis=0)


def bulyan(x, f):
    x = np.asarray(x, np.float64)
    n = len(x)
    d = dist(x)
    remaining, picked = list(range(n)), []
    for _ in range(n - 2 * f):
        scores = krum_scores(d, f, remaining)
        best = remaining[int(np.argmin(scores))]
        picked.append(best)
        remaining.remove(best)
    sel = x[picked]
    theta = len(sel)
    beta = theta - 2 * f
    med = np.median(sel, axis=0)
    out = np.empty(x.shape[1])
    for j in range(x.shape[1]):
        col = np.sort(sel[:, j])
        order = np.argsort(np.abs(col - med[j]), kind="stable")
        out[j] = col[order[:beta]].mean()
    return out


def geometric_median(x, weights=None, nu=1e-6, tol=1e-6, max_iter=100):
    x = np.asarray(x, np.float64)
    a = np.ones(len(x)) if weights is None else np.asarray(weights, np.float64)
    z = (a[:, None] * x).sum(0) / a.sum()
    for _ in range(max_iter):
        b = a / np.maximum(nu, np.linalg.norm(x - z, axis=1))
        z_new = (b[:, None] * x).sum(0) / b.sum()
        moved = np.linalg.norm(z_new - z)
        z = z_new
        if moved <= tol * (np.linalg.norm(z) + nu):
            break
    return z


def centered_clipping(x, center, tau, iterations):
    x = np.asarray(x, np.float64)
    v = np.asarray(center, np.float64).copy()
    for _ in range(iterations):
        step = np.zeros_like(v)
        for xi in x:
            u = xi - v
            norm = np.linalg.norm(u)
            step += u * min(1.0, tau / norm if norm > 0 else 1.0)
        v = v + step / len(x)
    return v


def fltrust(x, g0):
    x = np.asarray(x, np.float64)
    g0 = np.asarray(g0, np.float64)
    total, trust_sum = np.zeros_like(g0), 0.0
    for xi in x:
        cos = xi @ g0 / (np.linalg.norm(xi) * np.linalg.norm(g0))
        ts = max(cos, 0.0)
        total += ts * np.linalg.norm(g0) / np.linalg.norm(xi) * xi
        trust_sum += ts
    return total / trust_sum


def nnm(x, f):
    x = np.asarray(x, np.float64)
    d = dist(x)
    n = len(x)
    out = np.empty_like(x)
    for i in range(n):
        keys = [(-1.0 if j == i else d[i, j], j) for j in range(n)]
        nearest = [j for _, j in sorted(keys)[: n - f]]
        out[i] = x[nearest].mean(axis=0)
    return out


def clip(x, c):
    x = np.asarray(x, np.float64)
    return np.array([xi * min(1.0, c / np.linalg.norm(xi)) for xi in x])


def arc(x, f):
    x = np.asarray(x, np.float64)
    n = len(x)
    k = int(2 * f * (n - f) / n)
    if k == 0:
        return x.copy()
    norms = np.linalg.norm(x, axis=1)
    threshold = np.sort(norms)[n - k - 1]
    return np.array([xi * min(1.0, threshold / ni) for xi, ni in zip(x, norms)])
