"""A local stand-in for the Hugging Face Hub: a real HTTP server on 127.0.0.1 (stdlib, one thread per
request) implementing what ``huggingface_hub`` 2.4 calls for ``create_repo``, ``create_branch``,
``repo_info`` and ``upload_folder`` with the legacy LFS path:

    POST /api/repos/create                              create a repo (409 if it exists)
    POST /api/validate-yaml                             a README.md's metadata (YAML front matter)
    POST /api/models/{repo}/branch/{branch}             create a branch from main (409 if it exists)
    GET  /api/models/{repo}[/revision/{rev}]            repo info (sha, private, siblings)
    POST /api/models/{repo}/preupload/{rev}             upload mode per file: "lfs" (binary) or "regular"
    POST /{repo}.git/info/lfs/objects/batch             LFS batch, basic transfer: a PUT URL on this server
    PUT  /lfs-objects/{oid}                             the LFS object itself (sha256-checked)
    POST /api/models/{repo}/commit/{rev}                NDJSON: header, file (base64), lfsFile lines

With ``hf_xet`` installed huggingface_hub uploads binary files through Xet, which this server does not
speak: run clients with ``HF_HUB_DISABLE_XET=1`` (or ``huggingface_hub.constants.HF_HUB_DISABLE_XET =
True`` in-process). Every request is recorded (method, path, headers in lower case, body, status, arrival time on
``time.perf_counter``: comparable with step times taken in the same process); committed files
are kept per (repo, revision); ``fail(n, status)`` answers the next n requests with an error,
``fail_all`` every request, ``commit_delay`` delays commit responses.

    >>> with HubServer() as hub:
    ...     HfApi(endpoint=hub.url).upload_folder(folder_path="out", repo_id="me/model")
    ...     hub.files("me/model", "main")   # {"config.json": b"...", ...}
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import yaml

_REPO = r"(?P<repo>[^/]+/[^/]+?)"
ROUTES = [  # (method, pattern, handler name); the first match wins
    ("POST", r"/api/repos/create", "create_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("POST", rf"/api/models/{_REPO}/branch/(?P<rev>.+)", "create_branch"),
    ("POST", rf"/api/models/{_REPO}/preupload/(?P<rev>.+)", "preupload"),
    ("POST", rf"/api/models/{_REPO}/commit/(?P<rev>.+)", "commit"),
    ("GET", rf"/api/models/{_REPO}/revision/(?P<rev>.+)", "repo_info"),
    ("GET", rf"/api/models/{_REPO}", "repo_info"),
    ("POST", rf"/{_REPO}\.git/info/lfs/objects/batch", "lfs_batch"),
    ("PUT", r"/lfs-objects/(?P<oid>[0-9a-f]{64})", "lfs_put"),
]
_BINARY = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5", ".onnx")


class HubServer:
    """The server and its state; ``start()``/``stop()`` or a ``with`` block."""

    def __init__(self):
        self.repos: dict[str, dict] = {}  # repo id -> {"private": bool, "branches": {name: {path: bytes}}}
        self.commits: list[dict] = []  # in arrival order: repo, revision, files, summary, time
        self.lfs: dict[str, bytes] = {}  # oid -> content
        self.requests: list[dict] = []
        self.commit_delay = 0.0
        self.fail_all: int | None = None  # a status code for every request
        self._fail_next: list[int] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    # -- control -------------------------------------------------------------------------------------
    def start(self) -> HubServer:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True, name="hub-server").start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def fail(self, n: int, status: int = 500) -> None:
        """Answer the next ``n`` requests (whatever they are) with ``status``."""
        with self._lock:
            self._fail_next += [status] * n

    def files(self, repo: str, revision: str = "main") -> dict[str, bytes]:
        return dict(self.repos[repo]["branches"][revision])

    # -- request handling ----------------------------------------------------------------------------
    def handle(self, method: str, path: str, headers: dict, body: bytes) -> tuple[int, dict | None]:
        record = {"method": method, "path": path, "headers": headers, "time": time.perf_counter(),
                  "body": body if len(body) < 65536 else body[:65536]}
        with self._lock:
            self.requests.append(record)
            status = self._fail_next.pop(0) if self._fail_next else self.fail_all
        if status is None:
            for m, pattern, name in ROUTES:
                match = re.fullmatch(pattern, path)
                if m == method and match:
                    args = {k: unquote(v) for k, v in match.groupdict().items()}
                    status, reply = getattr(self, "_" + name)(body=body, **args)
                    break
            else:
                status, reply = 404, {"error": f"not implemented by the stand-in: {method} {path}"}
        else:
            reply = {"error": f"injected failure {status}"}
        record["status"] = status
        return status, reply

    def _repo(self, repo: str, rev: str | None = None):
        if repo not in self.repos:
            return None, (404, {"error": "Repository not found"})
        if rev is not None and rev not in self.repos[repo]["branches"]:
            return None, (404, {"error": f"Invalid rev id: {rev}"})
        return self.repos[repo], None

    def _create_repo(self, body):
        req = json.loads(body)
        repo = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
        with self._lock:
            if repo in self.repos:
                return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo}"}
            private = req.get("visibility", "private" if req.get("private") else "public") == "private"
            self.repos[repo] = {"private": private, "type": req.get("type", "model"),
                                "branches": {"main": {}}}
        return 200, {"url": f"{self.url}/{repo}", "name": repo, "id": repo}

    def _validate_yaml(self, body):
        content = json.loads(body)["content"]
        if content.startswith("---"):
            try:
                yaml.safe_load(content.split("---")[1])
            except yaml.YAMLError as e:
                return 400, {"errors": [{"message": str(e)}]}
        return 200, {"errors": [], "warnings": []}

    def _create_branch(self, body, repo, rev):
        info, err = self._repo(repo)
        if err:
            return err
        start = (json.loads(body) if body else {}).get("startingPoint") or "main"
        with self._lock:
            if rev in info["branches"]:
                return 409, {"error": f"Reference refs/heads/{rev} already exists"}
            info["branches"][rev] = dict(info["branches"][start])
        return 200, {}

    def _repo_info(self, body, repo, rev="main"):
        info, err = self._repo(repo, rev)
        if err:
            return err
        files = info["branches"][rev]
        return 200, {"id": repo, "modelId": repo, "private": info["private"], "sha": _sha(files),
                     "siblings": [{"rfilename": p} for p in sorted(files)]}

    def _preupload(self, body, repo, rev):
        _, err = self._repo(repo, rev)
        if err:
            return err
        out = []
        for f in json.loads(body)["files"]:
            sample = base64.b64decode(f["sample"])
            binary = f["path"].endswith(_BINARY) or b"\0" in sample or f["size"] >= 10 * 2**20
            out.append({"path": f["path"], "uploadMode": "lfs" if binary else "regular", "shouldIgnore": False,
                        "oid": None})
        return 200, {"files": out}

    def _lfs_batch(self, body, repo):
        _, err = self._repo(repo)
        if err:
            return err
        req, objects = json.loads(body), []
        for o in req["objects"]:
            obj = {"oid": o["oid"], "size": o["size"]}
            if o["oid"] not in self.lfs:  # already stored: no action, the client skips the upload
                obj["actions"] = {"upload": {"href": f"{self.url}/lfs-objects/{o['oid']}"}}
            objects.append(obj)
        return 200, {"transfer": "basic", "objects": objects}

    def _lfs_put(self, body, oid):
        if hashlib.sha256(body).hexdigest() != oid:
            return 400, {"error": "sha256 mismatch"}
        with self._lock:
            self.lfs[oid] = body
        return 200, {}

    def _commit(self, body, repo, rev):
        info, err = self._repo(repo, rev)
        if err:
            return err
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header, files = lines[0]["value"], {}
        for line in lines[1:]:
            v = line["value"]
            if line["key"] == "file":
                files[v["path"]] = base64.b64decode(v["content"])
            elif line["key"] == "lfsFile":
                if v["oid"] not in self.lfs:
                    return 400, {"error": f"LFS object {v['oid']} was never uploaded"}
                files[v["path"]] = self.lfs[v["oid"]]
            else:
                return 400, {"error": f"the stand-in does not implement {line['key']!r} operations"}
        time.sleep(self.commit_delay)
        with self._lock:
            info["branches"][rev].update(files)
            oid = _sha(info["branches"][rev])
            self.commits.append({"repo": repo, "revision": rev, "files": files, "summary": header["summary"],
                                 "oid": oid, "time": time.perf_counter()})
        return 200, {"commitUrl": f"{self.url}/{repo}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}


def _sha(files: dict[str, bytes]) -> str:
    h = hashlib.sha1()
    for path in sorted(files):
        h.update(path.encode() + b"\0" + hashlib.sha1(files[path]).digest())
    return h.hexdigest()


def _make_handler(server: HubServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects

        def _serve(self):
            body = self._read_body()
            path = urlsplit(self.path).path
            status, reply = server.handle(self.command, path, {k.lower(): v for k, v in self.headers.items()}, body)
            data = json.dumps(reply if reply is not None else {}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":  # httpx streams file objects
                parts = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    chunk = self.rfile.read(size + 2)[:size]  # each chunk ends with CRLF
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                            pass
                        return b"".join(parts)
                    parts.append(chunk)
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        do_GET = do_POST = do_PUT = do_HEAD = _serve

        def log_message(self, *args):  # the record in server.requests is the log
            pass

    return Handler
