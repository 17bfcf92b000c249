"""``hub.*``: where and how often a run pushes its exports (the pusher: ``trainer/hf/hub.py``),
and the Hub's rules for repo ids and branch names."""

from __future__ import annotations

import re
from dataclasses import dataclass

from trainer.config.base import ConfigError, doc

# USER/NAME as the Hub accepts it: letters, digits, '-', '_', '.'; no '--' or '..'; not ending in .git.
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9_.-]{1,96}$")
_BRANCH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,199}$")


@dataclass
class HubConfig:
    repo_id: str | None = doc("push exports to this Hub repo (USER/NAME) during and after training; null: no push",
                              None)
    push_every: int = doc("push the export of every Nth checkpoint (steps that are multiples of N x "
                          "checkpoint.every), each to its own branch; 0: only the final model (to main)", 1)
    private: bool = doc("create the repo private (an existing repo keeps its visibility)", False)
    revision_prefix: str = doc("branch name of a step's push: prefix + 6-digit step (step-000100)", "step-")
    retries: int = doc("retries of a failed push before a one-line warning (training goes on)", 3)
    retry_wait: float = doc("seconds before the first retry; doubles at each retry", 10.0)
    wait_timeout: float = doc("seconds the end of the run waits for pushes still in flight (a run stopped by a "
                              "signal does not wait)", 1800.0)

    def validate(self) -> None:
        if self.repo_id is not None:
            check_repo_id(self.repo_id, "hub.repo_id")
        check_revision(self.revision_prefix + "000000", "hub.revision_prefix")
        if self.push_every < 0:
            raise ConfigError(f"hub.push_every must be >= 0 (0: only the final model), got {self.push_every}")
        if self.retries < 0:
            raise ConfigError(f"hub.retries must be >= 0, got {self.retries}")
        if self.retry_wait < 0 or self.wait_timeout <= 0:
            raise ConfigError(f"hub.retry_wait must be >= 0 and hub.wait_timeout > 0, got {self.retry_wait}, "
                              f"{self.wait_timeout}")


def check_repo_id(repo_id: str, key: str) -> None:
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id) or "--" in repo_id or ".." in repo_id \
            or repo_id.endswith(".git"):
        raise ConfigError(f"{key}: {repo_id!r} is not a Hub repo id; write USER/NAME (letters, digits, '-', '_', "
                          "'.'), e.g. my-user/tiny-llm")


def check_revision(revision: str, key: str) -> None:
    if not _BRANCH.match(revision) or ".." in revision or revision.endswith((".lock", "/", ".")):
        raise ConfigError(f"{key}: {revision!r} does not make a valid branch name; use letters, digits, '-', "
                          "'_', '.', '/', e.g. step-")
