"""Headless use: `blender -c trellis2 generate ...` and `python -m blender_trellis2 ...` (the bpy module).

Both call `main(argv)`:
    generate IMG [IMG ...] -o out.blend [--model DIR_OR_REPO] [--resolution 512|1024|1536] [--seed N]
             [--render out.png] ...      image(s) -> a .blend with the lit result (and a Cycles PNG)
    demo [--out out/]                    tiny random checkpoint + synthetic picture -> demo.blend, demo.png
Errors meant for people print as `error: ...` and exit with status 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import bpy

from . import api, relight, work

EXIT_ERROR = 1
DEMO_SEED = 1


def _ensure_registered() -> None:
    """`python -m blender_trellis2` starts with the add-on unregistered: register it (cheap)."""
    if not hasattr(bpy.types.Object, "trellis2"):
        from . import register

        register()


def _empty_scene() -> bpy.types.Scene:
    """Remove the startup file's objects (without resetting preferences, which would disable the add-on)."""
    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj)
    return bpy.context.scene


class _Progress:
    """One status line per stage change, on stdout (logs stay readable in CI)."""

    def __init__(self) -> None:
        self.stage, self.start = None, time.monotonic()

    def __call__(self, stage: str, step: int, total: int) -> None:
        if stage != self.stage or step == total:
            print(f"[{time.monotonic() - self.start:7.1f}s] {stage} {step}/{total}", flush=True)
            self.stage = stage


def _model(args) -> work.ModelOptions:
    if args.model is None:
        return api.model_options()
    token = Path(args.token_file).expanduser().read_text().strip() if args.token_file else None
    return work.ModelOptions(
        source=str(args.model),
        cache_dir=str(args.cache_dir) if args.cache_dir else None,
        token=token,
        device=args.device,
        memory=args.memory,
    )


def generate(args) -> int:
    _ensure_registered()
    scene = _empty_scene()
    obj = api.generate(
        [str(Path(p).resolve()) for p in args.images],
        resolution=args.resolution,
        seed=args.seed,
        face_budget=args.face_budget,
        texture_size=args.texture_size,
        object_size=args.size,
        model=_model(args),
        on_progress=_Progress(),
        scene=scene,
    )
    print(f"object '{obj.name}': {len(obj.data.polygons):,} faces, seed {obj.trellis2.seed}")
    if args.light != "NONE":
        api.relight(obj, args.light, scene=scene)
    return _save_and_render(args.output, args.render, args.render_size, args.samples)


def _save_and_render(blend: Path, png: Path | None, size: int, samples: int) -> int:
    if png is not None:
        path = relight.render_still(png, size=size, samples=samples)
        print(f"render: {path}")
    blend = Path(blend).resolve()
    blend.parent.mkdir(parents=True, exist_ok=True)
    bpy.ops.wm.save_as_mainfile(filepath=str(blend), check_existing=False)
    print(f"saved: {blend}")
    return 0


def demo_image(path: Path, size: int = 256) -> Path:
    """A synthetic RGBA picture: a rounded orange body with a blue band, on transparent background."""
    from PIL import Image, ImageDraw

    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    m = size // 8
    draw.ellipse((m, m, size - m, size - m // 2), fill=(220, 120, 40, 255))
    draw.rectangle((m, size // 2 - m // 2, size - m, size // 2 + m // 2), fill=(40, 90, 200, 255))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def demo(args) -> int:
    out = Path(args.out).resolve()
    checkpoint = out / "tiny_checkpoint"
    if not (checkpoint / "pipeline.json").is_file():
        from engine.tiny_checkpoint import write_tiny_checkpoint

        print(f"writing a tiny random checkpoint to {checkpoint} (about 20 s)")
        write_tiny_checkpoint(checkpoint)
    picture = demo_image(out / "demo_input.png")
    args = argparse.Namespace(
        images=[picture],
        output=out / "demo.blend",
        render=out / "demo.png",
        model=checkpoint,
        resolution=512,
        seed=DEMO_SEED,
        face_budget=200_000,
        texture_size=512,
        size=1.0,
        cache_dir=None,
        token_file=None,
        device="cpu",
        memory="low_vram",
        light="STUDIO",
        render_size=args.render_size,
        samples=args.samples,
    )
    print("(a random tiny model: the shape is noise; the point is the whole path, image to lit .blend)")
    return generate(args)


def build_parser(prog: str = "python -m blender_trellis2") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="TRELLIS.2 image to 3D, headless")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    g = sub.add_parser("generate", help="image(s) of one object -> a .blend (and a PNG render)")
    g.add_argument("images", nargs="+", type=Path, help="pictures of the object (PNG with alpha works best)")
    g.add_argument("-o", "--output", type=Path, required=True, help="the .blend to write")
    g.add_argument("--model", help="Hugging Face repo id or local folder with pipeline.json (default: preferences)")
    g.add_argument("--resolution", type=int, choices=(512, 1024, 1536), default=1024)
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--face-budget", type=int, default=200_000)
    g.add_argument("--texture-size", type=int, choices=(256, 512, 1024, 2048, 4096), default=1024)
    g.add_argument("--size", type=float, default=1.0, help="longest side of the object in metres")
    g.add_argument("--cache-dir", type=Path, help="where downloaded weights go")
    g.add_argument("--token-file", help="file with a Hugging Face read token (gated repositories)")
    g.add_argument("--device", choices=("auto", "cuda", "mps", "cpu"), default="auto")
    g.add_argument("--memory", choices=("low_vram", "fast"), default="low_vram")
    g.add_argument("--light", choices=("STUDIO", "SKY", "NONE"), default="STUDIO", help="relight setup to add")
    _render_args(g)
    g.add_argument("--render", type=Path, help="also render a PNG with Cycles (CPU) to this path")
    g.set_defaults(func=generate)

    d = sub.add_parser("demo", help="tiny random checkpoint + synthetic image -> out/demo.blend and out/demo.png")
    d.add_argument("--out", type=Path, default=Path("out"))
    _render_args(d)
    d.set_defaults(func=demo)
    return parser


def _render_args(p) -> None:
    p.add_argument("--render-size", type=int, default=256, help="render width and height in pixels")
    p.add_argument("--samples", type=int, default=16, help="Cycles samples")


def main(argv: Sequence[str] | None = None, prog: str = "python -m blender_trellis2") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:  # noqa: BLE001 - people get the message; unexpected ones also their traceback
        message = work.explain(exc)
        if message.startswith("TRELLIS.2 failed unexpectedly"):
            raise
        print(f"error: {message}", file=sys.stderr)
        return EXIT_ERROR


def blender_command(argv: list[str]) -> int:
    """The `blender -c trellis2 ...` entry (bpy.utils.register_cli_command)."""
    try:
        return main(argv, prog="blender -c trellis2")
    except SystemExit as exc:  # argparse's --help and usage errors
        return int(exc.code or 0)


_handle = None


def register() -> None:
    global _handle
    _handle = bpy.utils.register_cli_command("trellis2", blender_command)


def unregister() -> None:
    global _handle
    if _handle is not None:
        bpy.utils.unregister_cli_command(_handle)
        _handle = None
