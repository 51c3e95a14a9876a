"""Per-user splits of interactions in canonical order (``load_dataset``'s order): the
leave-one-out split of the evaluation protocols and the last-item holdout of training."""

from __future__ import annotations

import numpy as np
import pandas as pd


def _position_from_end(interactions: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    groups = interactions.groupby("user_id", sort=False)["user_id"]
    pos = groups.cumcount(ascending=False).to_numpy()
    size = groups.transform("size").to_numpy()
    return pos, size


def leave_one_out(
    interactions: pd.DataFrame,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(train, valid, test): per user last -> test, second-last -> valid.

    Input must already be in canonical order. Users with fewer than 3 interactions
    stay entirely in train.
    """
    pos, size = _position_from_end(interactions)
    enough = size >= 3
    test = enough & (pos == 0)
    valid = enough & (pos == 1)
    train = ~(test | valid)
    return (
        interactions[train].reset_index(drop=True),
        interactions[valid].reset_index(drop=True),
        interactions[test].reset_index(drop=True),
    )


def test_rows(interactions: pd.DataFrame) -> np.ndarray:
    """The rows ``leave_one_out`` makes test items (each user's last, users with >= 3)."""
    pos, size = _position_from_end(interactions)
    return np.asarray((size >= 3) & (pos == 0))


def holdout_last(interactions: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, valid): each user's last interaction -> valid, for users with >= 2."""
    pos, size = _position_from_end(interactions)
    valid = (size >= 2) & (pos == 0)
    return (
        interactions[~valid].reset_index(drop=True),
        interactions[valid].reset_index(drop=True),
    )
