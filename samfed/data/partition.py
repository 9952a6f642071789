"""Federated splits: server labeled set, N unlabeled clients (IID or non-IID), val and test.

Schemes for the unlabeled pool (everything in the pool that is not server-labeled):
- ``iid``: shuffled and cut into N equal parts.
- ``dirichlet``: images are binned by lesion area fraction (quantile bins over the pool); each bin
  is shared among the clients with proportions drawn from Dirichlet(alpha); small alpha = skewed.
- ``size``: sorted by image resolution (area, then height and width; ties in seeded random
  order) and cut into N equal contiguous parts, so each client holds a band of resolutions, i.e.
  mostly one endoscope (Kvasir-SEG). Counts stay balanced; skew comes from the devices.
The split is deterministic for a given dataset, arguments and seed, and its parts are disjoint.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from samfed.config import RunConfig
from samfed.data.io import image_size, read_mask
from samfed.data.readers import Dataset, load_dataset
from samfed.errors import SamfedError

SCHEMES = ("iid", "dirichlet", "size")
SPLIT_FORMAT = 1

_DEFAULTS = RunConfig()  # one place for the split defaults: `samfed train`, `samfed data split`


@dataclass
class Split:
    """Ids of each part of a federated split; JSON-serialisable and recorded by every run."""

    server_labeled: list[str]
    clients: list[list[str]]
    val: list[str]
    test: list[str]
    scheme: str = "iid"
    seed: int = 0
    alpha: float | None = None
    labeled_fraction: float | None = None
    dataset: str | None = None
    meta: dict = field(default_factory=dict)

    @property
    def parts(self) -> dict[str, list[str]]:
        """Every part by name: server_labeled, client0..clientN-1, val, test."""
        out = {"server_labeled": self.server_labeled}
        out.update({f"client{i}": c for i, c in enumerate(self.clients)})
        out.update({"val": self.val, "test": self.test})
        return out

    def all_ids(self) -> list[str]:
        return [i for ids in self.parts.values() for i in ids]

    def overlap(self) -> str | None:
        """The sentence naming an id listed twice (within or across parts), or None if parts are disjoint."""
        seen: dict[str, str] = {}
        for name, ids in self.parts.items():
            for i in ids:
                if i in seen:
                    where = f"twice in {name}" if seen[i] == name else f"in both {seen[i]} and {name}"
                    return f"id {i!r} is {where}; the parts of a split must be disjoint"
                seen[i] = name
        return None

    def validate(self, dataset: Dataset) -> None:
        """Raise SamfedError unless every id of the split is in `dataset` and parts are disjoint."""
        problem = self.overlap()
        if problem is not None:
            raise SamfedError(f"The split is invalid: {problem}.")
        missing = [i for i in self.all_ids() if i not in dataset]
        if missing:
            raise SamfedError(
                f"The split does not match the dataset at {dataset.root}: id {missing[0]!r} and "
                f"{len(missing) - 1} more are not in it."
            )

    def to_dict(self) -> dict:
        return {"format": SPLIT_FORMAT, **asdict(self)}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Split:
        """Read a split file (untrusted): UTF-8 JSON of the structure `to_dict` writes, with
        disjoint parts. Raises SamfedError with one sentence naming the file otherwise."""
        path = Path(path)
        try:
            text = path.read_bytes().decode("utf-8-sig")
            d = json.loads(text)
        except FileNotFoundError:
            raise SamfedError(f"Split file {path} does not exist.") from None
        except UnicodeDecodeError:
            raise SamfedError(f"Split file {path} is not a samfed split: it is not UTF-8 text.") from None
        except OSError as exc:
            raise SamfedError(f"Cannot read split file {path} ({exc.strerror or exc}).") from None
        except ValueError as exc:
            raise SamfedError(
                f"Split file {path} is not a samfed split: it is not valid JSON ({exc})."
            ) from None
        problem = _structure_problem(d)
        if problem is None:
            d = {k: v for k, v in d.items() if k != "format"}
            split = cls(**{**d, "clients": [list(c) for c in d["clients"]]})
            problem = split.overlap()
        if problem is not None:
            raise SamfedError(f"Split file {path} is not a samfed split: {problem}.")
        return split


def _short(x: object, limit: int = 40) -> str:
    """repr(x) cut to `limit` characters, for messages about untrusted values."""
    r = repr(x)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


_OPTIONAL_FIELDS = {
    "format": (lambda x: x == SPLIT_FORMAT, f"the format number {SPLIT_FORMAT}"),
    "scheme": (lambda x: isinstance(x, str) and bool(x), "a non-empty string"),  # also 'federated'
    "seed": (lambda x: isinstance(x, int) and not isinstance(x, bool), "an integer"),
    "alpha": (lambda x: x is None or _is_number(x), "a number or null"),
    "labeled_fraction": (lambda x: x is None or _is_number(x), "a number or null"),
    "dataset": (lambda x: x is None or isinstance(x, str), "a string or null"),
    "meta": (lambda x: isinstance(x, dict), "an object"),
}


def _id_list_problem(name: str, ids: object, non_empty: bool = False) -> str | None:
    """Why `ids` is not a list of non-empty id strings (at least one if `non_empty`), or None."""
    if not isinstance(ids, list):
        return f"{name} must be a list of ids, not {type(ids).__name__}"
    bad = next((i for i in ids if not isinstance(i, str) or not i.strip()), None)
    if bad is not None:
        return f"{name} holds {_short(bad)}; ids must be non-empty strings"
    if non_empty and not ids:
        return f"{name} is empty"
    return None


def _structure_problem(d: object) -> str | None:
    """Why `d` (parsed JSON) is not a split as `Split.to_dict` writes it, or None."""
    if not isinstance(d, dict):
        return f"expected a JSON object, got {type(d).__name__}"
    required = ("server_labeled", "clients", "val", "test")
    unknown = sorted(set(d) - set(required) - set(_OPTIONAL_FIELDS))
    if unknown:
        return f"unknown field {unknown[0]!r}"
    missing = [k for k in required if k not in d]
    if missing:
        return f"field {missing[0]!r} is missing"
    for key, (ok, expected) in _OPTIONAL_FIELDS.items():
        if key in d and not ok(d[key]):
            return f"{key} must be {expected}, got {_short(d[key])}"
    clients = d["clients"]
    if not isinstance(clients, list) or not clients:
        return "clients must be a non-empty list of id lists"
    for name, ids, non_empty in (
        ("server_labeled", d["server_labeled"], True),
        *((f"client{k}", c, False) for k, c in enumerate(clients)),
        ("val", d["val"], False),
        ("test", d["test"], False),
    ):
        problem = _id_list_problem(name, ids, non_empty)
        if problem is not None:
            return problem
    return None


def lesion_fraction(path: str | Path) -> float:
    """Foreground fraction of a mask file (read as everywhere, by `samfed.data.io.read_mask`)."""
    return float(read_mask(path).mean())


def lesion_fractions(
    dataset: Dataset,
    ids: Sequence[str],
    workers: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """id -> lesion area fraction from the masks; raises SamfedError if a sample has no mask.

    `progress(done, total)` is called after each mask.
    """
    samples = dataset.select(list(ids))
    unlabeled = [s.id for s in samples if s.mask is None]
    if unlabeled:
        raise SamfedError(
            f"Lesion sizes need masks, but {unlabeled[0]!r} and {len(unlabeled) - 1} more have none."
        )
    out = {}
    with ThreadPoolExecutor(workers) as pool:
        for k, f in enumerate(pool.map(lambda s: lesion_fraction(s.mask), samples)):
            out[samples[k].id] = f
            if progress is not None:
                progress(k + 1, len(samples))
    return out


def image_sizes(dataset: Dataset, ids: Sequence[str]) -> dict[str, tuple[int, int]]:
    """id -> (width, height) read from file headers only."""
    return {s.id: image_size(s.image) for s in dataset.select(list(ids))}


def quantile_bins(values: dict[str, float], n_bins: int) -> dict[str, int]:
    """id -> bin index 0..n_bins-1 by quantiles of `values` (ties fall in the same bin)."""
    v = np.array(list(values.values()))
    edges = np.quantile(v, np.linspace(0, 1, n_bins + 1)[1:-1]) if len(v) else []
    return {i: int(np.searchsorted(edges, x, side="right")) for i, x in values.items()}


def _dirichlet(ids: list[str], bins: dict[str, int], n: int, alpha: float, rng: np.random.Generator):
    """Share each bin among `n` clients with Dirichlet(alpha) proportions; redraw until no client is
    nearly empty (as in the usual FL label-skew recipes)."""
    by_bin: dict[int, list[str]] = {}
    for i in ids:
        by_bin.setdefault(bins[i], []).append(i)
    min_size = max(1, min(10, len(ids) // (4 * n)))
    for _ in range(1000):
        clients: list[list[str]] = [[] for _ in range(n)]
        for b in sorted(by_bin):
            members = list(rng.permutation(by_bin[b]))
            cuts = (np.cumsum(rng.dirichlet([alpha] * n))[:-1] * len(members)).round().astype(int)
            for c, part in enumerate(np.split(np.array(members, dtype=object), cuts)):
                clients[c] += [str(x) for x in part]
        if min(len(c) for c in clients) >= min_size:
            return clients
    raise SamfedError(
        f"Could not give each of {n} clients at least {min_size} images with alpha={alpha}; "
        "use a larger --alpha or fewer clients."
    )


def _resolve_parts(dataset, pool_ids, val_ids, val_fraction, test_fraction, rng):
    """(pool, val, test), each sorted. Explicit ids win over split files, split files over fractions:
    pool = pool_ids | train.txt | all ids; val = val_ids | val.txt | val_fraction of the pool;
    test = test.txt | test_fraction of the pool."""

    def take(ids: list[str], fraction: float) -> tuple[list[str], list[str]]:
        ids = sorted(ids)
        order = rng.permutation(len(ids))
        k = round(len(ids) * fraction)
        return sorted(ids[j] for j in order[:k]), sorted(ids[j] for j in order[k:])

    splits = dataset.splits
    test = list(splits.get("test", []))
    val = list(val_ids) if val_ids is not None else list(splits["val"]) if "val" in splits else None
    pool = list(pool_ids) if pool_ids is not None else list(splits.get("train") or dataset.ids)
    shared = sorted(set(test) & set(val or []))
    if shared:
        raise SamfedError(f"Id {shared[0]!r} is both a val and a test id; val and test must not overlap.")
    held_out = set(test) | set(val or [])
    pool = [i for i in pool if i not in held_out]
    if val is None:
        val, pool = take(pool, val_fraction)
    if "test" not in splits and test_fraction > 0:
        test, pool = take(pool, test_fraction)
    for name, ids in (("pool", pool), ("val", val), ("test", test)):
        unknown = [i for i in ids if i not in dataset]
        if unknown:
            raise SamfedError(f"{name} id {unknown[0]!r} is not in the dataset at {dataset.root}.")
    return sorted(pool), sorted(val), sorted(test)


def make_split(
    dataset: Dataset | str | Path,
    *,
    clients: int = _DEFAULTS.clients,
    labeled_fraction: float = _DEFAULTS.labeled_fraction,
    scheme: str = _DEFAULTS.partition,
    alpha: float = _DEFAULTS.dirichlet_alpha,
    seed: int = _DEFAULTS.seed,
    val_fraction: float = _DEFAULTS.val_fraction,
    test_fraction: float = _DEFAULTS.test_fraction,
    pool_ids: Sequence[str] | None = None,
    val_ids: Sequence[str] | None = None,
    n_bins: int = 5,
) -> Split:
    """Split a dataset for federated semi-supervised training.

    Pool, val and test: explicit `pool_ids` / `val_ids` win, then the split files (train.txt is
    the pool, val.txt / test.txt are val and test), then fractions: without val.txt,
    `val_fraction` of the pool is val; without test.txt, `test_fraction` of the pool is test (0
    for none). From the pool, `labeled_fraction` (at least one image) goes to the server; the
    rest is shared among `clients` by `scheme` ('iid' | 'dirichlet' over `n_bins` lesion-size
    bins with `alpha` | 'size' by image resolution).
    """
    if not isinstance(dataset, Dataset):
        dataset = load_dataset(dataset)
    if scheme not in SCHEMES:
        raise SamfedError(f"Unknown partition scheme {scheme!r}; choose one of {', '.join(SCHEMES)}.")
    if clients < 1:
        raise SamfedError(f"The number of clients must be at least 1, got {clients}.")
    if not 0 < labeled_fraction < 1:
        raise SamfedError(
            f"The labeled fraction must be between 0 and 1 (exclusive), got {labeled_fraction}."
        )
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1):
        raise SamfedError("The val and test fractions must be between 0 and 1.")
    if scheme == "dirichlet" and alpha <= 0:
        raise SamfedError(f"The Dirichlet alpha must be positive, got {alpha}.")
    seeds = np.random.SeedSequence(seed).spawn(3)
    pool, val, test = _resolve_parts(
        dataset, pool_ids, val_ids, val_fraction, test_fraction, np.random.default_rng(seeds[0])
    )

    rng = np.random.default_rng(seeds[1])
    n_lab = max(1, round(len(pool) * labeled_fraction))
    if len(pool) < n_lab + clients:
        raise SamfedError(
            f"The pool has {len(pool)} images: too few for {n_lab} server-labeled images "
            f"and {clients} clients."
        )
    order = rng.permutation(len(pool))
    labeled = sorted(pool[j] for j in order[:n_lab])
    unlabeled = sorted(pool[j] for j in order[n_lab:])

    rng = np.random.default_rng(seeds[2])
    meta: dict = {"pool": len(pool)}
    if scheme == "iid":
        parts = [
            list(p)
            for p in np.array_split(
                np.array(unlabeled, dtype=object)[rng.permutation(len(unlabeled))], clients
            )
        ]
    elif scheme == "dirichlet":
        fractions = lesion_fractions(dataset, unlabeled)
        bins = quantile_bins(fractions, n_bins)
        parts = _dirichlet(unlabeled, bins, clients, alpha, rng)
        edges = np.quantile(list(fractions.values()), np.linspace(0, 1, n_bins + 1))
        meta["lesion_bin_edges"] = [round(float(e), 5) for e in edges]
    else:
        sizes = image_sizes(dataset, unlabeled)
        tie = dict(zip(unlabeled, rng.permutation(len(unlabeled)).tolist(), strict=True))
        ordered = sorted(
            unlabeled, key=lambda i: (sizes[i][0] * sizes[i][1], sizes[i][1], sizes[i][0], tie[i])
        )
        parts = [list(p) for p in np.array_split(np.array(ordered, dtype=object), clients)]
    return Split(
        server_labeled=labeled,
        clients=[sorted(str(i) for i in p) for p in parts],
        val=val,
        test=test,
        scheme=scheme,
        seed=seed,
        alpha=alpha if scheme == "dirichlet" else None,
        labeled_fraction=labeled_fraction,
        dataset=str(dataset.root),
        meta=meta,
    )
