"""The arrays of a run: the dataset (or the built-in synthetic set), its split and the images of
every part at the working size."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from samfed.config import RunConfig
from samfed.errors import SamfedError
from samfed.method.arrays import SegArrays
from samfed.train.run_dir import RunDir


@dataclass
class Sets:
    """The arrays of one run: D_p, each client's images (masks for logging only), val, test."""

    labeled: SegArrays
    clients: list[SegArrays]
    val: SegArrays
    test: SegArrays | None
    teacher_maps: list[np.ndarray | None] = field(default_factory=list)
    val_maps: np.ndarray | None = None  # (N, S, S) teacher probabilities of the validation images


def new_split(cfg: RunConfig, dataset):
    """cfg.split loaded and checked against `dataset`, else the split made from cfg's partition
    settings (deterministic in cfg.seed)."""
    from samfed.data.partition import Split, make_split

    if cfg.split:
        split = Split.load(cfg.split)
        split.validate(dataset)
        return split
    return make_split(
        dataset,
        clients=cfg.clients,
        labeled_fraction=cfg.labeled_fraction,
        scheme=cfg.partition,
        alpha=cfg.dirichlet_alpha,
        seed=cfg.seed,
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction,
    )


def prepare_dataset(cfg: RunConfig, run: RunDir, say):
    """The dataset (writing the synthetic one into run/data when cfg.data is None) and the split."""
    from samfed.data.partition import Split
    from samfed.data.readers import load_dataset

    if cfg.data is None:
        if not (run.data / "synth.json").is_file():
            from samfed.data.synth import write_synthetic

            say(
                f"writing the built-in synthetic {cfg.synthetic_domain} set "
                f"({cfg.synthetic_n} images) to {run.data}"
            )
            write_synthetic(
                cfg.synthetic_domain, cfg.synthetic_n, run.data, seed=cfg.seed, size=max(cfg.image_size, 160)
            )
        dataset = load_dataset(run.data)
    else:
        dataset = load_dataset(cfg.data)
    if run.split.is_file():
        split = Split.load(run.split)
        split.validate(dataset)
    else:
        split = new_split(cfg, dataset)
        split.save(run.split)
    if not split.val:
        raise SamfedError("The split has no validation images; raise the validation fraction or add val.txt.")
    return dataset, split


def split_arrays(dataset, ids: list[str], size: int, need_masks: bool) -> SegArrays:
    from samfed.data.dataset import load_arrays

    has = all(s.mask is not None for s in dataset.select(ids))
    if need_masks and not has:
        raise SamfedError("Server-labeled and validation images need masks; some in the split have none.")
    images, masks = load_arrays(dataset, ids, size, with_masks=has)
    return SegArrays(images, masks, list(ids))


def load_sets(dataset, split, cfg: RunConfig) -> Sets:
    s = cfg.image_size
    clients = [split_arrays(dataset, ids, s, False) for ids in split.clients]
    test = split_arrays(dataset, split.test, s, True) if split.test else None
    return Sets(
        split_arrays(dataset, split.server_labeled, s, True),
        clients,
        split_arrays(dataset, split.val, s, True),
        test,
    )
