"""Local paths and ``s3://`` URIs behind one ``pyarrow.fs`` interface.

S3 is configured by the standard AWS environment: credentials through botocore's usual chain
(environment, shared files, SSO, container or instance roles), ``AWS_ENDPOINT_URL`` /
``AWS_ENDPOINT_URL_S3`` for S3-compatible stores, ``AWS_REGION`` / ``AWS_DEFAULT_REGION``. All
reads and writes go through pyarrow (the same filesystem object is handed to Ray Data); botocore
is used only to check that credentials exist, because pyarrow silently falls back to anonymous
requests, which turns a missing-credentials mistake into a confusing error much later. The
credentials themselves never enter the filesystem object (see ``s3_filesystem``).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs


def cache_dir(*parts: str) -> Path:
    """The local cache (``ALAE_RAY_CACHE``, default ``~/.cache/alae-ray``), read at each call so a
    test or a user can point it elsewhere."""
    return Path(os.environ.get("ALAE_RAY_CACHE", Path.home() / ".cache" / "alae-ray")).joinpath(*parts)


class DatasetError(ValueError):
    """A dataset URI, file or its contents is wrong; the message names the URI or file."""


@dataclass(frozen=True)
class Location:
    """A filesystem and the path of a dataset root on it (no scheme, no trailing slash)."""

    uri: str
    fs: pafs.FileSystem
    path: str

    @property
    def is_s3(self) -> bool:
        return isinstance(self.fs, pafs.S3FileSystem)

    def join(self, *parts: str) -> str:
        return "/".join([self.path, *parts]) if self.path else "/".join(parts)

    def uri_of(self, rel: str) -> str:
        return f"{self.uri.rstrip('/')}/{rel}"


def s3_filesystem(uri: str) -> pafs.S3FileSystem:
    """A pyarrow S3 filesystem from the AWS environment; raises DatasetError without credentials."""
    import botocore.session  # boto3's dependency; only for the credential chain

    session = botocore.session.Session()
    creds = session.get_credentials()
    if creds is None:
        raise DatasetError(
            f"{uri}: no AWS credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE, or run on a machine with an instance role)")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or session.get_config_variable("region") or "us-east-1"
    # No keys in here: the AWS SDK inside pyarrow resolves them from the same chain in each process
    # that uses the filesystem. Keys passed to it would travel wherever it is pickled (Ray Train's and
    # Tune's saved state, every task's arguments) and role credentials would stop refreshing.
    kwargs: dict = {"region": region}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs.update(endpoint_override=parsed.netloc + parsed.path.rstrip("/"), scheme=parsed.scheme)
        if not parsed.hostname or not parsed.hostname.endswith("amazonaws.com"):
            compatible_checksums()
    return pafs.S3FileSystem(**kwargs)


CHECKSUM_SETTINGS = {"AWS_REQUEST_CHECKSUM_CALCULATION": "WHEN_REQUIRED",
                     "AWS_RESPONSE_CHECKSUM_VALIDATION": "WHEN_REQUIRED"}


def compatible_checksums() -> None:
    """For S3-compatible stores (an endpoint that is not AWS): the AWS SDKs' default checksums are
    newer than several of them accept (rclone's server answers HTTP 411 to pyarrow's multipart
    uploads), so ask for checksums only where the S3 API requires them. Processes started after this
    (a local Ray's workers) inherit it; a value already set is kept."""
    for key, value in CHECKSUM_SETTINGS.items():
        os.environ.setdefault(key, value)


def resolve(uri: str) -> Location:
    """A Location for ``s3://bucket/prefix`` or a local path (``file://`` accepted)."""
    uri = str(uri)
    if uri.startswith("s3://"):
        rest = uri[len("s3://"):].strip("/")
        if not rest:
            raise DatasetError(f"{uri}: no bucket in URI")
        return Location(uri=f"s3://{rest}", fs=s3_filesystem(uri), path=rest)
    if "://" in uri and not uri.startswith("file://"):
        raise DatasetError(f"{uri}: unsupported scheme (use a local path or s3://bucket/prefix)")
    local = os.path.abspath(uri[len("file://"):] if uri.startswith("file://") else uri)
    return Location(uri=local, fs=pafs.LocalFileSystem(), path=local)


def _wrap(loc: Location, what: str, exc: Exception) -> DatasetError:
    return DatasetError(f"{what}: {exc}".replace("\n", " "))


def check_bucket(loc: Location) -> None:
    """Fail at once, naming the URI, when the bucket is missing or unreachable."""
    if not loc.is_s3:
        return
    bucket = loc.path.split("/", 1)[0]
    try:
        info = loc.fs.get_file_info(bucket)
    except OSError as exc:
        raise _wrap(loc, f"{loc.uri}: cannot access bucket {bucket!r}", exc) from None
    if info.type == pafs.FileType.NotFound:
        raise DatasetError(f"{loc.uri}: bucket {bucket!r} does not exist")


def read_bytes(loc: Location, rel: str) -> bytes:
    """A file's bytes; FileNotFoundError-free: missing files raise DatasetError naming the URI."""
    try:
        with loc.fs.open_input_stream(loc.join(rel)) as f:
            return f.read()
    except FileNotFoundError:
        raise DatasetError(f"{loc.uri_of(rel)}: not found") from None
    except OSError as exc:
        raise _wrap(loc, loc.uri_of(rel), exc) from None


def exists(loc: Location, rel: str) -> bool:
    try:
        return loc.fs.get_file_info(loc.join(rel)).type == pafs.FileType.File
    except OSError as exc:
        raise _wrap(loc, loc.uri_of(rel), exc) from None


def write_bytes_atomic(loc: Location, rel: str, data: bytes | memoryview) -> None:
    """Write a whole file so that readers see either nothing or all of it.

    Local: a temporary name in the same folder, then rename. S3: a single PUT of bytes already in
    memory (an S3 object appears only once its upload completes, so no partial object can exist).
    """
    path = loc.join(rel)
    try:
        if loc.is_s3:
            with loc.fs.open_output_stream(path) as f:
                f.write(data)
            return
        parent = path.rsplit("/", 1)[0]
        loc.fs.create_dir(parent, recursive=True)
        tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        with loc.fs.open_output_stream(tmp) as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        raise _wrap(loc, loc.uri_of(rel), exc) from None


def list_files(loc: Location, rel: str) -> list[str]:
    """Paths (relative to the root) of the files under ``rel``, recursively; [] when absent."""
    base = loc.join(rel)
    try:
        infos = loc.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    except OSError as exc:
        raise _wrap(loc, loc.uri_of(rel), exc) from None
    cut = len(loc.path) + 1 if loc.path else 0
    return sorted(i.path[cut:] for i in infos if i.type == pafs.FileType.File)
