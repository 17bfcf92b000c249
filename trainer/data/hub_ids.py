"""Hub ids (``owner/name``) given as ``data.source``, ``model.config`` or ``init.from``: fetched from the
Hub the process is pointed at, and why one could not be, as one line naming the key, the id and the fix.

huggingface_hub and datasets read ``HF_ENDPOINT`` (huggingface.co, a mirror, or a local server such as the
tests' olah), ``HF_HOME`` and ``HF_HUB_OFFLINE`` when they are imported. Before a download the endpoint is
asked once (any HTTP answer will do): when it cannot be reached, a model comes from the local cache at
once, rather than after huggingface_hub's retries (~25 s, a warning per retry), and a streamed dataset,
which has no cache to fall back on, fails at once.

    >>> path = fetch("init.from: 'org/model' is not a local folder", "org/model", "model",
    ...              lambda local: snapshot_download("org/model", local_files_only=local), fix="give a folder")
"""

from __future__ import annotations

from trainer.config.base import ConfigError

SHOWN_FILES = 6  # a repo's files named in a "has no FILE" line


def is_repo_id(spec: str) -> bool:
    """Whether ``spec`` is spelled like a Hub repo id (``owner/name``, or a legacy ``name``)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(spec)
    except HFValidationError:
        return False
    return True


def offline_reason() -> str | None:
    """None when the Hub endpoint answers; else why the Hub is out of reach, in a few words."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if constants.HF_HUB_OFFLINE:
        return "the Hub is off (HF_HUB_OFFLINE is set)"
    try:  # the session huggingface_hub downloads with: its proxies, its TLS settings
        get_session().head(constants.ENDPOINT, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except Exception as e:  # refused, no such host, a timeout, a proxy that will not connect
        return f"the Hub at {constants.ENDPOINT} cannot be reached ({type(e).__name__}: {_first_line(e)})"
    return None


def fetch(what: str, spec: str, repo_type: str, download, *, fix: str, filename: str | None = None,
          cached: bool = True):
    """``download(local_files_only)``'s result: from the Hub when its endpoint answers, else from the local
    cache (``cached``; a streamed dataset has none). A failure is a one-line ``ConfigError``: ``what`` (e.g.
    "init.from: 'org/x' is not a local folder"), why, and ``fix`` (what to give instead)."""
    offline = offline_reason()
    try:
        if offline is not None and not cached:
            raise ConnectionError(offline)
        return download(offline is not None)
    except Exception as e:
        raise ConfigError(f"{what} and {_why(spec, repo_type, e, offline, filename, fix)}") from None


def _why(spec: str, repo_type: str, err: Exception, offline: str | None, filename: str | None, fix: str) -> str:
    """The reason and the fix of a failed ``fetch``."""
    from huggingface_hub import constants
    from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError

    local = f"hf download {spec}{' --repo-type dataset' if repo_type == 'dataset' else ''} --local-dir DIR"
    if offline is not None:  # a streamed dataset has no cache: only the Hub is missing
        where = offline if repo_type == "dataset" else f"not in the local cache, while {offline}"
        retry = "unset HF_HUB_OFFLINE" if constants.HF_HUB_OFFLINE else "check HF_ENDPOINT and the network"
        return f"{where}; {retry}, or use a local copy ({local})"
    if filename is not None and isinstance(err, RemoteEntryNotFoundError | RepositoryNotFoundError):
        files = _repo_files(spec, repo_type)  # olah answers a missing file 401, like a missing repo
        if files is not None:
            shown = ", ".join(files[:SHOWN_FILES]) + (", ..." if len(files) > SHOWN_FILES else "")
            return (f"its Hub {repo_type} repo has no {filename} (it holds: {shown or 'nothing'}); give a repo "
                    f"holding {filename} (save_pretrained writes it)")
    missing = RepositoryNotFoundError
    if repo_type == "dataset":
        from datasets.exceptions import DatasetNotFoundError

        missing = RepositoryNotFoundError | DatasetNotFoundError
    if isinstance(err, missing):
        return (f"the Hub at {constants.ENDPOINT} has no {repo_type} repo '{spec}' (or it is private or gated: "
                f"set HF_TOKEN); {fix}")
    return f"could not be opened from the Hub at {constants.ENDPOINT} ({type(err).__name__}: {_first_line(err)}); {fix}"


def _repo_files(spec: str, repo_type: str) -> list[str] | None:
    """The files of repo ``spec`` on the Hub, or None when it cannot be listed (it does not exist)."""
    from huggingface_hub import HfApi

    try:
        return sorted(HfApi().list_repo_files(spec, repo_type=repo_type))
    except Exception:
        return None


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else "")[:200]
