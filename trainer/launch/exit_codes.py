"""Exit codes of ``scaleout train`` (launcher and workers alike); documented in the README.

    0   finished, or stopped by SIGTERM/SIGINT after writing a checkpoint
    2   bad input (config, data, schedule, checkpoint): one line names the field and the fix
    3   diverged: ``train.max_skipped`` consecutive steps had a non-finite loss or gradient
    75  preempted (SIGUSR1) after writing a checkpoint: requeue the job and it resumes
        (EX_TEMPFAIL in sysexits.h; scripts/slurm/train.sbatch requeues on it)
    128+N  the launcher got a second SIGINT/SIGTERM/SIGHUP (signal N) while the run was stopping and
        killed every process of the run: no checkpoint for the current step (130 for Ctrl-C twice)

How signals, a dead launcher and the run lock lead to these codes: trainer/launch/ (launcher.py, worker.py).
"""

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_DIVERGED = 3
EXIT_REQUEUE = 75
