"""`python -m engine <command>`: the engine's command line, one subcommand per function pair.

A subcommand is `_add_<name>(subparsers)` (its arguments, `func=_run_<name>`) plus `_run_<name>(args, out, err)`
returning an exit code; register the adder in `SUBCOMMANDS`. Errors the engine raises for people
(`EngineError`) are printed without a traceback and exit with 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from engine.errors import EngineError

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


class ProgressBar:
    """A one-line text bar for `engine.hub.DownloadProgress` reports, redrawn at most `fps` times a second."""

    def __init__(self, stream: TextIO, width: int = 30, fps: float = 8.0) -> None:
        self.stream, self.width, self.interval = stream, width, 1.0 / fps
        self._last = 0.0
        self._shown = False

    def __call__(self, p) -> None:
        now = time.monotonic()
        if not p.finished and now - self._last < self.interval:
            return
        self._last = now
        if p.overall_total:
            frac = min(1.0, p.overall_done / p.overall_total)
            bar = "#" * int(frac * self.width)
            amount = f"{frac:4.0%} {_size(p.overall_done)}/{_size(p.overall_total)}"
        else:
            bar, amount = "", _size(p.overall_done)
        name = p.file if len(p.file) <= 48 else "..." + p.file[-45:]
        line = f"[{bar:<{self.width}}] {amount}  {p.files_done}/{p.files_total} files  {name}"
        self.stream.write("\r" + line.ljust(110)[:110])
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _read_token(path: str | None) -> str | None:
    if path is None:
        return None
    file = Path(path).expanduser()
    try:
        token = file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise EngineError(f"cannot read the token file {file}: {exc}") from exc
    if not token:
        raise EngineError(f"the token file {file} is empty; paste a Hugging Face read token into it")
    return token


# ----------------------------------------------------------------------------------------------- download


def _add_download(subparsers) -> None:
    from engine.config import PIPELINE_TYPES
    from engine.hub import DEFAULT_REPO

    p = subparsers.add_parser(
        "download",
        help="fetch the weights a pipeline type needs into the Hugging Face cache",
        description="Download (or, with --offline, check) only the files the chosen pipeline type runs: "
        "pipeline.json, its checkpoints and the DINOv3 image encoder. Interrupted downloads resume.",
    )
    p.add_argument("source", nargs="?", default=DEFAULT_REPO, help=f"repo id or local folder (default {DEFAULT_REPO})")
    p.add_argument("--pipeline-type", choices=PIPELINE_TYPES, help="default: pipeline.json's default_pipeline_type")
    p.add_argument("--cache-dir", type=Path, help="Hugging Face cache folder (default: huggingface_hub's own)")
    p.add_argument("--token-file", help="file holding a Hugging Face read token (needed for gated models)")
    p.add_argument("--offline", action="store_true", help="use the cache only; report what is missing")
    p.add_argument("--no-image-cond", action="store_true", help="skip the DINOv3 image encoder")
    p.add_argument("--rembg", action="store_true", help="also fetch the background-removal model pipeline.json names")
    p.set_defaults(func=_run_download)


def _run_download(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from engine.hub import HubOptions, resolve_pipeline

    options = HubOptions(cache_dir=args.cache_dir, token=_read_token(args.token_file), offline=args.offline)
    bar = ProgressBar(err)
    try:
        resolved = resolve_pipeline(
            args.source,
            args.pipeline_type,
            options=options,
            on_progress=bar,
            image_cond=not args.no_image_cond,
            rembg=args.rembg,
        )
    finally:
        bar.close()
    out.write(f"pipeline {resolved.source} (type {resolved.pipeline_type}): {resolved.config_path}\n")
    for key, files in resolved.models.items():
        out.write(f"  {key}: {files.weights}\n")
    for label, folder in (("image encoder", resolved.image_cond), ("background remover", resolved.rembg)):
        if folder is not None:
            out.write(f"  {label}: {folder}\n")
    return 0


# ----------------------------------------------------------------------------------------------- generate


class StageBar:
    """`on_progress(stage, step, total)` as a one-line text bar per stage."""

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        self.stream, self.width = stream, width
        self.stage: str | None = None
        self.started = time.monotonic()

    def __call__(self, stage: str, step: int, total: int) -> None:
        if stage != self.stage:
            if self.stage is not None:
                self.stream.write("\n")
            self.stage, self.started = stage, time.monotonic()
        done = int(self.width * step / max(total, 1))
        elapsed = time.monotonic() - self.started
        self.stream.write(f"\r{stage:<17} [{'#' * done:<{self.width}}] {step}/{total}  {elapsed:6.1f} s")
        self.stream.flush()

    def close(self) -> None:
        if self.stage is not None:
            self.stream.write("\n")
            self.stream.flush()


def _add_generate(subparsers) -> None:
    from engine.hub import DEFAULT_REPO
    from engine.multiview import MULTI_IMAGE_MODES

    p = subparsers.add_parser(
        "generate",
        help="image(s) of one object -> a 3D asset (.npz with mesh + PBR voxels, or a textured .glb)",
        description="Run the TRELLIS.2 pipeline on one or more views of one object. Images with transparency "
        "use their alpha; others need --remove-background.",
    )
    p.add_argument("images", nargs="+", help="image files (PNG with alpha recommended)")
    p.add_argument("--model", default=DEFAULT_REPO, help=f"repo id or local folder (default {DEFAULT_REPO})")
    p.add_argument("--resolution", type=int, choices=(512, 1024, 1536), default=1024)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("-o", "--output", type=Path, required=True, help="OUT.npz (raw asset) or OUT.glb (finished)")
    p.add_argument("--device", choices=("auto", "cuda", "mps", "cpu"), default="auto")
    p.add_argument("--memory", choices=("low_vram", "fast"), default="low_vram")
    p.add_argument("--multi-image-mode", choices=MULTI_IMAGE_MODES, default="stochastic")
    p.add_argument("--face-budget", type=int, default=200_000, help="faces of the .glb mesh")
    p.add_argument("--texture-size", type=int, default=2048, help="edge of the .glb texture maps")
    p.add_argument(
        "--remove-background",
        nargs="?",
        const="ZhengPeng7/BiRefNet",
        metavar="REPO_OR_DIR",
        help="cut images without transparency out with BiRefNet (default weights ZhengPeng7/BiRefNet, MIT; "
        "briaai/RMBG-2.0 is gated and non-commercial)",
    )
    p.add_argument("--cache-dir", type=Path, help="Hugging Face cache folder")
    p.add_argument("--token-file", help="file holding a Hugging Face read token")
    p.add_argument("--offline", action="store_true", help="use downloaded weights only")
    p.set_defaults(func=_run_generate)


def _run_generate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from engine.hub import HubOptions
    from engine.pipeline import GenerationSettings, Trellis2Pipeline
    from engine.runtime import Runtime

    suffix = args.output.suffix.lower()
    if suffix not in (".npz", ".glb"):
        raise EngineError(f"the output must end in .npz or .glb, got {args.output.name!r}")
    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise EngineError(f"image not found: {', '.join(missing)}")
    options = HubOptions(cache_dir=args.cache_dir, token=_read_token(args.token_file), offline=args.offline)
    settings = GenerationSettings.for_resolution(
        args.resolution, seed=args.seed, multi_image_mode=args.multi_image_mode
    )
    runtime = Runtime.auto(args.device)
    remover = None
    if args.remove_background:
        from engine.background.remover import BiRefNetRemover

        remover = BiRefNetRemover.from_pretrained(
            args.remove_background,
            device=runtime.device,
            token=options.token,
            local_files_only=args.offline,
            cache_dir=args.cache_dir,
        )
    download_bar = ProgressBar(err)
    try:
        pipe = Trellis2Pipeline.from_pretrained(
            args.model,
            runtime=runtime,
            pipeline_type=settings.pipeline_type,
            memory=args.memory,
            options=options,
            on_download=download_bar,
            remover=remover,
        )
    finally:
        download_bar.close()
    bar = StageBar(err)
    try:
        generation = pipe.run(args.images, settings, on_progress=bar)
    finally:
        bar.close()
    asset = generation.asset
    if suffix == ".npz":
        asset.save(args.output)
    else:
        from engine.finish.asset import finish
        from engine.finish.gltf import write_glb

        finished = finish(
            asset.vertices, asset.faces, asset, face_budget=args.face_budget, texture_size=args.texture_size
        )
        write_glb(finished, args.output)
    out.write(
        f"wrote {args.output}: {len(asset.faces):,} faces, {len(asset.coords):,} voxels at {asset.resolution}^3\n"
    )
    return 0


# ----------------------------------------------------------------------------------------------- entry

SUBCOMMANDS: tuple[Callable, ...] = (_add_download, _add_generate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description="TRELLIS.2 engine (image to 3D)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        return args.func(args, out, err)
    except EngineError as exc:
        err.write(f"error: {exc}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        err.write("interrupted; run the same command again to resume\n")
        return EXIT_INTERRUPTED
