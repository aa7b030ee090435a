"""Build the installable extension: one zip per platform in Blender's split-platform layout, byte-reproducible.

    python build.py                  # fetch missing wheels into wheels/, write the manifest's wheels, build dist/
    python build.py --offline        # use only the wheels already in --wheels-dir (CI cache, air-gapped machines)
    python build.py --wheels-dir DIR --out DIR

What goes into each zip (the extension's root module is the add-on package itself):
    blender_manifest.toml     the repo's manifest plus a [build.generated] table naming this platform and its wheels
    __init__.py, ...          everything in blender_trellis2/
    _vendor/engine/...        engine/; the add-on appends _vendor to sys.path at register, so `import engine` works
                              the same from the installed extension as from the repo (where engine/ is top level)
    wheels/*.whl              this platform's wheels for Python 3.11 (Blender 4.2-5.0) and 3.13 (5.1+)

Wheels: the pure or per-platform packages the add-on imports besides torch (safetensors, huggingface-hub and its
dependencies, Pillow, which Blender does not bundle), pinned in LOCK. Torch and spconv are not shipped: PyPI's
Windows torch is CPU-only and the CUDA builds are gigabytes, so the runtime installer fetches them after consent.
numpy is not shipped: Blender bundles it and nothing here needs another one.

Reproducible: the pins, the sources and the wheel files decide the bytes; entries are sorted, timestamps fixed.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags, mac_platforms
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parent
ADDON = ROOT / "blender_trellis2"
ENGINE = ROOT / "engine"
MANIFEST = ROOT / "blender_manifest.toml"
VENDOR = "_vendor"

PYTHONS = ((3, 11), (3, 13))
# Blender platform -> the wheel platform tags it runs, best first (Blender 4.2: glibc 2.28, macOS 11).
PLATFORM_TAGS = {
    "windows-x64": ["win_amd64"],
    "linux-x64": [f"manylinux_2_{m}_x86_64" for m in range(28, 16, -1)] + ["manylinux2014_x86_64"],
    "macos-arm64": list(mac_platforms((11, 0), "arm64")),
}
MARKER_ENV = {
    "windows-x64": dict(sys_platform="win32", platform_system="Windows", platform_machine="AMD64", os_name="nt"),
    "linux-x64": dict(sys_platform="linux", platform_system="Linux", platform_machine="x86_64", os_name="posix"),
    "macos-arm64": dict(sys_platform="darwin", platform_system="Darwin", platform_machine="arm64", os_name="posix"),
}

# What the add-on imports itself; their dependency closure (read from each wheel's METADATA) ships too.
ROOTS = ("safetensors", "huggingface-hub", "pillow")
# Every shipped distribution, pinned. A dependency missing here, or a pin that breaks a requirement, fails the build.
LOCK = {
    "anyio": "4.16.0",
    "click": "8.5.1",
    "colorama": "0.4.6",
    "filelock": "4.2.12",
    "fsspec": "2026.9.0",
    "h11": "0.16.0",
    "hf-xet": "1.8.0",
    "httpcore2": "2.16.2",
    "httpx2": "2.16.2",
    "huggingface-hub": "2.4.0",
    "idna": "3.20",
    "packaging": "26.3",
    "pillow": "13.0.0",
    "pyyaml": "6.0.4",
    "safetensors": "0.8.0",
    "tqdm": "4.70.1",
    "truststore": "0.10.5",
    "typing-extensions": "4.16.0",
}
BLENDER_PROVIDES = {"numpy"}  # bundled with Blender: required by a wheel is fine, shipped never
NEVER_SHIP = {"torch", "numpy", "triton", "spconv", "cumm"}  # also any name starting with spconv- / cumm- / nvidia-

FIXED_TIME = (1980, 1, 1, 0, 0, 0)
EXCLUDED_PARTS = ("__pycache__",)
EXCLUDED_SUFFIXES = (".pyc", ".pyo", ".zip", ".blend1")
WHEELS_BEGIN, WHEELS_END = "  # BEGIN WHEELS (written by build.py)", "  # END WHEELS"


class BuildError(Exception):
    """The build cannot produce a correct zip; the message says what to fix."""


@dataclass(frozen=True)
class Target:
    platform: str
    python: tuple[int, int]

    @property
    def tags(self) -> list[Tag]:
        """Supported tags, best first, as pip ranks them for this Blender."""
        plats = PLATFORM_TAGS[self.platform]
        return list(cpython_tags(self.python, platforms=plats)) + list(compatible_tags(self.python, platforms=plats))

    def marker_env(self) -> dict[str, str]:
        version = f"{self.python[0]}.{self.python[1]}"
        return dict(
            MARKER_ENV[self.platform],
            python_version=version,
            python_full_version=version + ".0",
            implementation_name="cpython",
            platform_python_implementation="CPython",
            extra="",
        )


TARGETS = tuple(Target(p, v) for p in PLATFORM_TAGS for v in PYTHONS)


def never_ship(name: str) -> bool:
    return name in NEVER_SHIP or name.startswith(("spconv-", "cumm-", "nvidia-", "torch"))


# ----------------------------------------------------------------------------------------------- wheels


def pick_wheel(wheels_dir: Path, name: str, version: str, target: Target) -> Path | None:
    """The best cached wheel of `name==version` for `target` (the one pip would choose), or None."""
    rank = {tag: i for i, tag in enumerate(target.tags)}
    best, best_rank = None, len(rank)
    for path in sorted(wheels_dir.glob("*.whl")):
        dist, ver, _, tags = parse_wheel_filename(path.name)
        if dist != name or str(ver) != version:
            continue
        r = min((rank[t] for t in tags if t in rank), default=len(rank))
        if r < best_rank:
            best, best_rank = path, r
    return best


def download(wheels_dir: Path, target: Target, names: list[str]) -> None:
    """pip download the pinned wheels for one target; --no-deps because LOCK, not pip, decides the set."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(wheels_dir)]
    cmd += ["--python-version", f"{target.python[0]}.{target.python[1]}", "--implementation", "cp"]
    cmd += ["--disable-pip-version-check", "--progress-bar", "off", "--quiet"]
    for tag in PLATFORM_TAGS[target.platform]:
        cmd += ["--platform", tag]
    cmd += [f"{n}=={LOCK[n]}" for n in names]
    print(f"downloading for {target.platform} cp{target.python[0]}{target.python[1]}: {' '.join(names)}")
    if subprocess.run(cmd, check=False).returncode != 0:
        raise BuildError(f"pip download failed for {target}; check the network or run with --offline and a full cache")


def requires(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        message = Parser().parsestr(zf.read(meta).decode("utf-8"))
    return [Requirement(r) for r in message.get_all("Requires-Dist") or []]


def resolve(wheels_dir: Path, target: Target, offline: bool) -> list[Path]:
    """The wheels one Blender needs: the roots and, following each wheel's metadata, their dependencies."""
    missing = [n for n in LOCK if pick_wheel(wheels_dir, n, LOCK[n], target) is None]
    if missing and offline:
        raise BuildError(f"--offline: no wheel in {wheels_dir} for {target}: " + ", ".join(missing))
    if missing:
        download(wheels_dir, target, missing)
    env = target.marker_env()
    chosen: dict[str, Path] = {}
    todo = [Requirement(r) for r in ROOTS]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = canonicalize_name(req.name)
        if name in BLENDER_PROVIDES:
            continue
        if never_ship(name):
            raise BuildError(f"{name} must not ride in the zip (the runtime installer provides it)")
        if name not in LOCK:
            raise BuildError(f"{name} is needed on {target} but not pinned: add it to LOCK in build.py")
        if not req.specifier.contains(LOCK[name], prereleases=True):
            raise BuildError(f"LOCK pins {name}=={LOCK[name]}, which breaks the requirement {req}")
        if name in chosen:
            continue
        wheel = pick_wheel(wheels_dir, name, LOCK[name], target)
        if wheel is None:
            raise BuildError(f"no wheel of {name}=={LOCK[name]} fits {target}")
        chosen[name] = wheel
        todo.extend(requires(wheel))
    return sorted(chosen.values())


def gather_wheels(wheels_dir: Path, offline: bool) -> dict[str, list[str]]:
    """Blender platform -> the sorted wheel file names it ships (both Pythons)."""
    wheels_dir.mkdir(parents=True, exist_ok=True)
    per_platform: dict[str, set[str]] = {p: set() for p in PLATFORM_TAGS}
    for target in TARGETS:
        per_platform[target.platform].update(w.name for w in resolve(wheels_dir, target, offline))
    return {p: sorted(names) for p, names in per_platform.items()}


# --------------------------------------------------------------------------------------------- manifest


def write_manifest_wheels(text: str, wheels: list[str]) -> str:
    """Replace the lines between the BEGIN/END WHEELS comments with `wheels`, keeping everything else."""
    begin, end = text.find(WHEELS_BEGIN), text.find(WHEELS_END)
    if begin < 0 or end < begin:
        raise BuildError(f"{MANIFEST.name} lost its '{WHEELS_BEGIN.strip()}' / '{WHEELS_END.strip()}' lines")
    body = "".join(f'  "./wheels/{w}",\n' for w in wheels)
    return text[: begin + len(WHEELS_BEGIN)] + "\n" + body + text[end:]


def generated_table(platform: str, wheels: list[str]) -> str:
    """The table Blender's own `extension build --split-platforms` appends to each platform's manifest."""
    listed = ", ".join(f'"./wheels/{w}"' for w in wheels)
    return (
        "\n\n# BEGIN GENERATED CONTENT.\n# This must not be included in source manifests.\n[build.generated]\n"
        f'platforms = ["{platform}"]\nwheels = [{listed}]\n# END GENERATED CONTENT.\n'
    )


# -------------------------------------------------------------------------------------------------- zip


def source_files(folder: Path, prefix: str) -> dict[str, Path]:
    """Archive name -> file for everything in `folder`, minus caches, dot-files and build leftovers."""
    files = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_dir() or any(p.startswith(".") or p in EXCLUDED_PARTS for p in rel.parts):
            continue
        if path.suffix in EXCLUDED_SUFFIXES:
            continue
        files[prefix + rel.as_posix()] = path
    return files


def write_zip(out: Path, entries: dict[str, bytes]) -> None:
    """Sorted entries, fixed timestamps and modes: the same entries always give the same bytes."""
    tmp = out.with_name("." + out.name)
    with zipfile.ZipFile(tmp, "w") as zf:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
            info.create_system = 3
            info.external_attr = 0o100644 << 16
            stored = name.endswith(".whl")  # already compressed
            info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
            zf.writestr(info, entries[name], compresslevel=None if stored else 9)
    tmp.replace(out)


def build_zip(platform: str, wheels: list[str], manifest_text: str, wheels_dir: Path, out_dir: Path) -> Path:
    manifest = tomllib.loads(manifest_text)
    entries = {"blender_manifest.toml": (manifest_text + generated_table(platform, wheels)).encode("utf-8")}
    sources = source_files(ADDON, "") | source_files(ENGINE, f"{VENDOR}/engine/")
    for name, path in sources.items():
        entries[name] = path.read_bytes()
    for wheel in wheels:
        entries[f"wheels/{wheel}"] = (wheels_dir / wheel).read_bytes()
    out = out_dir / f"{manifest['id']}-{manifest['version']}-{platform.replace('-', '_')}.zip"
    out_dir.mkdir(parents=True, exist_ok=True)
    write_zip(out, entries)
    return out


# --------------------------------------------------------------------------------------------- validate

ID_RE = re.compile(r"^[a-z][a-z0-9_]*[a-z0-9]$")
VERSION_RE = re.compile(r"^\d+\.\d+\.\d+([-+][0-9A-Za-z.-]+)?$")
PERMISSIONS = {"files", "network", "clipboard", "camera", "microphone"}


def terse_error(value: object) -> str | None:
    """Blender's rule for taglines and permission reasons: a short string not ending in punctuation."""
    if not isinstance(value, str) or not value.strip() or len(value) > 64:
        return "must be a non-empty string of at most 64 characters"
    if not (value[-1].isalnum() or value[-1] in ")]}"):
        return "must not end with punctuation"
    return None


def validate_manifest(manifest: dict) -> list[str]:
    errors = []
    checks = {
        "schema_version": lambda v: v == "1.0.0",
        "id": lambda v: isinstance(v, str) and bool(ID_RE.match(v)) and "__" not in v,
        "version": lambda v: isinstance(v, str) and bool(VERSION_RE.match(v)),
        "name": lambda v: isinstance(v, str) and bool(v.strip()),
        "maintainer": lambda v: isinstance(v, str) and bool(v.strip()),
        "type": lambda v: v == "add-on",
        "blender_version_min": lambda v: isinstance(v, str) and tuple(map(int, v.split("."))) >= (4, 2, 0),
        "license": lambda v: isinstance(v, list) and v and all(isinstance(x, str) and x.startswith("SPDX:") for x in v),
        "platforms": lambda v: isinstance(v, list) and v and set(v) <= set(PLATFORM_TAGS),
    }
    for key, ok in checks.items():
        if key not in manifest:
            errors.append(f"manifest: missing {key}")
        elif not ok(manifest[key]):
            errors.append(f"manifest: bad {key} = {manifest[key]!r}")
    if error := terse_error(manifest.get("tagline")):
        errors.append(f"manifest: tagline {error}")
    permissions = manifest.get("permissions", {})
    for key in ("network", "files"):
        if key not in permissions:
            errors.append(f"manifest: permission {key} needs a reason")
    for key, reason in permissions.items():
        if key not in PERMISSIONS:
            errors.append(f"manifest: unknown permission {key}")
        elif error := terse_error(reason):
            errors.append(f"manifest: permission {key} {error}")
    return errors


def validate_zip(path: Path, platform: str) -> list[str]:
    """Schema, the platform's wheels and nothing else: every listed wheel present, no stray or cache files."""
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        manifest = tomllib.loads(zf.read("blender_manifest.toml").decode("utf-8"))
    generated = manifest.get("build", {}).get("generated", {})
    manifest.update({k: generated[k] for k in ("platforms", "wheels") if k in generated})
    errors = validate_manifest(manifest)
    if manifest.get("platforms") != [platform]:
        errors.append(f"{path.name}: platforms should be [{platform!r}], found {manifest.get('platforms')}")
    listed = manifest.get("wheels", [])
    for wheel in listed:
        if not wheel.startswith("./wheels/") or f"wheels/{wheel[len('./wheels/') :]}" not in names:
            errors.append(f"{path.name}: listed wheel {wheel} is not in the zip")
            continue
        dist, _, _, tags = parse_wheel_filename(wheel.rsplit("/", 1)[1])
        if never_ship(dist):
            errors.append(f"{path.name}: {dist} must not be shipped")
        if not any(tags & set(Target(platform, v).tags) for v in PYTHONS):
            errors.append(f"{path.name}: {wheel} does not run on {platform}")
    for required in ("__init__.py", f"{VENDOR}/engine/__init__.py"):
        if required not in names:
            errors.append(f"{path.name}: missing {required}")
    expected = {"blender_manifest.toml"} | {w[2:] for w in listed}
    expected |= set(source_files(ADDON, "")) | set(source_files(ENGINE, f"{VENDOR}/engine/"))
    for name in names:
        if name not in expected:
            errors.append(f"{path.name}: stray file {name}")
    if len(set(names)) != len(names):
        errors.append(f"{path.name}: duplicate entries")
    return errors


def blender_validator() -> Path | None:
    """Blender's own `extension validate` script, when the bpy module is installed (dev and CI venvs)."""
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        return None
    hits = sorted(
        Path(next(iter(spec.submodule_search_locations))).glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py")
    )
    return hits[-1] if hits else None


def validate_with_blender(path: Path, script: Path) -> list[str]:
    done = subprocess.run([sys.executable, str(script), "validate", str(path)], capture_output=True, text=True)
    return [] if done.returncode == 0 else [f"{path.name}: Blender's validator: {done.stdout}{done.stderr}".strip()]


# ------------------------------------------------------------------------------------------------- main


def build(wheels_dir: Path, out_dir: Path, offline: bool = False, write_manifest: bool = True) -> list[Path]:
    """Gather wheels, update the manifest's list, write and validate one zip per platform."""
    per_platform = gather_wheels(wheels_dir, offline)
    all_wheels = sorted(set().union(*per_platform.values()))
    text = write_manifest_wheels(MANIFEST.read_text(encoding="utf-8"), all_wheels)
    if write_manifest and text != MANIFEST.read_text(encoding="utf-8"):
        MANIFEST.write_text(text, encoding="utf-8")
    errors = validate_manifest(tomllib.loads(text))
    zips = [build_zip(p, per_platform[p], text, wheels_dir, out_dir) for p in PLATFORM_TAGS]
    script = blender_validator()
    for path, platform in zip(zips, PLATFORM_TAGS, strict=True):
        errors += validate_zip(path, platform)
        if script is not None:
            errors += validate_with_blender(path, script)
    if errors:
        raise BuildError("the built zips are not valid:\n  " + "\n  ".join(errors))
    return zips


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wheels-dir", type=Path, default=ROOT / "wheels", help="wheel cache (default: wheels/)")
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="where the zips go (default: dist/)")
    parser.add_argument("--offline", action="store_true", help="never download; every wheel must be in --wheels-dir")
    args = parser.parse_args(argv)
    try:
        zips = build(args.wheels_dir.resolve(), args.out.resolve(), offline=args.offline)
    except BuildError as exc:
        print(f"build.py: {exc}", file=sys.stderr)
        return 1
    for path in zips:
        print(f"{path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
