"""A real Hub on 127.0.0.1 for the download tests: ``olah`` (PyPI; ../shared/DESIGN.md "A local Hub for
tests") serving ordinary git repos under ``<mirrors>/{models,datasets}/<org>/<name>``, offline (it never
asks huggingface.co). Clients reach it the way a user points them at any Hub: ``HF_ENDPOINT``, with a
fresh ``HF_HOME`` per test so nothing comes from an earlier download.

    >>> hub = OlahHub(tmp_path)
    >>> hub.add("datasets", "org/docs", {"data/train-0.jsonl": '{"text": "a"}\\n'})
    >>> hub.add("models", "org/tiny", "path/to/save_pretrained/folder")
    >>> with hub:
    ...     subprocess.run([...], env=hub.env(tmp_path / "hf_home"))   # a process started against it
    ...     hub.point(monkeypatch, tmp_path / "hf_home")                # this process, as if started so

Gaps of olah 0.5.4 met here (uploads use tests/hub_server.py, which has a write API):
- a dataset repo without README.md fails (olah answers HEAD of a missing file 401 instead of 404, and
  ``datasets`` asks for the card first): ``add`` writes one when there is none;
- a missing file answers 401, as a missing repo does, so huggingface_hub raises RepositoryNotFoundError
  for both (``trainer/data/hub_ids.py`` lists the repo's files to tell them apart);
- ``/api/<type>/<repo>`` without a revision answers 401 offline (``repo_info`` needs ``revision=``);
- HTTP Range is ignored, so parquet over ~64 KB does not stream: the datasets here are jsonl;
- no write API, and ``whoami`` times out.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

READY_S = 60  # olah starts in ~3 s on an idle machine; a loaded CI machine gets more
GIT = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
       "GIT_COMMITTER_EMAIL": "t@example.com", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
CARD = "---\nlicense: mit\n---\n# {repo}\n\nA test repo served by olah.\n"
# The modules that read the Hub's environment variables at import (HF_ENDPOINT, HF_HOME, HF_HUB_OFFLINE, ...).
IMPORT_TIME = ("huggingface_hub.constants", "datasets.config")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def commit_folder(folder) -> None:
    """Make ``folder`` a git repository whose ``main`` holds every file in it, as olah serves it."""
    env = dict(os.environ, **GIT)
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "files"]):
        subprocess.run(["git", *cmd], cwd=folder, env=env, check=True, capture_output=True)


class OlahHub:
    """An olah server on a free port of 127.0.0.1 over the repos ``add`` makes (see the module docstring)."""

    def __init__(self, root):
        self.root = os.fspath(root)
        self.mirrors = os.path.join(self.root, "mirrors")
        self.log_path = os.path.join(self.root, "olah.log")
        self.port = None
        self.proc = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, kind: str, repo_id: str, files) -> str:
        """A repo ``repo_id`` of ``kind`` (models or datasets): a folder's files, or {path: text}; committed."""
        folder = os.path.join(self.mirrors, kind, *repo_id.split("/"))
        if isinstance(files, dict):
            for name, text in files.items():
                os.makedirs(os.path.dirname(os.path.join(folder, name)), exist_ok=True)
                with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
                    f.write(text)
        else:
            shutil.copytree(files, folder)
        if kind == "datasets" and not os.path.exists(os.path.join(folder, "README.md")):
            with open(os.path.join(folder, "README.md"), "w") as f:  # olah 0.5.4 fails a dataset without one
                f.write(CARD.format(repo=repo_id))
        commit_folder(folder)
        return folder

    def start(self) -> OlahHub:
        if importlib.util.find_spec("olah") is None:
            raise RuntimeError("olah is not installed; run scripts/setup.sh (it installs olah, pinned in "
                               "constraints.txt)")
        self.port = free_port()
        config = os.path.join(self.root, "olah.toml")
        with open(config, "w") as f:  # mirrors-path is read only from the file
            f.write(f'[basic]\nhost = "127.0.0.1"\nport = {self.port}\nrepos-path = "{self.root}/cache"\n'
                    f'mirrors-path = ["{self.mirrors}"]\n\n[accessibility]\noffline = true\n')
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "olah.server", "--config", config, "--log-path",
                                          os.path.join(self.root, "logs")], cwd=self.root, stdout=log,
                                         stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        deadline = time.monotonic() + READY_S
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"olah did not answer on {self.url} within {READY_S} s:\n{self.log()[-3000:]}")
            time.sleep(0.1)
        return self

    def _answers(self) -> bool:
        try:
            urllib.request.urlopen(self.url + "/", timeout=2)
        except urllib.error.HTTPError:
            return True  # any HTTP answer: it is up (olah's / answers 500)
        except OSError:
            return False
        return True

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)

    def __enter__(self) -> OlahHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log(self) -> str:
        """What olah printed: its startup and one access line per request."""
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def env(self, hf_home, base: dict | None = None) -> dict:
        """The environment of a process that uses this Hub, with a fresh ``hf_home`` (HF_HOME)."""
        env = dict(os.environ if base is None else base, HF_ENDPOINT=self.url, HF_HOME=os.fspath(hf_home),
                   HF_HUB_DISABLE_XET="1")  # olah speaks plain HTTP downloads; its Xet pass-through is off
        for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_CACHE", "HF_DATASETS_CACHE", "HF_TOKEN"):
            env.pop(key, None)
        return env

    def point(self, monkeypatch, hf_home) -> None:
        """This process, as if started with ``env(hf_home)``: the environment, and the constants that
        huggingface_hub and datasets read from it at import, read again (restored by ``monkeypatch``)."""
        for key, value in self.env(hf_home, {}).items():
            monkeypatch.setenv(key, value)
        for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_CACHE", "HF_DATASETS_CACHE", "HF_TOKEN"):
            monkeypatch.delenv(key, raising=False)
        for name in IMPORT_TIME:  # in order: datasets.config reads huggingface_hub.constants
            reread_constants(monkeypatch, name)


def reread_constants(monkeypatch, name: str) -> None:
    """Module ``name``'s upper-case constants as a fresh import would compute them from today's
    environment, set on the imported module (other modules read them as ``module.NAME``)."""
    module = importlib.import_module(name)
    spec = importlib.util.find_spec(name)
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)
    for key, value in vars(fresh).items():
        if key.isupper() and getattr(module, key, None) != value:
            monkeypatch.setattr(module, key, value)
