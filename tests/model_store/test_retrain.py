"""The event log as training data: export round-trips; retrain publishes through the gate,
and the gate refuses a deliberately worse candidate and keeps CURRENT."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest
import torch

from fusionrec.retrain import DECISIONS, retrain, time_holdout
from model_store.bundle import store as store_mod
from model_store.bundle.io import load_bundle, read_items, read_manifest
from model_store.config import Config
from model_store.data.dataset import load_dataset
from model_store.events.log import Event, EventStore, export_dataset, parse_since
from model_store.training.warm import WarmStart, warm_start
from tests.helpers.bundles import train_tiny

TINY = {"model": {"fusion": "joint", "dim": 32, "max_len": 20}, "train": {"epochs": 3}}


def log_from(interactions: pd.DataFrame, url: str, *, dislikes: int = 0) -> EventStore:
    store = EventStore(url)
    rows = [
        Event(uuid.uuid4().hex, str(u), str(i), "click", 2.0, float(t))
        for u, i, t in zip(
            interactions["user_id"], interactions["item_id"], interactions["timestamp"], strict=True
        )
    ]
    rows += [
        Event(uuid.uuid4().hex, str(u), str(i), "dislike", -1.0, 1e12)
        for u, i in zip(
            interactions["user_id"][:dislikes], interactions["item_id"][:dislikes], strict=True
        )
    ]
    store.insert(rows)
    return store


@pytest.fixture
def setup(tiny_dataset: Path, tmp_path: Path) -> tuple[Path, str, pd.DataFrame]:
    """CURRENT trained on the oldest 80 % of the events; the log holds all of them."""
    data = load_dataset(tiny_dataset)
    inter = data.interactions.copy()
    # every shopper active all along (the synthetic users' times do not overlap): the k-th
    # event of each user at step k, so a time cut splits every history
    codes = inter["user_id"].astype("category").cat.codes.to_numpy()
    inter["timestamp"] = 1_700_000_000 + inter.groupby("user_id").cumcount() * 1000 + codes
    inter = inter.sort_values("timestamp", kind="stable")
    old = inter.iloc[: int(len(inter) * 0.8)]
    early = tmp_path / "early"
    early.mkdir()
    old[["user_id", "item_id", "timestamp"]].to_csv(early / "interactions.csv", index=False)
    data.items.to_csv(early / "items.csv", index=False)
    store = tmp_path / "store"
    train_tiny(early, store)
    url = f"sqlite:///{tmp_path}/events.db"
    log_from(inter, url, dislikes=5).close()
    return store, url, inter


def test_export_round_trips_positive_events(
    setup: tuple[Path, str, pd.DataFrame], tmp_path: Path
) -> None:
    store, url, inter = setup
    log = EventStore(url)
    items = read_items(store)
    n, _ = export_dataset(log, tmp_path / "out", items=items)
    back = load_dataset(tmp_path / "out")
    assert n == len(inter) == len(back.interactions)  # the 5 dislikes are not interactions
    assert set(back.interactions["weight"]) == {2.0}
    pairs = set(zip(back.interactions["user_id"], back.interactions["item_id"], strict=True))
    assert pairs == set(zip(inter["user_id"], inter["item_id"], strict=True))
    cut = float(inter["timestamp"].median())
    n_since, _ = export_dataset(log, tmp_path / "since", items=items, since=cut)
    assert n_since == int((inter["timestamp"] >= cut).sum())


def test_parse_since_takes_seconds_and_iso_dates() -> None:
    assert parse_since("1700000000") == 1_700_000_000.0
    assert parse_since("2026-12-01") == pd.Timestamp("2026-12-01", tz="UTC").timestamp()


def test_time_holdout_targets_follow_their_histories(setup: tuple[Path, str, pd.DataFrame]) -> None:
    _, _, inter = setup
    before, held = time_holdout(inter, 0.1)
    assert (before["timestamp"] < held.cut).all()
    assert held.users and len(held.users) == len(set(held.users))
    first = inter[inter["user_id"] == held.users[0]]
    assert first[first["timestamp"] >= held.cut]["item_id"].iloc[0] == held.targets[0]


def test_holdout_falls_back_to_last_events_when_recent_shoppers_are_new() -> None:
    """Old shoppers before the cut, new ones after it: no user spans the cut, so each of
    the newest users' last event is held out (issue 29: retrain failed outright)."""
    rows = [("old", f"i{k}", 100.0 + k) for k in range(5)]
    rows += [(f"new{u}", f"i{k}", 1000.0 + 10 * u + k) for u in range(4) for k in range(3)]
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    before, held = time_holdout(inter, 0.5)
    assert held.users == ["new2", "new3"]
    assert held.targets == ["i2", "i2"] and held.histories == [["i0", "i1"], ["i0", "i1"]]
    assert len(before) == len(inter) - 2 and held.cut == 1022.0


def test_the_holdout_starts_after_currents_training_cut() -> None:
    """The gate holds out only events CURRENT cannot have trained on: none at or before its
    training data cut, even where the newest fraction reaches back before it (the MovieLens
    rehearsal: 47 of 133 targets were events CURRENT had seen, which favours CURRENT)."""
    rows = [(f"u{u}", f"i{k}", 100.0 + 10 * k + u) for u in range(4) for k in range(10)]
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    inter = inter.sort_values("timestamp", kind="stable")
    _, old_rule = time_holdout(inter, 0.5)
    assert old_rule.targets == ["i5"] * 4  # reaches back to 150..153
    before, held = time_holdout(inter, 0.5, after=172.0)  # u2's event at 172: at the cut
    assert held.users == ["u3", "u0", "u1", "u2"]
    assert held.targets == ["i7", "i8", "i8", "i8"] and held.cut > 172.0
    assert len(before) == int((inter["timestamp"] <= 172.0).sum())
    assert held.histories[2] == [f"i{k}" for k in range(8)]  # u1 up to 171
    # the fallback (nobody spans the cut) keeps to the same rule
    rows = [("old", f"i{k}", 100.0 + k) for k in range(5)]
    rows += [(f"new{u}", f"i{k}", 1000.0 + 10 * u + k) for u in range(4) for k in range(3)]
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    _, held = time_holdout(inter, 0.5, after=1025.0)
    assert held.users == ["new3"] and held.targets == ["i2"] and held.cut > 1025.0


def test_a_bundle_without_a_training_cut_falls_back_with_a_note(
    setup: tuple[Path, str, pd.DataFrame], caplog: pytest.LogCaptureFixture
) -> None:
    from fusionrec.retrain import holdout_start

    store, _, inter = setup
    manifest = read_manifest(store / store_mod.current_version(store))
    old = inter.iloc[: int(len(inter) * 0.8)]
    assert manifest.data.last_event_timestamp == float(old["timestamp"].max())
    assert holdout_start(manifest) == manifest.data.last_event_timestamp
    older = manifest.model_copy(
        update={"data": manifest.data.model_copy(update={"last_event_timestamp": None})}
    )
    with caplog.at_level("WARNING", logger="fusionrec.retrain"):
        assert holdout_start(older) is None
    assert "records no training data cut" in caplog.text


def test_retrain_holds_out_only_events_after_currents_cut(
    setup: tuple[Path, str, pd.DataFrame],
) -> None:
    """CURRENT trained on the oldest 80 %; a 50 % holdout would reach into them. The gate
    records CURRENT's cut and its own snapshot time; the published bundle its own cut."""
    import time

    store, url, inter = setup
    old_cut = float(inter.iloc[: int(len(inter) * 0.8)]["timestamp"].max())
    t0 = time.time()
    d = retrain(store, url, Config.from_dict(TINY), holdout=0.5, margin=1.0, final=False)
    assert d.published and d.gate is not None and d.version is not None
    assert d.gate.cut_timestamp > old_cut and d.gate.current_data_cut == old_cut
    assert d.gate.snapshot_at is not None and t0 <= d.gate.snapshot_at <= time.time()
    manifest = read_manifest(store / d.version)
    assert manifest.gate == d.gate
    assert manifest.data.last_event_timestamp == old_cut  # the candidate: events up to it


def test_retrain_publishes_an_indexed_bundle_with_the_gate(
    setup: tuple[Path, str, pd.DataFrame],
) -> None:
    store, url, _ = setup
    before = store_mod.current_version(store)
    d = retrain(store, url, Config.from_dict(TINY), margin=1.0, final=False)
    assert d.published and d.version is not None
    assert store_mod.current_version(store) == d.version != before
    manifest = read_manifest(store / d.version)
    assert manifest.index is not None
    assert manifest.gate is not None and manifest.gate.decision == "published"
    assert manifest.gate.compared_with == before
    assert manifest.gate.users > 10
    line = json.loads((store / DECISIONS).read_text().splitlines()[-1])
    assert line["published"] and line["version"] == d.version


def test_warm_started_retrain_grows_the_item_table_and_publishes(
    setup: tuple[Path, str, pd.DataFrame],
) -> None:
    """Warm start from CURRENT (trained on 80 % of the events, fewer items than the log
    names): the candidate starts from CURRENT's weights, items in both keep their learned
    ID rows before training, new items get rows, and the gate publishes as before."""
    store, url, _ = setup
    current = load_bundle(store)
    cfg = Config.from_dict(TINY)
    items = [*current.item_ids[:5], "brand-new"]
    fresh = Config.from_dict(TINY).checked()
    model = type(current.model)(
        fresh.model,
        torch.zeros(len(items) + 1, current.model.text_emb.shape[1]),
        torch.ones(len(items) + 1, dtype=torch.bool),
        torch.zeros(len(items) + 1),
    )
    info = warm_start(model, items, WarmStart(current.model, current.item_ids))
    assert (info.items_kept, info.items_new) == (5, 1) and not info.skipped
    old, new = current.model.items.id_emb.weight, model.items.id_emb.weight
    assert torch.equal(new[1:6], old[1:6])
    d = retrain(store, url, cfg, margin=1.0, final=False)
    assert d.published and d.start == "warm"
    scratch = retrain(store, url, cfg, margin=1.0, final=False, warm=False)
    assert scratch.start.startswith("scratch")


def test_the_gate_refuses_a_worse_candidate_and_keeps_current(
    setup: tuple[Path, str, pd.DataFrame],
) -> None:
    store, url, _ = setup
    before = store_mod.current_version(store)
    versions = set(store_mod.list_versions(store))
    worse = Config.from_dict(
        {"model": {"fusion": "id", "dim": 8, "max_len": 5}, "train": {"epochs": 1, "lr": 1e-7}}
    )
    d = retrain(store, url, worse, margin=0.0)
    assert not d.published and d.gate is not None
    assert d.gate.candidate < d.gate.current
    assert store_mod.current_version(store) == before
    assert set(store_mod.list_versions(store)) == versions  # nothing was published
    line = json.loads((store / DECISIONS).read_text().splitlines()[-1])
    assert line["published"] is False and line["gate"]["decision"] == "refused"


def test_cli_errors_name_the_setting_without_secrets(tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    r = subprocess.run(
        [
            str(bin_dir / "fusionrec"), "events", "export",
            "--events", "mysql://shop:hunter2@db/x",
            "--store", str(tmp_path), "--out", str(tmp_path / "o"),
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2
    assert "hunter2" not in r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    r = subprocess.run(
        [
            str(bin_dir / "fusionrec"), "retrain", "--store", str(tmp_path),
            "--events", f"sqlite:///{tmp_path}/e.db", "--every", "soon",
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2
    assert "--every 'soon'" in r.stdout + r.stderr


def test_cli_export_writes_a_dataset_train_can_read(
    setup: tuple[Path, str, pd.DataFrame], tmp_path: Path
) -> None:
    store, url, inter = setup
    bin_dir = Path(sys.executable).parent
    r = subprocess.run(
        [str(bin_dir / "fusionrec"), "events", "export", "--events", url, "--store", str(store),
         "--out", str(tmp_path / "exported")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(inter)} interactions" in r.stdout
    assert len(load_dataset(tmp_path / "exported").interactions) == len(inter)


def test_server_stamped_events_export_and_retrain(
    setup: tuple[Path, str, pd.DataFrame], tmp_path: Path
) -> None:
    """Events stamped by the server on arrival have fractional seconds (issue 29: export →
    train and retrain exited 2 with 'cannot parse timestamp np.float64(…)')."""
    store, _, inter = setup
    stamped = inter.copy()
    stamped["timestamp"] = stamped["timestamp"].astype(float) + 0.4321
    url = f"sqlite:///{tmp_path}/stamped.db"
    log = log_from(stamped, url)
    export_dataset(log, tmp_path / "exported", items=read_items(store))
    back = load_dataset(tmp_path / "exported").interactions
    assert len(back) == len(inter)
    assert sorted(back["timestamp"].tolist()) == sorted(stamped["timestamp"].tolist())
    d = retrain(store, url, Config.from_dict(TINY), margin=1.0, final=False)
    assert d.published, d.reason
    log.close()


def test_retrain_keeps_currents_recipe_unless_the_file_changes_it(
    setup: tuple[Path, str, pd.DataFrame],
) -> None:
    """A retrain config is CURRENT's (so the warm start applies) with the file's keys on
    top; a default Config would differ from the tiny bundle in its architecture."""
    from fusionrec.retrain import _warm_start, retrain_config

    store = setup[0]
    current = load_bundle(store)
    have = current.manifest.config
    assert Config().model.dim != have.model.dim  # the defaults would train from scratch
    cfg = retrain_config(store, {"train": {"epochs": 1}})
    assert cfg.model == have.model and cfg.text == have.text and cfg.train.epochs == 1
    assert _warm_start(current, cfg, True)[1] == "warm"
    assert retrain_config(store, {"model": {"dim": have.model.dim * 2}}).model.dim == (
        have.model.dim * 2
    )


def test_a_warm_started_training_never_ends_below_its_starting_weights(
    setup: tuple[Path, str, pd.DataFrame], tmp_path: Path
) -> None:
    """The starting weights compete with the epochs: epochs that only wreck the model (a
    learning rate far too high) leave CURRENT's weights as the chosen ones, not the last
    or first epoch of the damage (every 2-epoch retrain of the MovieLens rehearsal was
    refused by the gate: its first epoch was kept, below where it started)."""
    from fusionrec.retrain import retrain_config
    from model_store.training.pipeline import train
    from model_store.training.trainer import validation_metrics, validation_set

    store, _, _ = setup
    current = load_bundle(store)
    cfg = retrain_config(store, {"train": {"epochs": 2, "lr": 0.5, "cold_epochs": 0}})
    early = load_dataset(Path(current.manifest.data.source))
    trained = train(early, cfg, init=WarmStart(current.model, current.item_ids))
    valid = validation_set(cfg, trained.prep)
    assert valid is not None
    start = validation_metrics(current.model, valid, trained.prep.n_items)["ndcg@10"]
    assert trained.result.best_epoch == 0, trained.result.history
    assert trained.result.valid_metrics["ndcg@10"] >= start - 1e-6
