"""Finding the Postgres server binaries: which installed version the local stack runs."""

from __future__ import annotations

from pathlib import Path

from qmsflow.stack.postgres import SERVER_PROGRAMS, find_bin_dir, order_bin_dirs

DEBIAN = Path("/usr/lib/postgresql")


def _install(root: Path, version: str, programs: tuple[str, ...] = SERVER_PROGRAMS) -> Path:
    folder = root / version / "bin"
    folder.mkdir(parents=True)
    for program in programs:
        path = folder / program
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    return folder


class TestOrderBinDirs:
    def test_newest_version_first(self) -> None:
        """Without a cluster yet, the newest major version wins, compared as numbers."""
        folders = [DEBIAN / "9.6" / "bin", DEBIAN / "16" / "bin", DEBIAN / "15" / "bin"]

        assert order_bin_dirs(folders, None, None) == [
            DEBIAN / "16" / "bin",
            DEBIAN / "15" / "bin",
            DEBIAN / "9.6" / "bin",
        ]

    def test_cluster_version_first(self) -> None:
        """An initialised cluster pins its own major version, even when a newer one exists."""
        folders = [DEBIAN / "16" / "bin", DEBIAN / "15" / "bin"]

        assert order_bin_dirs(folders, "15", None)[0] == DEBIAN / "15" / "bin"

    def test_path_last(self) -> None:
        """A pg_ctl found on PATH is the last resort, after every versioned folder."""
        on_path = Path("/usr/bin")

        ordered = order_bin_dirs([DEBIAN / "15" / "bin"], None, on_path)

        assert ordered == [DEBIAN / "15" / "bin", on_path]

    def test_path_only(self) -> None:
        """Systems without versioned folders use the PATH's binaries."""
        assert order_bin_dirs([], None, Path("/opt/pg/bin")) == [Path("/opt/pg/bin")]


class TestFindBinDir:
    def test_skips_client_only_folders(self, tmp_path: Path) -> None:
        """A folder with only client programs (no initdb, postgres) is passed over."""
        _install(tmp_path, "16", programs=("pg_ctl",))
        complete = _install(tmp_path, "15")

        assert find_bin_dir(None, root=tmp_path, which=lambda _: None) == complete

    def test_none_when_nothing_installed(self, tmp_path: Path) -> None:
        """No server anywhere is None, so the caller can install one or explain."""
        assert find_bin_dir(None, root=tmp_path / "absent", which=lambda _: None) is None

    def test_falls_back_to_path(self, tmp_path: Path) -> None:
        """With no versioned folder, the folder of the pg_ctl on PATH is used."""
        folder = _install(tmp_path, "any")

        found = find_bin_dir(None, root=tmp_path / "absent", which=lambda _: str(folder / "pg_ctl"))

        assert found == folder
