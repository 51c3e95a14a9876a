"""The privacy room on its own: erasure order, tombstones (file and shared set), and the
forgotten users handed to training."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest

from model_store.errors import DependencyError
from model_store.privacy import FileTombstones, Forgotten, Privacy, RedisTombstones, user_hash
from model_store.privacy.keys import user_key
from model_store.privacy.tombstones import TOMBSTONES_KEY, read_forgotten, tombstone_path


class Recording:
    """An erasable store that records what it was asked to erase, in a shared journal."""

    def __init__(self, name: str, journal: list[str], *, fails: bool = False) -> None:
        self.name, self.journal, self.fails = name, journal, fails

    async def erase(self, user_key: str) -> None:
        if self.fails:
            raise DependencyError(f"{self.name} is down", dependency="redis")
        self.journal.append(f"{self.name}:{user_key}")


class Sets:
    """A shared set store in memory; ``up`` False answers as an unreachable Redis does."""

    def __init__(self) -> None:
        self.sets: dict[str, set[str]] = {}
        self.up = True

    async def set_add(self, key: str, member: str) -> bool:
        if self.up:
            self.sets.setdefault(key, set()).add(member)
        return self.up

    async def set_contains(self, key: str, member: str) -> bool | None:
        return member in self.sets.get(key, set()) if self.up else None

    def set_members(self, key: str) -> set[str]:
        return set(self.sets.get(key, set()))


def test_forget_records_the_tombstone_before_erasing_every_store(tmp_path: Path) -> None:
    journal: list[str] = []
    tombstones = FileTombstones(tmp_path)
    privacy = Privacy(
        key=b"k" * 32,
        tombstones=tombstones,
        stores=[Recording("cache", journal), Recording("history", journal)],
    )
    uhash = asyncio.run(privacy.forget("alice"))
    assert uhash == privacy.user_hash("alice") == user_hash("alice", b"k" * 32)
    assert "alice" not in uhash
    assert journal == [f"cache:{uhash}", f"history:{uhash}"]
    assert asyncio.run(privacy.forgotten(uhash)) and not asyncio.run(privacy.forgotten("x" * 64))
    assert stat.S_IMODE(tombstone_path(tmp_path).stat().st_mode) == 0o600
    assert uhash in FileTombstones(tmp_path)._known  # read back by a new process


def test_a_failing_store_fails_the_forget_after_the_tombstone(tmp_path: Path) -> None:
    journal: list[str] = []
    privacy = Privacy(
        key=b"k" * 32,
        tombstones=FileTombstones(tmp_path),
        stores=[Recording("cache", journal, fails=True), Recording("history", journal)],
    )
    with pytest.raises(DependencyError, match="cache is down"):
        asyncio.run(privacy.forget("bob"))
    assert journal == []  # nothing after the failing store; the client retries
    assert asyncio.run(privacy.forgotten(privacy.user_hash("bob")))  # but it is recorded


def test_shared_tombstones_fail_closed_and_refuse_to_record_while_down() -> None:
    sets = Sets()
    journal: list[str] = []
    privacy = Privacy(
        key=b"k" * 32, tombstones=RedisTombstones(sets), stores=[Recording("h", journal)]
    )
    uhash = asyncio.run(privacy.forget("carol"))
    assert sets.sets[TOMBSTONES_KEY] == {uhash}
    sets.up = False
    assert asyncio.run(privacy.forgotten(uhash))  # remembered in process
    assert asyncio.run(privacy.forgotten(privacy.user_hash("dave")))  # unknown: fail closed
    with pytest.raises(DependencyError, match="record the erasure"):
        asyncio.run(privacy.forget("erin"))
    assert journal == [f"h:{uhash}"]  # nothing erased without the tombstone
    sets.up = True
    assert not asyncio.run(privacy.forgotten(privacy.user_hash("dave")))


def test_training_is_handed_the_forgotten_users_of_both_records(tmp_path: Path) -> None:
    sets = Sets()
    asyncio.run(FileTombstones(tmp_path).add("a" * 64))
    asyncio.run(RedisTombstones(sets).add("b" * 64))
    assert read_forgotten(tmp_path) == {"a" * 64}
    assert read_forgotten(tmp_path, sets) == {"a" * 64, "b" * 64}
    forgotten = Forgotten.read(tmp_path, shared=sets)
    assert forgotten.hashes == {"a" * 64, "b" * 64} and forgotten.key == user_key(tmp_path)
    configured = Forgotten.read(tmp_path, secret="a-configured-secret-0123", shared=sets)
    assert configured.key == b"a-configured-secret-0123"
    assert Forgotten.read(tmp_path / "empty").hashes == frozenset()
