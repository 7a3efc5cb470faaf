"""prepare-dataset's supervisor: the extraction runs in a child that is started again after a native crash.

The generic part is ``quadvault_dali._supervisor``. A run's progress is a video whose frames were all written
(a new manifest, ``_table.MANIFEST``) or a file newly found to crash the decoder (``_crashes``): the next run
leaves that one out, so each restart gets further. ``--overwrite`` removes the old table once the first frame is
written; from then on a restart must go on (without ``--overwrite``, which would extract every video again), as
the message of an interrupted rebuild tells a user to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .._supervisor import Supervisor
from ._crashes import DecoderCrashes
from ._table import DATASET_FILE, FRAMES_DIR, MANIFEST


#: Set for a supervised prepare-dataset child when the command as typed had ``--overwrite``
TYPED_OVERWRITE_ENV = "QUADVAULT_PREPARE_TYPED_OVERWRITE"


class PrepareSupervisor(Supervisor):
    """Runs ``quadvault prepare-dataset`` again in a child until it ends by itself."""

    what = "prepare-dataset"
    progress_unit = "extracting a video"

    def __init__(self, argv: Sequence[str], out_dir: Path, restarts: int, device: str = "auto") -> None:
        super().__init__(argv, restarts)
        self.out_dir = out_dir.expanduser()  # as prepare_dataset reads it: '~/ds' quoted past the shell
        self._crashed = False  # the user's command line runs first, as typed
        self._table_before: int | None = None  # dataset.parquet's mtime when the last run started
        self._table_written = False  # a run that crashed had written the table
        other = ", or try --device cpu" if device != "cpu" else ""
        self.crash_loop_hint = f"Run with -v to see why{other}; the same command goes on"

    def _table_stamp(self) -> int | None:
        try:
            return (self.out_dir / DATASET_FILE).stat().st_mtime_ns
        except OSError:
            return None

    def snapshot(self) -> set[str]:
        """The videos with all frames written (their manifests, with mtimes) and the known crashers."""
        self._table_before = self._table_stamp()  # a run that writes the table is all but finished
        done: set[str] = set()
        frames = self.out_dir / FRAMES_DIR
        try:
            for manifest in frames.glob(f"*/{MANIFEST}"):
                try:
                    done.add(f"{manifest.parent.name}@{manifest.stat().st_mtime_ns}")
                except OSError:
                    continue
        except OSError:
            pass
        done.update(f"crash:{video_id}" for video_id in DecoderCrashes(self.out_dir).known)
        return done

    def progressed(self, before: set[str]) -> bool:
        return bool(self.snapshot() - before)

    def after_crash(self, lived_s: float, progressed: bool) -> None:
        self._crashed = True
        stamp = self._table_stamp()
        # it died after writing the table (removing the frames no row names, printing): the restart goes on from
        # that table, which a plain restart refused as "a dataset already exists" and --overwrite extracted again
        self._table_written = self._table_written or (stamp is not None and stamp != self._table_before)

    def child_env(self) -> dict[str, str]:
        # a restarted child runs without --overwrite: its stop message must still speak of the command as typed
        return {TYPED_OVERWRITE_ENV: "1"} if "--overwrite" in self.argv else {}

    def restart_argv(self, argv: list[str]) -> list[str]:
        if self._table_written:
            argv = [a for a in argv if a != "--overwrite"]
            if "--merge" not in argv:  # right after the command's name: after a "--" it would be a path
                at = argv.index("prepare-dataset") + 1 if "prepare-dataset" in argv else len(argv)
                argv = [*argv[:at], "--merge", *argv[at:]]
        elif self._crashed and "--overwrite" in argv and not (self.out_dir / DATASET_FILE).exists():
            argv = [a for a in argv if a != "--overwrite"]  # the crashed run began the rebuild: go on with it
        return argv
