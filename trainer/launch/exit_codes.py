"""Exit codes of ``scaleout train`` (launcher and workers alike); documented in the README.

    0   finished, or stopped by SIGTERM/SIGINT after writing a checkpoint
    2   bad input (config, data, schedule, checkpoint): one line names the field and the fix
    3   diverged: ``train.max_skipped`` consecutive steps had a non-finite loss or gradient
    74  a storage fault (EX_IOERR): writing a checkpoint or the export failed (disk full, I/O error,
        no permission); one line names the path, the cause and, for a checkpoint, the space it
        needs and what is free. The partial checkpoint is removed and the previous complete one
        is kept: free space and run the same command to resume (``trainer/state/storage.py``)
    75  preempted (SIGUSR1) after writing a checkpoint: requeue the job and it resumes
        (EX_TEMPFAIL in sysexits.h; scripts/slurm/train.sbatch requeues on it)
    128+N  the launcher got a second SIGINT/SIGTERM/SIGHUP (signal N) while the run was stopping and
        killed every process of the run: no checkpoint for the current step (130 for Ctrl-C twice)

How signals, a dead launcher and the run lock lead to these codes: trainer/launch/ (launcher.py, worker.py).
"""

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_DIVERGED = 3
EXIT_IOERR = 74
EXIT_REQUEUE = 75


class StorageError(Exception):
    """A write of the run's own files failed on some rank, and every rank knows it (they agreed in a
    collective), so every rank raises this with the same one-line message; ``run_worker`` exits
    ``EXIT_IOERR`` with it, said once (rank 0)."""

    exit_code = EXIT_IOERR
    same_on_every_rank = True
