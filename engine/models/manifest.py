"""The model manifest (``resources/models.json``): what every model is, where its files come from,
their pinned sizes and sha256 hashes, licence and memory needs.

A file is *pinned* when the manifest carries a sha256 read from a public source
(``sha256_source`` says where). A file with ``sha256: null`` is *unpinned*: its hash is recorded
on first download (or import) and verified against that record afterwards.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, urlsplit

from ..resources import resource

LOADERS = ("spandrel", "transformers", "diffusers", "onnx", "torch-state-dict", "bundled", "yolo")
PROFILES = ("builtin", "laptop", "quality")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_REV_RE = re.compile(r"^[0-9a-f]{40}$")
# a model id names its folder in the store: one plain path component, never "..", "/", "\\", ":"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

DEFAULT_MANIFEST = resource("models.json")
# names Windows reserves for devices, with or without an extension ("nul.json" opens the null
# device), and trailing dots or spaces (Windows drops them: "x." and "x" are one file)
_WINDOWS_DEVICES = frozenset({"con", "prn", "aux", "nul", "conin$", "conout$",
                              *(f"com{i}" for i in "123456789¹²³"),
                              *(f"lpt{i}" for i in "123456789¹²³")})


def _windows_unsafe(part: str) -> bool:
    return (part.endswith((".", " "))
            or part.split(".", 1)[0].rstrip(" ").lower() in _WINDOWS_DEVICES)


class ManifestError(ValueError):
    """The manifest file is malformed (a programming/packaging error, not a user error)."""


def safe_relpath(name: str) -> PurePosixPath:
    """A relative POSIX path with no ``..``, no absolute part, no backslash, no drive."""
    if not name or "\\" in name or "\x00" in name or name.startswith("/") or ":" in name:
        raise ManifestError(f"unsafe file name {name!r}")
    p = PurePosixPath(name)
    if p.is_absolute() or any(part in ("", ".", "..") for part in p.parts):
        raise ManifestError(f"unsafe file name {name!r}")
    if any(_windows_unsafe(part) for part in p.parts):
        raise ManifestError(f"unsafe file name {name!r} (a name Windows reserves, or a trailing "
                            "dot or space)")
    return p


def check_model_id(model_id: object) -> str:
    """``model_id`` if it is safe as the name of the model's folder in the store: letters,
    digits, ``.``, ``_`` and ``-``, starting with a letter or digit (so never ``.``/``..``, a
    path, a drive or a hidden name), not ending in a dot, and not a device name Windows
    reserves (``CON``, ``nul.x``, ``COM1``...). Raises :class:`ManifestError` otherwise."""
    if (not isinstance(model_id, str) or not _ID_RE.fullmatch(model_id)
            or model_id in (".", "..") or _windows_unsafe(model_id)):
        raise ManifestError(f"unsafe model id {model_id!r} (letters, digits, '.', '_' and '-' "
                            "only, starting with a letter or digit, not ending in '.', not a "
                            "name Windows reserves such as CON or COM1)")
    return model_id


@dataclass(frozen=True)
class ModelFile:
    name: str  # relative path inside the model folder (may contain sub-folders: "unet/x.safetensors")
    url: str | None
    size: int  # bytes; exact when ``size_exact`` (checked), otherwise an estimate for progress/disk
    sha256: str | None  # pinned hash, or None (unpinned)
    sha256_source: str | None = None
    size_exact: bool = True
    repo: str | None = None
    revision: str | None = None
    filename: str | None = None

    @property
    def pinned(self) -> bool:
        return self.sha256 is not None

    @property
    def host(self) -> str | None:
        return urlsplit(self.url).hostname if self.url else None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name}
        if self.repo:
            d.update(repo=self.repo, revision=self.revision, filename=self.filename)
        else:
            d["url"] = self.url
        d.update(size=self.size, size_exact=self.size_exact, sha256=self.sha256,
                 sha256_source=self.sha256_source)
        return d


@dataclass(frozen=True)
class ModelSpec:
    id: str
    task: str
    loader: str
    files: tuple[ModelFile, ...]
    license: str
    commercial_use: bool
    memory_mb: int
    name: str = ""
    description: str = ""
    license_url: str | None = None
    devices: tuple[str, ...] = ("cuda", "mps", "cpu")
    dtypes: tuple[str, ...] = ("fp32",)
    profiles: tuple[str, ...] = ()
    alternatives: tuple[str, ...] = ()
    main_file: str | None = None  # the file ``ModelRuntime.file(id)`` returns by default
    slot: bool = False  # a configurable slot with no public weights (user supplies them)
    env: str | None = None  # env var a slot reads a user path from
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def bundled(self) -> bool:
        return self.loader == "bundled"

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def pinned(self) -> bool:
        return all(f.pinned for f in self.files)

    def get_file(self, name: str | None = None) -> ModelFile:
        if name is None:
            name = self.main_file or (self.files[0].name if len(self.files) == 1 else None)
            if name is None:
                raise KeyError(f"model {self.id!r} has several files; name one")
        for f in self.files:
            if f.name == name:
                return f
        raise KeyError(f"model {self.id!r} has no file {name!r}")

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id, "name": self.name, "task": self.task, "loader": self.loader,
            "description": self.description, "license": self.license,
            "license_url": self.license_url, "commercial_use": self.commercial_use,
            "memory_mb": self.memory_mb, "devices": list(self.devices),
            "dtypes": list(self.dtypes), "profiles": list(self.profiles),
            "alternatives": list(self.alternatives), "main_file": self.main_file,
            "files": [f.to_json() for f in self.files],
        }
        if self.slot:
            d["slot"] = True
            d["env"] = self.env
        if self.notes:
            d["notes"] = self.notes
        d.update(self.extra)
        return d


def hub_url(repo: str, revision: str, filename: str, host: str = "huggingface.co") -> str:
    """A pinned Hugging Face ``resolve/<revision>/<filename>`` URL (no hub client involved)."""
    return f"https://{host}/{repo}/resolve/{revision}/{quote(filename)}"


def _parse_file(mid: str, raw: dict[str, Any]) -> ModelFile:
    try:
        name = str(raw["name"])
        safe_relpath(name)
        repo = raw.get("repo")
        revision = raw.get("revision")
        filename = raw.get("filename")
        url = raw.get("url")
        if repo:
            if not revision or not _REV_RE.match(str(revision)):
                raise ManifestError(f"{mid}/{name}: hub files need a 40-hex pinned revision")
            filename = filename or name
            url = hub_url(str(repo), str(revision), str(filename))
        if url is not None and not str(url).startswith(("https://", "http://")):
            raise ManifestError(f"{mid}/{name}: bad url {url!r}")
        sha = raw.get("sha256")
        if sha is not None:
            sha = str(sha).lower()
            if not _SHA_RE.match(sha):
                raise ManifestError(f"{mid}/{name}: sha256 must be 64 hex digits")
        size = int(raw["size"])
        if size <= 0:
            raise ManifestError(f"{mid}/{name}: size must be positive")
        return ModelFile(
            name=name, url=url, size=size, sha256=sha,
            sha256_source=raw.get("sha256_source"),
            size_exact=bool(raw.get("size_exact", True)),
            repo=repo, revision=revision, filename=filename,
        )
    except KeyError as e:
        raise ManifestError(f"{mid}: file entry lacks {e}") from None


_KNOWN_KEYS = {
    "id", "name", "task", "loader", "description", "license", "license_url", "commercial_use",
    "memory_mb", "devices", "dtypes", "profiles", "alternatives", "main_file", "files", "slot",
    "env", "notes",
}


def parse_model(raw: dict[str, Any]) -> ModelSpec:
    if "id" not in raw:
        raise ManifestError(f"model entry lacks 'id' (name {raw.get('name', '?')!r})")
    mid = check_model_id(raw["id"])
    try:
        loader = str(raw["loader"])
        if loader not in LOADERS:
            raise ManifestError(f"{mid}: unknown loader {loader!r}")
        files = tuple(_parse_file(mid, f) for f in raw.get("files", []))
        names = [f.name for f in files]
        if len(set(names)) != len(names):
            raise ManifestError(f"{mid}: duplicate file names")
        profiles = tuple(raw.get("profiles", []))
        for p in profiles:
            if p not in PROFILES:
                raise ManifestError(f"{mid}: unknown profile {p!r}")
        spec = ModelSpec(
            id=mid, task=str(raw["task"]), loader=loader, files=files,
            license=str(raw["license"]), commercial_use=bool(raw["commercial_use"]),
            memory_mb=int(raw["memory_mb"]), name=str(raw.get("name", mid)),
            description=str(raw.get("description", "")), license_url=raw.get("license_url"),
            devices=tuple(raw.get("devices", ("cuda", "mps", "cpu"))),
            dtypes=tuple(raw.get("dtypes", ("fp32",))), profiles=profiles,
            alternatives=tuple(raw.get("alternatives", [])), main_file=raw.get("main_file"),
            slot=bool(raw.get("slot", False)), env=raw.get("env"), notes=str(raw.get("notes", "")),
            extra={k: v for k, v in raw.items() if k not in _KNOWN_KEYS},
        )
    except KeyError as e:
        raise ManifestError(f"{mid}: model entry lacks {e}") from None
    if spec.main_file is not None:
        spec.get_file(spec.main_file)
    return spec


class Manifest:
    """Every model Mend knows, by id, plus the hosts downloads may come from."""

    def __init__(self, models: list[ModelSpec] | tuple[ModelSpec, ...],
                 hosts: tuple[str, ...] | list[str] = (), source: Path | None = None) -> None:
        self.models: dict[str, ModelSpec] = {}
        for m in models:
            check_model_id(m.id)  # (specs built in code, not parsed, pass here too)
            if m.id in self.models:
                raise ManifestError(f"duplicate model id {m.id!r}")
            self.models[m.id] = m
        file_hosts = {f.host for m in models for f in m.files if f.host}
        self.hosts: frozenset[str] = frozenset(h.lower() for h in hosts) | frozenset(file_hosts)
        self.source = source

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: Path | None = None) -> Manifest:
        models = [parse_model(m) for m in data.get("models", [])]
        return cls(models, tuple(data.get("hosts", ())), source)

    @classmethod
    def load(cls, path: str | Path | None = None) -> Manifest:
        p = Path(path) if path is not None else DEFAULT_MANIFEST
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ManifestError(f"cannot read model manifest {p}: {e}") from e
        try:
            return cls.from_dict(data, p)
        except ManifestError as e:  # (name the file: MEND_MANIFEST may point at a mirror's)
            raise ManifestError(f"model manifest {p}: {e}") from None

    def __contains__(self, model_id: object) -> bool:
        return model_id in self.models

    def __iter__(self):
        return iter(self.models.values())

    def __len__(self) -> int:
        return len(self.models)

    def ids(self) -> list[str]:
        return list(self.models)

    def get(self, model_id: str) -> ModelSpec:
        from ..errors import UsageError

        try:
            return self.models[model_id]
        except KeyError:
            raise UsageError(f"unknown model {model_id!r} (see: mend models list)") from None

    def for_profile(self, profile: str) -> list[ModelSpec]:
        """Models the given profile needs (``builtin`` needs none)."""
        from ..errors import UsageError

        if profile not in PROFILES:
            raise UsageError(f"unknown profile {profile!r} (builtin, laptop or quality)")
        return [m for m in self.models.values() if profile in m.profiles]

    def with_model(self, spec: ModelSpec) -> Manifest:
        """A copy with ``spec`` added or replacing the entry of the same id."""
        models = [m for m in self.models.values() if m.id != spec.id] + [spec]
        return Manifest(models, tuple(self.hosts), self.source)

    def to_dict(self) -> dict[str, Any]:
        return {"hosts": sorted(self.hosts), "models": [m.to_json() for m in self.models.values()]}


@lru_cache(maxsize=4)
def _load_default(path: str) -> Manifest:
    return Manifest.load(path)


def default_manifest() -> Manifest:
    """The shipped ``resources/models.json`` (parsed once per process), or the file named by
    ``MEND_MANIFEST`` (e.g. an organisation's mirror with its own hosts and pins)."""
    override = os.environ.get("MEND_MANIFEST", "").strip()
    return _load_default(override or str(DEFAULT_MANIFEST))


def profile_model_ids(profile: str, manifest: Manifest | None = None) -> set[str]:
    return {m.id for m in (manifest or default_manifest()).for_profile(profile)}
