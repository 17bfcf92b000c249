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

import os
import queue
import threading
import time

from trainer.config.hub import HubConfig


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
