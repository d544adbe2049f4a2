"""Batch-aware selection on embeddings: core-set (greedy k-center), BADGE (k-means++ seeding on gradient embeddings)
and a cluster-margin style diversity wrapper for any score. Each returns candidate indices in the order chosen; every
random choice is drawn from `seed`, so a resumed run picks the same."""

from __future__ import annotations

import numpy as np


def kcenter_greedy(candidates: np.ndarray, labeled: np.ndarray, n: int, seed: int = 0) -> tuple[list[int], np.ndarray]:
    """Core-set (Sener & Savarese 2018): n times, the candidate farthest from everything labeled or chosen so far.
    Returns (chosen indices, each candidate's distance to the labeled set before choosing). Without labeled
    examples the first pick is a seeded random candidate."""
    x = np.asarray(candidates, dtype=np.float64)
    points, n = len(x), min(n, len(x))
    if points == 0:
        return [], np.zeros(0)
    if len(labeled):
        nearest = _min_distances(x, np.asarray(labeled, dtype=np.float64))
    else:
        nearest = np.full(points, np.inf)
    before = nearest.copy()
    chosen = []
    for _ in range(n):
        i = (
            int(np.random.default_rng(seed).integers(points))
            if not chosen and np.isinf(nearest).all()
            else int(np.argmax(nearest))
        )  # ties: the lowest index
        chosen.append(i)
        nearest = np.minimum(nearest, np.linalg.norm(x - x[i], axis=1))
        nearest[chosen] = -np.inf  # never twice
    return chosen, np.where(np.isinf(before), np.nan, before)


def _min_distances(x: np.ndarray, y: np.ndarray, block: int = 4096) -> np.ndarray:
    """For each row of x, the Euclidean distance to its nearest row of y, in blocks (no [N, M] matrix at once)."""
    out = np.empty(len(x))
    y2 = (y**2).sum(1)
    for s in range(0, len(x), block):
        part = x[s : s + block]
        d2 = (part**2).sum(1)[:, None] - 2 * part @ y.T + y2[None, :]
        out[s : s + block] = np.sqrt(np.maximum(d2.min(1), 0.0))
    return out


def gradient_embeddings(probs: np.ndarray, hidden: np.ndarray) -> np.ndarray:
    """BADGE's gradient embedding of the loss at the model's own prediction y_hat with respect to a last linear
    layer over the labels: (p - onehot(y_hat)) outer h, flattened: [N, C * H]. `badge` never forms it; this is the
    definition its distances are tested against."""
    return (_residuals(probs)[:, :, None] * np.asarray(hidden, dtype=np.float64)[:, None, :]).reshape(len(probs), -1)


def _residuals(probs: np.ndarray) -> np.ndarray:
    r = np.array(probs, dtype=np.float64)
    r[np.arange(len(r)), r.argmax(1)] -= 1.0
    return r


def badge(probs: np.ndarray, hidden: np.ndarray, n: int, seed: int = 0) -> tuple[list[int], np.ndarray]:
    """BADGE (Ash et al. 2020): n picks by k-means++ seeding on the gradient embeddings g_i = r_i outer h_i,
    r = p - onehot(y_hat), from their factors (gradient_d2), so memory is N (C + H), not the N C H of the embeddings
    themselves (70k examples, 4 labels and a 70B model's 8192 would be 18 GB). Returns (picks in order, |g_i|)."""
    r, h = _residuals(probs), np.asarray(hidden, dtype=np.float64)
    sq = (r * r).sum(1) * (h * h).sum(1)
    return d2_sampling(len(sq), lambda i: gradient_d2(r, h, sq, i), n, seed), np.sqrt(sq)


def gradient_d2(r: np.ndarray, h: np.ndarray, sq: np.ndarray, i: int) -> np.ndarray:
    """|g_j - g_i|^2 for every j: |g_j|^2 + |g_i|^2 - 2 (r_j . r_i)(h_j . h_i) (sq: the |g|^2); the rounding noise
    left where two embeddings coincide is set to 0."""
    d2 = sq + sq[i] - 2 * (r @ r[i]) * (h @ h[i])
    return np.where(d2 > 1e-12 * (sq + sq[i]), d2, 0.0)


def d2_sampling(points: int, d2_to, n: int, seed: int = 0) -> list[int]:
    """n of `points` points by k-means++ seeding (Arthur & Vassilvitskii 2007) with one trial per centre, as BADGE
    uses it: the first point
    uniformly, each next with probability proportional to its squared distance to the nearest point chosen so far
    (d2_to(i): every point's squared distance to point i). Points that coincide with chosen ones have D^2 = 0 and are
    never drawn; when only such points are left, the lowest indices fill the n."""
    rng = np.random.default_rng(seed)
    n, picked, nearest = min(n, points), [], np.full(points, np.inf)
    while len(picked) < n:
        if picked:
            total = nearest.sum()
            if not total > 0:
                break
            i = int(rng.choice(points, p=nearest / total))
        else:
            i = int(rng.integers(points))
        picked.append(i)
        nearest = np.minimum(nearest, d2_to(i))
        nearest[i] = 0.0
    return picked + _fill(points, picked, n)


def cluster_spread(scores: np.ndarray, embeddings: np.ndarray, n: int, beta: float, seed: int = 0) -> list[int]:
    """Cluster-margin style diversity (Citovsky et al. 2021): n picks: of the ceil(beta * n) best-scoring candidates,
    k-means with n clusters on their embeddings, then the best-scoring member of each cluster, best first. beta = 1
    is the plain top n; larger beta trades score for spread."""
    from sklearn.cluster import KMeans

    scores = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    n = min(n, len(scores))
    if n == 0:
        return []
    tiebreak = np.random.default_rng(seed).permutation(len(scores))
    ranked = np.lexsort((tiebreak, -scores))  # best first, seeded order among ties
    top = ranked[: max(n, int(np.ceil(beta * n - 1e-9)))]  # 1.1 * 100 is 110.00000000000001: 110, not 111
    if len(top) == n:
        return [int(i) for i in top]
    labels = KMeans(n_clusters=n, n_init=1, random_state=seed).fit_predict(np.asarray(embeddings)[top])
    best = {}
    for i, c in zip(top, labels):  # `top` is in score order: the first member seen is the cluster's best
        best.setdefault(int(c), int(i))
    picked = sorted(best.values(), key=lambda i: list(top).index(i))
    if len(picked) < n:  # k-means can leave a cluster empty: fill with the best remaining
        picked += [int(i) for i in top if int(i) not in picked][: n - len(picked)]
    return picked


def kmeans_representatives(embeddings: np.ndarray, n: int, seed: int = 0) -> list[int]:
    """A diverse cold start of n: k-means with n clusters, then the example nearest each centroid (clusters in the
    order k-means numbers them). Needs no labels and no scores."""
    from sklearn.cluster import KMeans

    x = np.asarray(embeddings, dtype=np.float64)
    n = min(n, len(x))
    if n == 0:
        return []
    fit = KMeans(n_clusters=n, n_init=1, random_state=seed).fit(x)
    picked = []
    for c in range(n):
        members = np.flatnonzero(fit.labels_ == c)
        if len(members):
            d = np.linalg.norm(x[members] - fit.cluster_centers_[c], axis=1)
            picked.append(int(members[np.argmin(d)]))
    picked = list(dict.fromkeys(picked))
    return picked + _fill(len(x), picked, n)  # empty clusters


def _fill(points: int, picked: list[int], n: int) -> list[int]:
    """The lowest indices not yet picked, up to n picks in all."""
    taken = set(picked)
    return [i for i in range(points) if i not in taken][: n - len(picked)]
