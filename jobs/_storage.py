"""Where Ray Train and Tune keep runs and checkpoints: a local path (one machine, or NFS every node mounts)
or an object-store URI (``s3://bucket/prefix``, ``gs://...``), resolved and checked once on the driver.

Why a module: on a multi-node cluster the workers on other nodes write the checkpoints, and their
environment need not hold the driver's S3 settings. So an ``s3://`` storage becomes one pyarrow
``S3FileSystem`` built here from the usual variables (``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``) and handed to
Ray as ``storage_filesystem``: Ray pickles it to the controller and every worker. Without keys in the
environment each process falls back to pyarrow's own chain (instance role, ``~/.aws``). A URI with a
query (``s3://b/p?endpoint_override=...``) is left to pyarrow as written.

:func:`check_storage` runs before any worker starts: a misspelled scheme, a missing bucket, an endpoint
that does not answer or a folder that cannot be written is a :class:`StorageError` (bad input, exit 2)
naming the URI, not a worker failure minutes later.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdtrack.config import ConfigError

DEFAULT_DIR = "ray_results"  # under a job's --out when no --storage is given
PROBE_PREFIX = ".kdtrack-write-probe-"  # the object check_storage writes and deletes
# the start-up check gives up fast on an endpoint that does not answer; training keeps pyarrow's defaults
PROBE_CONNECT_TIMEOUT_S = 5.0
PROBE_REQUEST_TIMEOUT_S = 20.0
PROBE_ATTEMPTS = 2
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_ONE_SLASH = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):/(?!/)")  # what pathlib makes of "s3://b/k"
LOCAL_SCHEMES = ("file",)
NOT_STORAGE_SCHEMES = ("runs", "models")  # MLflow model URIs (jobs._model_uri)


class StorageError(ConfigError):
    """The storage cannot be used (bad URI, missing bucket, unreachable endpoint, not writable): the
    message names it. A ConfigError, so the jobs' CLI exits 2 with one line before any worker starts."""


def scheme_of(text: str) -> str:
    """``"s3"`` of ``s3://b/p`` (also of ``s3:/b/p``, a URI that went through ``pathlib.Path``), "" for a path."""
    match = _SCHEME.match(text) or _ONE_SLASH.match(text)
    return match.group(1).lower() if match else ""


def is_storage_uri(ref: str | Path | None) -> bool:
    """An object-store URI (``s3://``, ``gs://``, ...), not a local path nor an MLflow model URI."""
    scheme = scheme_of(str(ref)) if ref is not None else ""
    return bool(scheme) and scheme not in NOT_STORAGE_SCHEMES + LOCAL_SCHEMES


def as_uri(ref: str | Path) -> str:
    """``s3://b/k`` back from ``pathlib.Path("s3://b/k")`` (which keeps one slash); other text unchanged."""
    text = str(ref)
    return _ONE_SLASH.sub(r"\1://", text) if not _SCHEME.match(text) else text


@dataclass(frozen=True)
class Storage:
    """Resolved storage: ``uri`` for messages and MLflow tags, ``filesystem`` + ``path`` for I/O and Ray."""

    uri: str  # an absolute local path or scheme://...
    filesystem: Any  # pyarrow.fs.FileSystem
    path: str  # on ``filesystem``: the local path, or bucket/prefix

    @property
    def is_local(self) -> bool:
        return not _SCHEME.match(self.uri)

    def ray_kwargs(self) -> dict[str, Any]:
        """``storage_path`` (and ``storage_filesystem`` for an object store) of ``ray.train``/``ray.tune.RunConfig``."""
        if self.is_local:
            return {"storage_path": self.path}
        return {"storage_path": self.path, "storage_filesystem": self.filesystem}

    def uri_of(self, fs_path: str) -> str:
        """The URI of a path on this storage's filesystem (Ray reports ``bucket/prefix/...`` without a scheme)."""
        if self.is_local or _SCHEME.match(fs_path):
            return fs_path
        return f"{scheme_of(self.uri)}://{fs_path.lstrip('/')}"

    def __str__(self) -> str:
        return self.uri


def s3_options(timeouts: bool = False) -> dict[str, Any]:
    """``pyarrow.fs.S3FileSystem`` keyword arguments from the environment (see the module docstring);
    ``timeouts``: the start-up check's short ones."""
    import pyarrow.fs as pafs

    env = os.environ
    options: dict[str, Any] = {}
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["endpoint_override"] = endpoint
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        options["access_key"] = env["AWS_ACCESS_KEY_ID"]
        options["secret_key"] = env["AWS_SECRET_ACCESS_KEY"]
        if env.get("AWS_SESSION_TOKEN"):
            options["session_token"] = env["AWS_SESSION_TOKEN"]
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    if timeouts:
        options.update(connect_timeout=PROBE_CONNECT_TIMEOUT_S, request_timeout=PROBE_REQUEST_TIMEOUT_S,
                       retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=PROBE_ATTEMPTS))
    return options


# what boto3 (MLflow's s3:// artifact store) reads; pyarrow's filesystem travels pickled, boto3 has only the environment
S3_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
          "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION")


def s3_env(uri: str) -> dict[str, str]:
    """The S3 variables of this environment when ``uri`` is an ``s3://`` one (else none), for Ray workers that
    write there with boto3 (MLflow artifacts) and may run where those variables are not set."""
    return {key: os.environ[key] for key in S3_ENV if key in os.environ} if scheme_of(uri) == "s3" else {}


def use_env(env: dict[str, str]) -> None:
    """In a worker: the driver's :func:`s3_env`, where this process has no setting of its own."""
    for key, value in env.items():
        os.environ.setdefault(key, value)


def _filesystem(uri: str, *, timeouts: bool = False) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    if scheme_of(uri) == "s3" and "?" not in uri:
        return pafs.S3FileSystem(**s3_options(timeouts)), uri.split("://", 1)[1].strip("/")
    return pafs.FileSystem.from_uri(uri)


def resolve_storage(storage: str | Path | None, out: str | Path | None = None, *,
                    default_dir: str = DEFAULT_DIR, what: str = "--storage") -> Storage:
    """``storage`` as a :class:`Storage`: a URI through pyarrow, a local path made absolute (the workers do
    not share the caller's working directory), none meaning ``<out>/<default_dir>``. A URI pyarrow cannot
    open (misspelled scheme, bad query) is a :class:`StorageError` naming it (and ``what`` gave it)."""
    import pyarrow.fs as pafs

    if not storage:
        if out is None:
            raise StorageError("no storage given and no output folder to default to")
        local = str(Path(out).resolve() / default_dir)
        return Storage(local, pafs.LocalFileSystem(), local)
    text = as_uri(storage)
    scheme = scheme_of(text)
    if not scheme:
        local = str(Path(text).expanduser().resolve())
        return Storage(local, pafs.LocalFileSystem(), local)
    if scheme in LOCAL_SCHEMES:
        local = text.split("://", 1)[1]
        return Storage(local, pafs.LocalFileSystem(), local)
    try:
        fs, path = _filesystem(text)
    except (ValueError, OSError) as exc:  # pyarrow.ArrowInvalid is a ValueError
        raise StorageError(f"{what} {text}: pyarrow cannot open it ({exc}); expected a path or a URI such "
                           f"as s3://bucket/prefix") from None
    if not path.strip("/"):
        raise StorageError(f"{what} {text}: names no bucket")
    return Storage(text.rstrip("/"), fs, path.rstrip("/"))


def check_storage(storage: Storage, what: str = "--storage") -> None:
    """On the driver, before any worker starts: the storage exists (an object store's bucket) and takes a
    write (a probe object written and deleted); a local folder, which Ray Train creates when the run starts,
    must be creatable: its nearest existing parent a writable folder (nothing is written, so a run refused
    later on the driver leaves no trace). Any failure is a :class:`StorageError` naming ``storage.uri`` (after
    ``what``, the option that gave it) and what failed."""
    import pyarrow.fs as pafs

    if storage.is_local:
        path = Path(storage.path)
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir():
            raise StorageError(f"{what} {storage.uri}: {existing} is a file, not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise StorageError(f"{what} {storage.uri}: {existing} is not writable")
        return
    try:  # the same place, with the probe's short timeouts
        fs, root = _filesystem(storage.uri, timeouts=True)
    except (ValueError, OSError):
        fs, root = storage.filesystem, storage.path
    bucket = root.split("/", 1)[0]
    try:
        info = fs.get_file_info(bucket)
    except OSError as exc:
        raise StorageError(f"{what} {storage.uri}: cannot reach it ({_one_line(exc)})") from None
    if info.type == pafs.FileType.NotFound:
        raise StorageError(f"{what} {storage.uri}: bucket '{bucket}' does not exist"
                           + _endpoint_note(storage.uri))
    probe = f"{root.rstrip('/')}/{PROBE_PREFIX}{uuid.uuid4().hex}"
    try:
        with fs.open_output_stream(probe) as handle:
            handle.write(b"kdtrack storage check\n")
        fs.delete_file(probe)
    except OSError as exc:
        raise StorageError(f"{what} {storage.uri}: not writable ({_one_line(exc)})") from None


class StorageLost(RuntimeError):
    """The storage answered at start-up and no longer does (a bucket deleted, an endpoint gone) after a run
    failed: the run's real cause, named, instead of Ray's wrapped upload error."""


def storage_problem(storage: Storage) -> str | None:
    """After a failure: what :func:`check_storage` now says about an object store (None when it is fine, and
    for a local path, which Ray Train created)."""
    if storage.is_local:
        return None
    try:
        check_storage(storage)
    except StorageError as exc:
        return str(exc)
    return None


def fetch_to_local(uri: str | Path, dst: str | Path, filename: str) -> Path:
    """Copy ``uri`` (an object, or a folder holding ``filename`` such as a Ray checkpoint folder) from
    object storage to ``dst/filename``, atomically; returns the local path. A missing object is a
    FileNotFoundError naming the URI."""
    import pyarrow.fs as pafs

    from kdtrack.io import atomic_save

    storage = resolve_storage(uri)
    fs, path = storage.filesystem, storage.path
    try:
        info = fs.get_file_info(path)
    except OSError as exc:
        raise StorageError(f"{storage.uri}: cannot reach it ({_one_line(exc)})") from None
    if info.type == pafs.FileType.Directory:
        path = f"{path}/{filename}"
        info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"{storage.uri}: no such object (nor a folder holding {filename})")
    target = Path(dst) / filename
    target.parent.mkdir(parents=True, exist_ok=True)

    def copy(handle: Any) -> None:
        with fs.open_input_stream(path) as src:
            while chunk := src.read(1 << 22):
                handle.write(chunk)

    return atomic_save(target, copy)


def upload(storage: Storage, files: "list[Path]") -> list[str]:
    """Copy finished local files into ``storage`` (each under its own name), in the order given; returns their
    URIs. Never a half-written file there: an object store makes an object visible only once its upload
    completes, and a folder gets a temporary file renamed. Callers upload an index file last, so whoever
    finds it finds the rest."""
    from kdtrack.io import atomic_save

    uris = []
    for file in files:
        def copy(handle: Any, file: Path = file) -> None:
            with open(file, "rb") as src:
                while chunk := src.read(1 << 22):
                    handle.write(chunk)

        target = f"{storage.path}/{file.name}"
        if storage.is_local:
            atomic_save(Path(target), copy)
        else:
            try:
                with storage.filesystem.open_output_stream(target) as handle:
                    copy(handle)
            except OSError as exc:
                raise StorageLost(f"{storage.uri}: upload of {file.name} failed ({_one_line(exc)})") from None
        uris.append(storage.uri_of(target))
    return uris


def _endpoint_note(uri: str) -> str:
    if scheme_of(uri) != "s3":
        return ""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return f" (endpoint {endpoint})" if endpoint else " (AWS; set AWS_ENDPOINT_URL for another S3 server)"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
