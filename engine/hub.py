"""Where the weights come from: a Hugging Face repo id or a local folder in the same layout.

Mirrors the official path resolution (spec 2.4): `pipeline.json` is read from the folder if it is
there, else from the repo; each `args.models` entry is first looked up under the pipeline's own root,
and an entry that is not there and reads `owner/repo/<subpath>` comes from that other repo (the
TRELLIS-1 sparse-structure decoder lives in `microsoft/TRELLIS-image-large`). Unlike the official code
we fetch only what the chosen pipeline type runs, refuse anything but safetensors, check gated repos
before any large download, and turn every failure into a `WeightsError` that says what to do.

All network access goes through a `Downloader` (the default wraps `huggingface_hub`); tests inject a
fake one. Options (cache dir, token, offline) are passed in; nothing is read from the environment here.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import NoReturn, Protocol

from engine.config import PipelineConfig, check_pipeline_type
from engine.errors import WeightsError

log = logging.getLogger(__name__)

DEFAULT_REPO = "microsoft/TRELLIS.2-4B"
PIPELINE_FILE = "pipeline.json"
# A transformers model folder: what `DINOv3ViTModel.from_pretrained(folder, use_safetensors=True)` reads.
IMAGE_COND_FILES = ("config.json", "model.safetensors")
REMBG_FILES = ("config.json", "model.safetensors")
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")
HUB_URL = "https://huggingface.co"

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def is_repo_id(text: str) -> bool:
    return bool(_REPO_ID.match(text)) and ".." not in text


# ----------------------------------------------------------------------------------------------- errors


class NotInRepo(WeightsError):
    """A file a repo does not have (online), or that is not in the local cache (offline)."""

    def __init__(self, repo_id: str, filename: str, offline: bool, detail: str = "") -> None:
        self.repo_id, self.filename, self.offline = repo_id, filename, offline
        where = "in the local Hugging Face cache (offline mode)" if offline else f"in the repo {repo_id}"
        super().__init__(f"{repo_id}/{filename} was not found {where}" + (f": {detail}" if detail else ""))


class GatedRepoError(WeightsError):
    """The repo needs its licence accepted (and a token of an account that accepted it)."""


def gated_message(repo_id: str, token_given: bool) -> str:
    who = (
        "The Hugging Face token in use has not been granted access to it yet"
        if token_given
        else "No token was passed, and no stored Hugging Face login has access"
    )
    return (
        f"{repo_id} is a gated model: its licence must be accepted before it can be downloaded. {who}.\n"
        f"1. Open {HUB_URL}/{repo_id}, sign in and accept the licence (access can take a while to be granted).\n"
        f"2. Create a read token at {HUB_URL}/settings/tokens.\n"
        "3. Put the token in the add-on's Preferences > HF token "
        "(scripts: pass token=...; command line: --token-file FILE)."
    )


def download_command(source: str, pipeline_type: str | None, cache_dir: Path | None, rembg: bool = False) -> str:
    """The command that fills the cache for `source`; quoted in every offline-mode error."""
    parts = ["python -m engine download", _quote(source)]
    if pipeline_type:
        parts.append(f"--pipeline-type {pipeline_type}")
    if cache_dir is not None:
        parts.append(f"--cache-dir {_quote(str(cache_dir))}")
    if rembg:
        parts.append("--rembg")
    return " ".join(parts)


def _quote(text: str) -> str:
    return text if re.fullmatch(r"[A-Za-z0-9_./:~-]+", text) else "'" + text.replace("'", "'\\''") + "'"


# ----------------------------------------------------------------------------------------------- downloader


@dataclass(frozen=True)
class HubOptions:
    """How to reach the hub. token None: huggingface_hub's own login (if any); offline: cache only."""

    cache_dir: Path | None = None
    token: str | None = None
    offline: bool = False

    def __post_init__(self) -> None:
        if self.cache_dir is not None:
            object.__setattr__(self, "cache_dir", Path(self.cache_dir).expanduser())


ByteCallback = Callable[[int], None]  # bytes added since the last call


class Downloader(Protocol):
    """What resolution needs from a hub. Injectable: tests pass a fake backed by a folder."""

    offline: bool

    def fetch(self, repo_id: str, filename: str, on_bytes: ByteCallback | None = None) -> Path:
        """Local path of `filename`; raise NotInRepo when the repo (or, offline, the cache) lacks it."""
        ...

    def file_sizes(self, repo_id: str, filenames: Sequence[str]) -> dict[str, int]:
        """Sizes in bytes of those files that are known; {} when offline."""
        ...

    def check_access(self, repo_id: str) -> None:
        """Raise GatedRepoError / WeightsError if the repo cannot be read; no-op offline."""
        ...


class HfDownloader:
    """`hf_hub_download` per file: resumable (`.incomplete` files are continued), cache-aware, one repo
    revision (main). Byte progress comes through the `tqdm_class` hook; a callback that raises (e.g.
    `Cancelled`) stops the download and the partial file resumes next time."""

    def __init__(self, options: HubOptions | None = None) -> None:
        self.options = options or HubOptions()
        self.offline = self.options.offline

    def fetch(self, repo_id: str, filename: str, on_bytes: ByteCallback | None = None) -> Path:
        from huggingface_hub import hf_hub_download

        try:
            path = hf_hub_download(
                repo_id,
                filename,
                cache_dir=self.options.cache_dir,
                token=self.options.token,
                local_files_only=self.offline,
                # Always our bar: huggingface_hub's own would print to the terminal.
                **({"tqdm_class": _byte_bar_class(on_bytes or _ignore)} if _has_tqdm_class() else {}),
            )
        except Exception as exc:
            self._reraise(exc, repo_id, filename)
        return Path(path)

    def file_sizes(self, repo_id: str, filenames: Sequence[str]) -> dict[str, int]:
        if self.offline or not filenames:
            return {}
        from huggingface_hub import HfApi

        try:
            infos = HfApi().get_paths_info(repo_id, list(filenames), token=self.options.token)
        except Exception as exc:
            self._reraise(exc, repo_id, ", ".join(filenames))
        return {info.path: int(info.size) for info in infos if getattr(info, "size", None) is not None}

    def check_access(self, repo_id: str) -> None:
        if self.offline:
            return
        from huggingface_hub import HfApi

        try:
            HfApi().auth_check(repo_id, token=self.options.token)
        except Exception as exc:
            self._reraise(exc, repo_id, "")

    def _reraise(self, exc: Exception, repo_id: str, filename: str) -> NoReturn:
        translated = self._translate(exc, repo_id, filename)
        if translated is exc:
            raise exc
        raise translated from exc

    def _translate(self, exc: Exception, repo_id: str, filename: str) -> Exception:
        """huggingface_hub / transport exceptions -> WeightsError with a remedy. Anything else passes unchanged."""
        from huggingface_hub import errors as hf

        if isinstance(exc, hf.GatedRepoError):
            return GatedRepoError(gated_message(repo_id, self.options.token is not None))
        if isinstance(exc, hf.LocalEntryNotFoundError):
            if self.offline:
                return NotInRepo(repo_id, filename, offline=True)
            return WeightsError(
                f"could not download {repo_id}/{filename}: the Hugging Face Hub is unreachable and the file is not "
                "in the cache. Check the internet connection (or a proxy), then try again."
            )
        if isinstance(exc, hf.EntryNotFoundError):
            return NotInRepo(repo_id, filename, offline=False)
        if isinstance(exc, hf.RevisionNotFoundError):
            return WeightsError(f"{repo_id}: revision not found ({exc})")
        if isinstance(exc, hf.RepositoryNotFoundError):
            return WeightsError(
                f"{repo_id} was not found on the Hugging Face Hub, or it is private and the token in use cannot "
                "read it. Check the repo name, or set a token in the add-on's Preferences > HF token."
            )
        if isinstance(exc, hf.HfHubHTTPError):
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if status == 401:
                return WeightsError(
                    f"{repo_id}: the Hugging Face token was rejected (HTTP 401). Create a new read token at "
                    f"{HUB_URL}/settings/tokens and set it in the add-on's Preferences > HF token."
                )
            return WeightsError(f"{repo_id}/{filename}: the Hugging Face Hub answered with an error: {exc}")
        if isinstance(exc, _network_errors()):
            return WeightsError(
                f"could not reach the Hugging Face Hub for {repo_id} ({type(exc).__name__}: {exc}). Check the "
                "internet connection; weights that are already downloaded can be used in offline mode."
            )
        return exc


def _network_errors() -> tuple[type[BaseException], ...]:
    """Transport errors of whichever HTTP client this huggingface_hub uses, plus OSError (disk, sockets)."""
    found: list[type[BaseException]] = [OSError]
    for module, name in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            found.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def _ignore(_n: int) -> None:
    pass


@functools.cache
def _has_tqdm_class() -> bool:
    """Older huggingface_hub releases take no `tqdm_class`: they get per-file completion reports only."""
    from huggingface_hub import hf_hub_download

    return "tqdm_class" in inspect.signature(hf_hub_download).parameters


def _byte_bar_class(on_bytes: ByteCallback) -> type:
    """A stand-in for tqdm that forwards byte counts. huggingface_hub creates it with tqdm's keyword
    arguments; `update` is bytes written (HTTP and Xet paths), `update_transfer` (network bytes of the
    Xet path, when the class has it) is ignored so nothing is counted twice."""

    class _ByteBar:
        def __init__(self, *args, total=None, initial=0, **kwargs) -> None:
            self.total, self.n = total, initial or 0
            if self.n:
                on_bytes(self.n)  # the resumed part of a `.incomplete` file

        def update(self, n: int | float = 1) -> None:
            self.n += int(n)
            on_bytes(int(n))

        def update_transfer(self, n: int | float = 1) -> None:
            pass

        def set_postfix_str(self, *args, **kwargs) -> None:
            pass

        set_transfer_postfix_str = set_description = refresh = clear = set_postfix_str

        def close(self) -> None:
            pass

        def reset(self, total=None) -> None:
            self.total, self.n = total, 0

        @property
        def format_dict(self) -> dict:
            return {"n": self.n, "total": self.total, "rate": None}

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.close()

    return _ByteBar


# ----------------------------------------------------------------------------------------------- progress


@dataclass(frozen=True)
class DownloadProgress:
    """One progress report: the current file and the whole download. Totals are None when unknown."""

    file: str  # "owner/repo/path"
    file_done: int
    file_total: int | None
    overall_done: int
    overall_total: int | None
    files_done: int
    files_total: int
    finished: bool = False  # this file is complete


ProgressCallback = Callable[[DownloadProgress], None]


@dataclass
class _Tracker:
    files: list[tuple[str, str]]
    sizes: dict[tuple[str, str], int]
    on_progress: ProgressCallback | None
    done: dict[tuple[str, str], int] = field(default_factory=dict)
    files_done: int = 0

    @property
    def total(self) -> int | None:
        return sum(self.sizes[f] for f in self.files) if all(f in self.sizes for f in self.files) else None

    def emit(self, item: tuple[str, str], finished: bool = False) -> None:
        if self.on_progress is None:
            return
        self.on_progress(
            DownloadProgress(
                file=f"{item[0]}/{item[1]}",
                file_done=self.done.get(item, 0),
                file_total=self.sizes.get(item),
                overall_done=sum(self.done.values()),
                overall_total=self.total,
                files_done=self.files_done,
                files_total=len(self.files),
                finished=finished,
            )
        )

    def bytes_for(self, item: tuple[str, str]) -> ByteCallback:
        def on_bytes(n: int) -> None:
            self.done[item] = self.done.get(item, 0) + n
            self.emit(item)

        return on_bytes

    def finish(self, item: tuple[str, str], path: Path) -> None:
        """Complete a file from its size on disk: covers cache hits and downloaders without byte progress."""
        size = path.stat().st_size
        self.sizes.setdefault(item, size)
        self.done[item] = size
        self.files_done += 1
        self.emit(item, finished=True)


def download_files(
    downloader: Downloader, files: Sequence[tuple[str, str]], on_progress: ProgressCallback | None = None
) -> list[Path]:
    """Fetch `(repo_id, filename)` pairs in order, after checking access to every repo involved.

    The access check runs first so that a gated repo is reported before gigabytes of other files
    arrive. Sizes are asked for once per repo so the overall total is known up front when online.
    """
    files = list(dict.fromkeys(files))
    repos = list(dict.fromkeys(repo for repo, _ in files))
    for repo in repos:
        downloader.check_access(repo)
    sizes: dict[tuple[str, str], int] = {}
    for repo in repos:
        names = [name for r, name in files if r == repo]
        for name, size in downloader.file_sizes(repo, names).items():
            sizes[(repo, name)] = size
    tracker = _Tracker(files, sizes, on_progress)
    paths = []
    for item in files:
        log.info("fetching %s/%s", *item)
        path = downloader.fetch(item[0], item[1], on_bytes=tracker.bytes_for(item))
        tracker.finish(item, path)
        paths.append(path)
    return paths


def fetch_model_folder(
    name: str | Path,
    files: Sequence[str] = IMAGE_COND_FILES,
    *,
    options: HubOptions | None = None,
    downloader: Downloader | None = None,
    on_progress: ProgressCallback | None = None,
) -> Path:
    """A transformers-style model folder: `name` itself if it is a folder, else `files` from the repo `name`."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        _check_component_dir(folder, str(name))
        return folder.resolve()
    if not isinstance(name, str) or not is_repo_id(name):
        raise WeightsError(f"{str(name)!r} is neither an existing folder nor a Hugging Face repo id")
    downloader = downloader or HfDownloader(options or HubOptions())
    try:
        paths = download_files(downloader, [(name, f) for f in files], on_progress)
    except NotInRepo as exc:
        if exc.offline:
            raise WeightsError(
                f"{exc.repo_id}/{exc.filename} is not downloaded yet and offline mode is on; turn offline mode off "
                "once to download it"
            ) from exc
        raise
    return _component_dir(name, files, dict(zip([(name, f) for f in files], paths, strict=True)))


# ----------------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class PipelineSource:
    """A pipeline root: exactly one of a local folder or a hub repo id."""

    local_dir: Path | None = None
    repo_id: str | None = None

    @classmethod
    def parse(cls, source: str | Path) -> PipelineSource:
        """An existing folder is local (as the official `os.path.exists` test); else it must be a repo id."""
        path = Path(source).expanduser()
        if path.is_dir():
            if not (path / PIPELINE_FILE).is_file():
                raise WeightsError(
                    f"{path} is a folder but has no {PIPELINE_FILE}; point to the pipeline's root folder"
                )
            return cls(local_dir=path.resolve())
        text = str(source)
        if isinstance(source, str) and is_repo_id(text):
            return cls(repo_id=text)
        raise WeightsError(
            f"{text!r} is neither an existing folder nor a Hugging Face repo id like {DEFAULT_REPO!r}; "
            "check the path of the weights folder"
        )

    def __str__(self) -> str:
        return str(self.local_dir) if self.local_dir is not None else str(self.repo_id)


@dataclass(frozen=True)
class ModelFiles:
    """One checkpoint: `<stem>.json` (official {name, args}) and `<stem>.safetensors`."""

    key: str  # pipeline.json models key
    entry: str  # the value in pipeline.json
    config: Path
    weights: Path
    origin: str  # where it was found, for messages: a folder or "owner/repo/<subpath>"

    @property
    def stem(self) -> Path:
        """The path `engine.models.load_model` takes (both files share a folder in a folder or the HF cache)."""
        stem = self.config.with_suffix("")
        if self.weights.with_suffix("") != stem:
            raise WeightsError(f"{self.key}: {self.config} and {self.weights} are not side by side")
        return stem


@dataclass(frozen=True)
class ResolvedPipeline:
    source: PipelineSource
    pipeline_type: str
    config: PipelineConfig
    config_path: Path
    models: Mapping[str, ModelFiles]  # only the checkpoints `pipeline_type` runs
    image_cond: Path | None  # a transformers folder with config.json + model.safetensors
    rembg: Path | None


@dataclass(frozen=True)
class _Where:
    """A checkpoint stem located either in a folder or in a repo (not yet downloaded)."""

    key: str
    entry: str
    local: Path | None = None
    repo_id: str | None = None
    subpath: str | None = None


def resolve_pipeline(
    source: str | Path = DEFAULT_REPO,
    pipeline_type: str | None = None,
    *,
    options: HubOptions | None = None,
    downloader: Downloader | None = None,
    on_progress: ProgressCallback | None = None,
    image_cond: bool = True,
    rembg: bool = False,
) -> ResolvedPipeline:
    """Find (and download where needed) what `pipeline_type` runs: pipeline.json, its checkpoints, and
    optionally the image-conditioning and background-removal models pipeline.json names.

    pipeline_type None means pipeline.json's `default_pipeline_type`. Offline (options.offline or a
    downloader with `offline`), anything not cached raises a WeightsError quoting the exact
    `python -m engine download ...` command that fetches it.
    """
    options = options or HubOptions()
    downloader = downloader or HfDownloader(options)
    src = PipelineSource.parse(source)
    command_type = pipeline_type
    try:
        config_path = _pipeline_json(src, downloader)
        config = PipelineConfig.from_json(config_path)
        pipeline_type = check_pipeline_type(pipeline_type or config.default_pipeline_type)
        command_type = pipeline_type
        wheres = [
            _locate_checkpoint(src, key, entry, downloader) for key, entry in config.models_for(pipeline_type).items()
        ]
        cond_where = (
            _component_where(src, config.image_cond_model.model_name, "image_cond_model") if image_cond else None
        )
        rembg_model = config.rembg_model.model_name if config.rembg_model else None
        if rembg and rembg_model is None:
            raise WeightsError(f"{config_path} names no rembg_model, so there is no background remover to fetch")
        rembg_where = _component_where(src, rembg_model, "rembg_model") if rembg else None

        # The large files, all at once: access checks first, then one progress run over everything.
        plan: list[tuple[str, str]] = []
        for w in wheres:
            if w.repo_id is not None:
                plan.append((w.repo_id, f"{w.subpath}.safetensors"))
        for comp, names in ((cond_where, IMAGE_COND_FILES), (rembg_where, REMBG_FILES)):
            if isinstance(comp, str):
                plan.extend((comp, name) for name in names)
        fetched = dict(zip(plan, download_files(downloader, plan, on_progress), strict=True))
    except NotInRepo as exc:
        if exc.offline:
            raise WeightsError(
                f"{exc.repo_id}/{exc.filename} is not downloaded yet and offline mode is on. Download the weights "
                f"once with:\n  "
                f"{download_command(str(src), command_type, options.cache_dir, rembg)}\n"
                "or turn offline mode off."
            ) from exc
        raise

    models = {w.key: _model_files(w, fetched) for w in wheres}
    return ResolvedPipeline(
        source=src,
        pipeline_type=pipeline_type,
        config=config,
        config_path=config_path,
        models=MappingProxyType(models),
        image_cond=_component_dir(cond_where, IMAGE_COND_FILES, fetched),
        rembg=_component_dir(rembg_where, REMBG_FILES, fetched),
    )


def _pipeline_json(src: PipelineSource, downloader: Downloader) -> Path:
    if src.local_dir is not None:
        return src.local_dir / PIPELINE_FILE
    return downloader.fetch(src.repo_id, PIPELINE_FILE)


def _locate_checkpoint(src: PipelineSource, key: str, entry: str, downloader: Downloader) -> _Where:
    """Spec 2.4: the pipeline's own root first, then `owner/repo/<subpath>` as another repo.

    The small `.json` is fetched here (it tells where the pair lives); the `.safetensors` is only
    planned, so access checks and progress cover all large files together.
    """
    parts = entry.strip("/").split("/")
    cross_repo = len(parts) >= 3 and is_repo_id("/".join(parts[:2]))
    if src.local_dir is not None:
        stem = src.local_dir / entry
        config, weights = _side(stem, ".json"), _side(stem, ".safetensors")
        if config.is_file() and weights.is_file():
            return _Where(key, entry, local=stem)
        if config.is_file() or weights.is_file() or not cross_repo:
            _refuse_pickles(stem, key)
            missing = weights if config.is_file() else config
            raise WeightsError(
                f"{src.local_dir}: pipeline.json names {entry!r} for {key}, but {missing} does not exist. "
                "Copy the missing file into that folder (or download the pipeline again)."
            )
    else:
        try:
            downloader.fetch(src.repo_id, f"{entry}.json")
            return _Where(key, entry, repo_id=src.repo_id, subpath=entry)
        except NotInRepo as exc:
            if not cross_repo:
                raise _entry_missing(src.repo_id, key, entry, exc) from exc
    other, subpath = "/".join(parts[:2]), "/".join(parts[2:])
    try:
        downloader.fetch(other, f"{subpath}.json")
    except NotInRepo as exc:
        if exc.offline:
            raise
        raise WeightsError(
            f"{key}: {entry!r} is neither under {src} nor in the repo {other} ({subpath}.json not found there)"
        ) from exc
    return _Where(key, entry, repo_id=other, subpath=subpath)


def _entry_missing(repo_id: str, key: str, entry: str, exc: NotInRepo) -> WeightsError:
    if exc.offline:
        return exc
    return WeightsError(f"{repo_id}: pipeline.json names {entry!r} for {key}, but {entry}.json is not in that repo")


def _side(stem: Path, suffix: str) -> Path:
    return stem.with_name(stem.name + suffix)


def _refuse_pickles(stem: Path, what: str) -> None:
    """A pickle next to a missing safetensors file gets its own message: it is never opened."""
    if _side(stem, ".safetensors").is_file():
        return
    for suffix in PICKLE_SUFFIXES:
        if _side(stem, suffix).is_file():
            raise WeightsError(
                f"{what}: {_side(stem, suffix)} is a pickle checkpoint; only .safetensors weights are loaded "
                "(pickles can run arbitrary code). Convert it to safetensors or download the safetensors release."
            )


def _model_files(where: _Where, fetched: Mapping[tuple[str, str], Path]) -> ModelFiles:
    if where.local is not None:
        return ModelFiles(
            where.key, where.entry, _side(where.local, ".json"), _side(where.local, ".safetensors"), str(where.local)
        )
    weights = fetched[(where.repo_id, f"{where.subpath}.safetensors")]
    config = _side(weights.with_suffix(""), ".json")
    if not config.is_file():  # a downloader that does not keep both files side by side
        raise WeightsError(f"{where.key}: {config} is missing next to {weights}")
    return ModelFiles(where.key, where.entry, config, weights, f"{where.repo_id}/{where.subpath}")


def _component_where(src: PipelineSource, model_name: str | None, key: str) -> Path | str:
    """A folder (relative to a local pipeline root, or absolute) or a repo id to download from."""
    if not model_name:
        raise WeightsError(f"pipeline.json: {key}.args.model_name is missing")
    # Relative names are read against the pipeline folder only: against the working directory they
    # would be ambiguous with repo ids.
    candidates = [src.local_dir / model_name] if src.local_dir is not None else []
    if Path(model_name).expanduser().is_absolute():
        candidates.append(Path(model_name).expanduser())
    for folder in candidates:
        if folder.is_dir():
            _check_component_dir(folder, key)
            return folder.resolve()
    if is_repo_id(model_name):
        return model_name
    raise WeightsError(f"pipeline.json: {key} {model_name!r} is neither a folder nor a Hugging Face repo id")


def _check_component_dir(folder: Path, key: str) -> None:
    if not (folder / "config.json").is_file():
        raise WeightsError(f"{key}: {folder / 'config.json'} does not exist")
    weights = folder / "model.safetensors"
    if weights.is_file() or (folder / "model.safetensors.index.json").is_file():
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise WeightsError(
            f"{key}: {folder} holds {', '.join(pickles)} but no model.safetensors; only safetensors weights are "
            "loaded (pickles can run arbitrary code)"
        )
    raise WeightsError(f"{key}: {weights} does not exist")


def _component_dir(
    where: Path | str | None, names: Sequence[str], fetched: Mapping[tuple[str, str], Path]
) -> Path | None:
    if where is None or isinstance(where, Path):
        return where
    folders = {fetched[(where, name)].parent for name in names}
    if len(folders) != 1:
        raise WeightsError(f"{where}: the downloaded files are not in one folder: {sorted(map(str, folders))}")
    return folders.pop()
