"""A local stand-in for the Hugging Face Hub, for offline runs and tests: NOT the Hub.

A real HTTP server on 127.0.0.1, in a thread of the calling process, holding repositories in
memory (gone when it stops).

It speaks the part of the Hub's HTTP API that ``huggingface_hub`` (2.x) uses to create a
dataset repository and commit to it, and that ``datasets.load_dataset("owner/name")`` uses to
read it back, so both run unchanged against it with ``HF_ENDPOINT`` (or ``HfApi(endpoint=)``)
pointed at :attr:`FakeHub.url`::

    POST /api/repos/create                               create_repo (409 when it exists)
    POST /api/validate-yaml                              create_commit checks README.md's YAML
    POST /api/{type}s/{id}/branch/{branch}               create_branch (409 when it exists)
    GET  /api/{type}s/{id}[/revision/{rev}]              repo_info / dataset_info (siblings, sha, private)
    GET  /api/{type}s/{id}/tree/{rev}[/{path}]           list_repo_tree (?recursive=, ?expand=)
    POST /api/{type}s/{id}/paths-info/{rev}              get_paths_info (form: paths=..., expand=...)
    POST /api/{type}s/{id}/preupload/{rev}               upload mode per file: "regular" or "lfs",
                                                         and the remote oid of an unchanged file
    POST /{prefix}{id}.git/info/lfs/objects/batch        the git-LFS batch API ("basic" transfer)
    PUT  /lfs-storage/{sha256}                           the upload URL the batch API hands out
                                                         (no Authorization, like a presigned URL)
    POST /lfs-verify                                     the batch API's verify action
    POST /api/{type}s/{id}/commit/{rev}                  the NDJSON commit: header, file (inline
                                                         base64), lfsFile (by sha256), deletedFile,
                                                         deletedFolder
    GET|HEAD /{prefix}{id}/resolve/{rev}/{path}          file download (ETag, X-Repo-Commit,
                                                         X-Linked-Etag/-Size for LFS files, Range)

``{type}`` is ``model``, ``dataset`` or ``space``; ``{prefix}`` is ``datasets/``, ``spaces/`` or
nothing. A file is stored through LFS when the repo's ``.gitattributes`` (written at creation,
as the Hub does) marks its extension, when its first 512 bytes hold a NUL byte, or when it is
over 10 MiB; otherwise inline. It speaks no Xet: the client must not use it
(``HF_HUB_DISABLE_XET=1`` before ``huggingface_hub`` is imported, or
``huggingface_hub.constants.HF_HUB_DISABLE_XET = True``).

Authorization: any request that carries an ``Authorization`` header must carry
``Bearer <token>`` (else 401, as the Hub answers a bad token); writes need it; a private
repo reads as missing (401 ``RepoNotFound``) without it. Every request is recorded in
:attr:`FakeHub.requests` (method, path, query, Authorization header, JSON body when there is
one) and every commit in the repo's history, so tests can check what was sent and committed.
Repos, commits and LFS objects live in memory; a repo created without an organization goes to
the user ``me``. Unknown routes answer 404 and are recorded (``huggingface_hub`` asks for
``/api/agent-harnesses``, an optional registry, and goes on without it).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import http.server
import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import parse_qs, unquote, urlsplit

GITATTRIBUTES = b"".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n".encode() for p in (
    "*.parquet", "*.arrow", "*.bin", "*.safetensors", "*.png", "*.jpg", "*.jpeg", "*.webp",
    "*.tar", "*.gz", "*.zip", "*.npy", "*.pt"))
LFS_MIN_SIZE = 10 << 20
PREFIXES = {"dataset": "datasets/", "space": "spaces/", "model": ""}


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class Blob:
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pointer(self) -> bytes:
        return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\n"
                f"size {len(self.data)}\n").encode()

    @property
    def oid(self) -> str:  # the git blob id: of the pointer file for LFS files, as on the Hub
        return git_oid(self.pointer if self.lfs else self.data)

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.oid


@dataclass
class Commit:
    oid: str
    parent: str | None
    summary: str
    date: str
    files: dict[str, Blob]
    operations: list[dict] = field(default_factory=list)  # the NDJSON lines after the header


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit oid

    def commit(self, revision: str) -> Commit | None:
        oid = self.branches.get(revision, revision)
        return self.commits.get(oid)

    def history(self, branch: str = "main") -> list[Commit]:
        """Commits of ``branch``, oldest first."""
        out, oid = [], self.branches.get(branch)
        while oid is not None:
            out.append(self.commits[oid])
            oid = self.commits[oid].parent
        return out[::-1]


class _Error(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class FakeHub:
    """``with FakeHub(token) as hub: ...`` serves on ``hub.url`` until the block ends (or :meth:`stop`)."""

    def __init__(self, token: str):
        self.token = token
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.lfs_uploads: list[str] = []  # sha256 of every PUT, in order
        self.requests: list[dict] = []
        self._lock = threading.RLock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"

    def start(self) -> FakeHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the port: later connections are refused."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def repo(self, repo_id: str, repo_type: str = "dataset") -> Repo:
        return self.repos[(repo_type, repo_id)]

    # ----------------------------------------------------------------------------- helpers

    def _new_commit(self, repo: Repo, branch: str, summary: str, files: dict[str, Blob],
                    operations: list[dict]) -> Commit:
        parent = repo.branches.get(branch)
        seed = f"{repo.repo_id}\n{parent}\n{summary}\n{time.time_ns()}\n{len(repo.commits)}"
        date = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), parent, summary, date, files, operations)
        repo.commits[commit.oid] = commit
        repo.branches[branch] = commit.oid
        return commit

    def _lfs_patterns(self, commit: Commit) -> list[str]:
        attributes = commit.files.get(".gitattributes")
        text = attributes.data.decode("utf-8", "replace") if attributes else ""
        return [line.split()[0] for line in text.splitlines() if "filter=lfs" in line]

    def _entry(self, repo: Repo, commit: Commit, path: str, expand: bool) -> dict | None:
        """A tree / paths-info entry: a file, a folder, or None."""
        last = {"id": commit.oid, "title": commit.summary, "date": commit.date}
        if path in commit.files:
            blob = commit.files[path]
            entry = {"type": "file", "oid": blob.oid, "size": len(blob.data), "path": path}
            if blob.lfs:
                entry["lfs"] = {"oid": blob.sha256, "size": len(blob.data), "pointerSize": len(blob.pointer)}
            return entry | ({"lastCommit": last} if expand else {})
        if path == "" or any(p.startswith(path + "/") for p in commit.files):
            inside = sorted((p, b.oid) for p, b in commit.files.items() if p.startswith(path + "/"))
            oid = hashlib.sha1(json.dumps(inside).encode()).hexdigest()
            return {"type": "directory", "oid": oid, "path": path} | ({"lastCommit": last} if expand else {})
        return None


def _handler(hub: FakeHub) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(_Handler):
        pass

    Handler.hub = hub
    return Handler


_REPO = r"(?P<type>model|dataset|space)s/(?P<id>[^/]+/[^/]+)"
_ROUTES = [
    ("POST", r"/api/repos/create", "create_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("POST", rf"/api/{_REPO}/branch/(?P<branch>[^/]+)", "create_branch"),
    ("GET", rf"/api/{_REPO}(?:/revision/(?P<rev>[^/]+))?", "repo_info"),
    ("GET", rf"/api/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "tree"),
    ("POST", rf"/api/{_REPO}/paths-info/(?P<rev>[^/]+)", "paths_info"),
    ("POST", rf"/api/{_REPO}/preupload/(?P<rev>[^/]+)", "preupload"),
    ("POST", rf"/api/{_REPO}/commit/(?P<rev>[^/]+)", "commit"),
    ("POST", r"/(?P<prefix>datasets/|spaces/)?(?P<id>[^/]+/[^/]+)\.git/info/lfs/objects/batch", "lfs_batch"),
    ("PUT", r"/lfs-storage/(?P<oid>[0-9a-f]{64})", "lfs_put"),
    ("POST", r"/lfs-verify", "lfs_verify"),
    ("GET", r"/(?P<prefix>datasets/|spaces/)?(?P<id>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ("HEAD", r"/(?P<prefix>datasets/|spaces/)?(?P<id>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
]


class _Handler(http.server.BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"  # keep-alive, as the clients expect; every answer has a length

    # ------------------------------------------------------------------------ plumbing

    def log_message(self, *args):
        pass

    def _body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def _dispatch(self):
        url = urlsplit(self.path)
        body = self._body()
        seen = {"method": self.command, "path": url.path, "query": parse_qs(url.query),
                "authorization": self.headers.get("authorization")}
        content_type = (self.headers.get("content-type") or "").split(";")[0]
        if body and content_type in ("application/json", "application/vnd.git-lfs+json"):
            seen["json"] = json.loads(body)
        with self.hub._lock:
            self.hub.requests.append(seen)
        try:
            for method, pattern, name in _ROUTES:
                match = re.fullmatch(pattern, url.path)
                if method == self.command and match:
                    args = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                    with self.hub._lock:
                        getattr(self, name)(body=body, query=parse_qs(url.query), **args)
                    return
            raise _Error(404, f"fake Hub: no route for {self.command} {url.path}")
        except _Error as err:
            self._send(err.status, {"error": err.message},
                       {"X-Error-Code": err.code, "X-Error-Message": err.message} if err.code else {})
        except Exception as err:  # a bug in the fake: say so instead of dropping the connection
            self._send(500, {"error": f"fake Hub: {type(err).__name__}: {err}"})

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _dispatch

    def _send(self, status: int, payload, headers: dict | None = None, raw: bytes | None = None):
        data = raw if raw is not None else json.dumps(payload).encode()
        self.send_response(status)
        if raw is None:
            self.send_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            if value is not None:
                self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    # ----------------------------------------------------------------------- auth, lookup

    def _user(self, required: bool) -> bool:
        """Whether the request is authenticated; a wrong token is always refused."""
        auth = self.headers.get("authorization")
        if auth is None:
            if required:
                raise _Error(401, "Invalid username or password.")
            return False
        if auth != f"Bearer {self.hub.token}":
            raise _Error(401, "Invalid credentials in Authorization header")
        return True

    def _repo(self, type: str, id: str, write: bool = False) -> Repo:
        authed = self._user(required=write)
        repo = self.hub.repos.get((type, id))
        if repo is None or (repo.private and not authed):
            raise _Error(401 if not authed else 404, "Repository not found", "RepoNotFound")
        return repo

    def _commit(self, repo: Repo, rev: str) -> Commit:
        commit = repo.commit(rev)
        if commit is None:
            raise _Error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return commit

    # -------------------------------------------------------------------------- routes

    def create_repo(self, body, query):
        self._user(required=True)
        doc = json.loads(body)
        repo_type = doc.get("type") or "model"
        repo_id = f"{doc['organization']}/{doc['name']}" if doc.get("organization") else f"me/{doc['name']}"
        url = f"{self.hub.url}/{PREFIXES[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self.hub.repos:
            return self._send(409, {"error": "You already created this repo", "url": url})
        repo = Repo(repo_type, repo_id, private=doc.get("visibility") == "private")
        self.hub.repos[(repo_type, repo_id)] = repo
        self.hub._new_commit(repo, "main", "initial commit",
                             {".gitattributes": Blob(GITATTRIBUTES, lfs=False)}, [])
        self._send(200, {"url": url, "name": repo_id, "id": repo_id})

    def validate_yaml(self, body, query):
        self._user(required=True)
        self._send(200, {"errors": [], "warnings": []})

    def create_branch(self, type, id, branch, body, query):
        repo = self._repo(type, id, write=True)
        if branch in repo.branches:
            return self._send(409, {"error": "Reference already exists"})
        start = (json.loads(body) if body else {}).get("startingPoint") or "main"
        repo.branches[branch] = self._commit(repo, start).oid
        self._send(200, {})

    def repo_info(self, type, id, body, query, rev="main"):
        repo = self._repo(type, id)
        commit = self._commit(repo, rev)
        siblings = []
        for path, blob in sorted(commit.files.items()):
            sibling = {"rfilename": path}
            if query.get("blobs", ["false"])[0].lower() in ("true", "1"):
                sibling |= {"size": len(blob.data), "blobId": blob.oid}
                if blob.lfs:
                    sibling["lfs"] = {"size": len(blob.data), "sha256": blob.sha256, "pointerSize": len(blob.pointer)}
            siblings.append(sibling)
        first = repo.history("main")[0] if repo.branches.get("main") else commit
        self._send(200, {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0], "sha": commit.oid, "private": repo.private,
            "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": [],
            "createdAt": first.date, "lastModified": commit.date, "siblings": siblings,
        })

    def tree(self, type, id, rev, body, query, path=""):
        repo = self._repo(type, id)
        commit = self._commit(repo, rev)
        path = path.strip("/")
        recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
        expand = query.get("expand", ["false"])[0].lower() in ("true", "1")
        top = self.hub._entry(repo, commit, path, expand)
        if top is None or top["type"] != "directory":
            raise _Error(404, f"{path}: not a folder", "EntryNotFound")
        prefix = f"{path}/" if path else ""
        names = set()
        for file in commit.files:
            if not file.startswith(prefix):
                continue
            parts = file[len(prefix):].split("/")
            depth = len(parts) if recursive else 1
            names.update(prefix + "/".join(parts[:i]) for i in range(1, depth + 1))
        entries = [self.hub._entry(repo, commit, name, expand) for name in sorted(names)]
        self._send(200, entries)

    def paths_info(self, type, id, rev, body, query):
        repo = self._repo(type, id)
        commit = self._commit(repo, rev)
        form = parse_qs(body.decode()) if body else {}
        expand = form.get("expand", ["false"])[0].lower() in ("true", "1")
        entries = [self.hub._entry(repo, commit, p.strip("/"), expand) for p in form.get("paths", [])]
        self._send(200, [e for e in entries if e is not None])

    def preupload(self, type, id, rev, body, query):
        repo = self._repo(type, id, write=True)
        commit = self._commit(repo, rev)
        patterns = self.hub._lfs_patterns(commit)
        files = []
        for f in json.loads(body)["files"]:
            sample = base64.b64decode(f["sample"])
            lfs = (any(fnmatch.fnmatch(f["path"].rsplit("/", 1)[-1], p) for p in patterns)
                   or b"\0" in sample or f["size"] > LFS_MIN_SIZE)
            remote = commit.files.get(f["path"])
            oid = None if remote is None else (remote.sha256 if remote.lfs else remote.oid)
            files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular",
                          "shouldIgnore": False, "oid": oid})
        self._send(200, {"files": files, "commitOid": commit.oid})

    def lfs_batch(self, id, body, query, prefix=""):
        type = {"datasets/": "dataset", "spaces/": "space"}.get(prefix, "model")
        self._repo(type, id, write=True)
        doc = json.loads(body)
        if doc.get("operation") != "upload":
            raise _Error(400, "fake Hub: only the upload operation is served")
        objects = []
        for obj in doc["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.hub.lfs_objects:  # known objects need no upload: no actions
                entry["actions"] = {
                    "upload": {"href": f"{self.hub.url}/lfs-storage/{obj['oid']}"},
                    "verify": {"href": f"{self.hub.url}/lfs-verify"},
                }
            objects.append(entry)
        self._send(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def lfs_put(self, oid, body, query):
        if hashlib.sha256(body).hexdigest() != oid:
            raise _Error(400, f"uploaded bytes do not hash to {oid}")
        self.hub.lfs_objects[oid] = body
        self.hub.lfs_uploads.append(oid)
        self._send(200, None, raw=b"")

    def lfs_verify(self, body, query):
        self._user(required=True)
        doc = json.loads(body)
        data = self.hub.lfs_objects.get(doc["oid"])
        if data is None or len(data) != doc["size"]:
            raise _Error(404, f"LFS object {doc['oid']} not uploaded")
        self._send(200, {"success": True})

    def commit(self, type, id, rev, body, query):
        repo = self._repo(type, id, write=True)
        if query.get("create_pr"):
            raise _Error(400, "fake Hub: pull requests are not served")
        if rev not in repo.branches:
            raise _Error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise _Error(400, "the first NDJSON line must be the header")
        header = lines[0]["value"]
        if header.get("parentCommit") and not repo.branches[rev].startswith(header["parentCommit"]):
            raise _Error(412, "A commit has happened since. Please refresh and try again.")
        files = dict(self._commit(repo, rev).files)
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            path = value["path"]
            if key == "file":
                files[path] = Blob(base64.b64decode(value["content"]), lfs=False)
            elif key == "lfsFile":
                data = self.hub.lfs_objects.get(value["oid"])
                if data is None:
                    raise _Error(422, f"{path}: LFS object {value['oid']} was never uploaded")
                files[path] = Blob(data, lfs=True)
            elif key == "deletedFile":
                if files.pop(path, None) is None:
                    raise _Error(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            elif key == "deletedFolder":
                gone = [p for p in files if p.startswith(path.rstrip("/") + "/")]
                for p in gone:
                    del files[p]
            else:
                raise _Error(400, f"fake Hub: unknown commit line {key!r}")
        commit = self.hub._new_commit(repo, rev, header["summary"], files, lines[1:])
        self._send(200, {"success": True, "commitOid": commit.oid, "pullRequestUrl": None,
                         "commitUrl": f"{self.hub.url}/{PREFIXES[type]}{id}/commit/{commit.oid}",
                         "hookOutput": ""})

    def resolve(self, id, rev, path, body, query, prefix=""):
        type = {"datasets/": "dataset", "spaces/": "space"}.get(prefix, "model")
        repo = self._repo(type, id)
        commit = self._commit(repo, rev)
        blob = commit.files.get(path)
        if blob is None:
            raise _Error(404, f"Entry not found: {path}", "EntryNotFound")
        headers = {"ETag": f'"{blob.etag}"', "X-Repo-Commit": commit.oid, "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if blob.lfs:
            headers |= {"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": len(blob.data)}
        data, status = blob.data, 200
        if match := re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("range") or ""):
            start = int(match[1] or 0)
            end = min(int(match[2]) if match[2] else len(data) - 1, len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start:end + 1], 206
        self._send(status, None, headers, raw=data)
