"""Push exported models to the Hugging Face Hub: ``scaleout push`` and the background push during training.

    scaleout push runs/tiny/export --repo-id me/tiny                      # an export folder, as is
    scaleout push runs/tiny --repo-id me/tiny --revision step-000100      # a run or checkpoint dir: exported first
    scaleout train configs/tiny.yaml --hub.repo_id me/tiny --hub.push_every 1

A push creates the repo if needed (``create_repo(exist_ok=True)``), the branch if it is not ``main``,
and uploads the folder in one commit (``upload_folder``). The endpoint is huggingface_hub's own
``HF_ENDPOINT``, read when a push starts; the token is huggingface_hub's too (``HF_TOKEN`` or the one
``hf auth login`` stored): it is never passed through our code, config, checkpoints or logs, and any
error text is scrubbed of it before it is printed.

During training (``hub.repo_id`` set) every ``hub.push_every``-th checkpoint's export is written to
``<out_dir>/exports/step_N`` (a collective, like the final export) and queued on rank 0 for a single
background thread that pushes folders one at a time in order, each to its own branch
(``step-000100``), the final export to ``main``. A failed push is retried ``hub.retries`` times with
doubling waits, then reported in one warning line; training never waits for a push, and the local
export stays. At the end the run waits at most ``hub.wait_timeout`` seconds for what is still queued
(a run stopped by a signal does not wait: its grace time is the checkpoint's).
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

from trainer.configlib import ConfigError, doc

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


def step_revision(cfg: HubConfig, step: int) -> str:
    return f"{cfg.revision_prefix}{step:06d}"


def step_export_dir(out_dir: str, step: int) -> str:
    """Beside the final ``<out_dir>/export`` (not inside it: pushing that folder must not carry them)."""
    return os.path.join(out_dir, "exports", f"step_{step:06d}")


def push_selected(cfg: HubConfig, checkpoint_every: int, step: int, total_steps: int) -> bool:
    """Whether the checkpoint just saved at ``step`` is pushed: every ``push_every``-th in step terms
    (so a resumed run selects the same steps); the last step goes to main with the final export."""
    every = cfg.push_every * checkpoint_every
    return bool(cfg.repo_id) and every > 0 and step % every == 0 and step < total_steps


def push_folder(folder: str, repo_id: str, *, revision: str = "main", private: bool = False,
                message: str | None = None) -> str:
    """Create the repo and branch if needed, upload ``folder`` in one commit; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)  # huggingface_hub read it at import
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision != "main":
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    info = api.upload_folder(folder_path=folder, repo_id=repo_id, revision=revision,
                             commit_message=message or f"Upload {os.path.basename(os.path.abspath(folder))}")
    return info.commit_url


def describe_error(e: BaseException) -> str:
    """One line about ``e`` with any token blanked (a library may echo what it sent)."""
    text = " ".join(str(e).split()) or type(e).__name__
    token = _token()
    return f"{type(e).__name__}: {text.replace(token, '<token>') if token else text}"


def _token() -> str | None:
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # no token is fine: public pushes fail with the server's own message
        return None


class HubPusher:
    """Pushes export folders from one background thread, in the order submitted; never raises.

        >>> pusher = HubPusher(cfg.hub)
        >>> pusher.submit("runs/tiny/exports/step_000100", "step-000100", "step 100")   # returns at once
        >>> pusher.close(timeout=600)                                                   # at the end of the run
    """

    def __init__(self, cfg: HubConfig, warn=None):
        self.cfg, self.pushed, self.failed = cfg, [], []
        self._warn = warn or (lambda line: print(line, flush=True))
        self._queue: queue.Queue = queue.Queue()
        self._submitted = self._done = 0  # each written by one thread only
        self._thread = threading.Thread(target=self._work, name="hub-push", daemon=True)  # never holds up exit
        self._thread.start()

    def submit(self, folder: str, revision: str, message: str) -> None:
        self._submitted += 1
        self._queue.put((folder, revision, message))

    @property
    def _pending(self) -> int:
        return self._submitted - self._done

    def close(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the queued pushes; True when none is left."""
        self._queue.put(None)
        if self._pending and timeout > 0:
            print(f"hub: waiting for {self._pending} push(es) to {self.cfg.repo_id} (at most {timeout:g} s, "
                  "hub.wait_timeout)", flush=True)
        self._thread.join(timeout)
        if self._thread.is_alive():
            waited = f"after {timeout:g} s (hub.wait_timeout)" if timeout > 0 else "(not waited for)"
            self._warn(f"warning: hub: {self._pending} push(es) to {self.cfg.repo_id} still unfinished {waited}; "
                       "the local exports stay; push them with scaleout push")
            return False
        return True

    def _work(self) -> None:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()  # upload bars would interleave with the training progress bar
        while (item := self._queue.get()) is not None:
            self._push(*item)
            self._done += 1

    def _push(self, folder: str, revision: str, message: str) -> None:
        repo, wait = self.cfg.repo_id, self.cfg.retry_wait
        for attempt in range(self.cfg.retries + 1):
            try:
                url = push_folder(folder, repo, revision=revision, private=self.cfg.private, message=message)
                self.pushed.append(revision)
                print(f"hub: pushed {folder} to {repo}@{revision}: {url}", flush=True)
                return
            except Exception as e:  # any failure: the run must go on
                error = describe_error(e)
            if attempt < self.cfg.retries:
                time.sleep(wait)
                wait *= 2
        self.failed.append(revision)
        self._warn(f"warning: hub: push of {folder} to {repo}@{revision} failed {self.cfg.retries + 1} times "
                   f"({error}); training goes on and the local export stays; retry with: scaleout push {folder} "
                   f"--repo-id {repo} --revision {revision}")


# -- scaleout push ------------------------------------------------------------------------------------------

def source_kind(path: str) -> str:
    """'export' (a transformers folder), 'checkpoint' (a checkpoint or a run dir); ConfigError otherwise."""
    from trainer import checkpoint

    if not os.path.isdir(path):
        raise ConfigError(f"'{path}' is not a directory; give an export folder (runs/NAME/export), a checkpoint "
                          "(runs/NAME/checkpoints/step_N) or a run dir (runs/NAME)")
    names = set(os.listdir(path))
    if "config.json" in names and any(n.endswith((".safetensors", ".bin", ".index.json")) for n in names):
        return "export"
    if "meta.json" in names and "COMPLETE" in names:
        return "checkpoint"
    if checkpoint.list_checkpoints(os.path.join(path, "checkpoints")):
        return "checkpoint"
    raise ConfigError(f"'{path}' is neither an export folder (config.json + *.safetensors) nor a complete "
                      "checkpoint (meta.json + COMPLETE) nor a run dir with checkpoints/; give one of those")


def _parser() -> argparse.ArgumentParser:
    from trainer.cli import OneLineParser  # the project's one-line usage errors

    p = OneLineParser(prog="scaleout push", allow_abbrev=False,
                       description="Upload an export folder to the Hugging Face Hub (a checkpoint or run dir is "
                                   "exported first). Token: HF_TOKEN or `hf auth login`; endpoint: HF_ENDPOINT.")
    p.add_argument("path", help="export folder, checkpoint dir (runs/NAME/checkpoints/step_N) or run dir")
    p.add_argument("--repo-id", required=True, help="USER/NAME; created if it does not exist")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--revision", default="main", help="branch to push to; created from main if needed")
    return p


def main(argv: list[str]) -> int:
    from trainer.exit_codes import EXIT_USAGE

    args = _parser().parse_args(argv)
    try:
        check_repo_id(args.repo_id, "--repo-id")
        check_revision(args.revision, "--revision")
        kind = source_kind(args.path)
    except ConfigError as e:
        sys.stderr.write(f"scaleout push: error: {e}\n")
        return EXIT_USAGE
    with tempfile.TemporaryDirectory(prefix="scaleout-push-") as tmp:
        folder = args.path
        if kind == "checkpoint":
            from trainer.export import export_checkpoint  # written beside this module (issue 10)

            try:
                weights = export_checkpoint(args.path, tmp, weights="auto")
            except (ConfigError, FileNotFoundError) as e:
                sys.stderr.write(f"scaleout push: error: {' '.join(str(e).split())}\n")
                return EXIT_USAGE
            print(f"exported {args.path} ({weights} weights)", flush=True)
            folder = tmp
        try:
            url = push_folder(folder, args.repo_id, revision=args.revision, private=args.private,
                              message=f"Upload {os.path.basename(os.path.abspath(args.path))} with scaleout")
        except Exception as e:
            sys.stderr.write(f"scaleout push: error: pushing to {args.repo_id}@{args.revision} failed "
                             f"({describe_error(e)})\n")
            return 1
    print(f"pushed {args.path} to {args.repo_id}@{args.revision}: {url}")
    return 0
