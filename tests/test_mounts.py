"""Folders compared where they are on their disk: bind mounts (Docker volumes) and second mounts seen through."""

from __future__ import annotations

import pytest

import quadvault_dali._mounts as mounts

TABLE = [("254:0", "/", "/"), ("0:50", "/", "/media/DRONE"), ("254:0", "/srv/footage/results", "/out"),
         ("254:0", "/srv/my footage", "/data"), ("0:50", "/DCIM", "/media/DRONE/DCIM")]


def test_a_path_is_known_by_its_filesystem_and_its_place_there() -> None:
    assert mounts.disk_location("/srv/footage/a.mp4", TABLE) == ("254:0", "/srv/footage/a.mp4")
    assert mounts.disk_location("/out", TABLE) == ("254:0", "/srv/footage/results")
    assert mounts.disk_location("/out/videos/x", TABLE) == ("254:0", "/srv/footage/results/videos/x")
    assert mounts.disk_location("/outside", TABLE) == ("254:0", "/outside")  # not /out's: a longer name
    assert mounts.disk_location("/media/DRONE/DCIM/100", TABLE) == ("0:50", "/DCIM/100")
    assert mounts.disk_location("/data/2023", TABLE) == ("254:0", "/srv/my footage/2023")
    assert mounts.disk_location("/x", []) is None


def test_within_on_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mounts, "_mounts", lambda: TABLE)
    assert mounts.within_on_disk("/out", "/srv/footage")  # the Docker volume of a library folder
    assert mounts.within_on_disk("/srv/my footage/2023", "/data")
    assert not mounts.within_on_disk("/srv/footage2", "/srv/footage")
    assert not mounts.within_on_disk("/media/DRONE/x", "/srv")  # another disk
    monkeypatch.setattr(mounts, "_mounts", lambda: [])
    assert not mounts.within_on_disk("/out", "/srv/footage")  # no mount table: nothing claimed


def test_the_mount_table_unescapes_spaces(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    table = Path(str(tmp_path)) / "mountinfo"
    table.write_text("22 27 0:21 / / rw - ext4 /dev/vda rw\n"
                     "63 43 254:0 /srv/my\\040footage /data rw,relatime - ext4 /dev/vda rw\n")
    monkeypatch.setattr(mounts, "MOUNTINFO", table)
    assert mounts._mounts() == [("0:21", "/", "/"), ("254:0", "/srv/my footage", "/data")]
