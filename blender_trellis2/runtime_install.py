"""Install PyTorch (and spconv on CUDA) into a folder the add-on owns; never into Blender's own Python.

Blender's extension zips may only carry unmodified PyPI wheels, and PyPI's Windows torch is CPU-only, so
torch cannot ride inside the zip. Instead, after the user agrees, `pip install --target` runs in a
subprocess of Blender's Python and fills a folder under the add-on's user directory. This module is
bpy-free: the preferences panel drives it, and tests drive it with stand-in package names and a local
wheel folder (no network).

Layout of the runtime folder:
    runtime.json     the marker: which env is live, what was asked for, what got installed
    env-<key>/       a finished `pip install --target` tree; the one named by runtime.json goes on sys.path
    staging-<key>/   an install in progress; one left behind is a half-finished install, removed next time
    install.log      pip's output for the last install

Installs are idempotent (same plan + everything present = nothing to do) and atomic: pip fills a staging
folder, which is renamed to its env folder, and only then does the marker switch over. A failure at any
point leaves the previous marker, and so the previous runtime, untouched.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

MARKER_FORMAT = 1
TORCH_VERSION = "2.13.0"
SPCONV_REQUIREMENT = "spconv-cu126==2.3.8"
# What the engine needs beside torch and does not ship in the zip: DINOv3 (transformers' native class,
# which pulls in tokenizers and regex) and the quadric decimation of the finishing step.
ENGINE_REQUIREMENTS = ("transformers==5.24.0", "fast-simplification==0.2.0")
PYTORCH_INDEX = "https://download.pytorch.org/whl/{variant}"
# (lowest NVIDIA driver major version, PyTorch CUDA variant), newest first. CUDA 12.8 brings Blackwell
# (RTX 50xx) kernels; 12.6 runs on any CUDA 12 driver through minor-version compatibility.
CUDA_VARIANTS = ((570, "cu128"), (525, "cu126"))
GB = 1024**3


class RuntimeInstallError(Exception):
    """An install, removal or check failed; the message says why and what to do, and nothing was half-changed."""


# ----------------------------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class InstallPlan:
    """What to install and from where: plain data, so a test can swap in stand-in packages and a wheel folder."""

    requirements: tuple[str, ...]
    label: str = ""
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    no_index: bool = False
    expected_bytes: int = 2 * GB

    def key(self) -> str:
        """Stable id of the plan for this Python: a changed version, index or Python gives a new env folder."""
        data = dict(asdict(self), python=python_tag())
        data.pop("label")
        data.pop("expected_bytes")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]

    def names(self) -> tuple[str, ...]:
        return tuple(requirement_name(r) for r in self.requirements)


@dataclass(frozen=True)
class GpuInfo:
    vendor: str  # "nvidia" or "none"
    name: str = ""
    driver_major: int = 0


def detect_gpu(timeout: float = 10.0) -> GpuInfo:
    """Ask `nvidia-smi` (shipped with every NVIDIA driver) which GPU and driver are present; no torch needed."""
    exe = shutil.which("nvidia-smi")
    if exe is None and sys.platform == "win32":
        candidate = Path(os.environ.get("SystemRoot", r"C:\Windows")) / "System32" / "nvidia-smi.exe"
        exe = str(candidate) if candidate.is_file() else None
    if exe is None:
        return GpuInfo("none")
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.info("nvidia-smi did not answer (%s); planning a CPU build", exc)
        return GpuInfo("none")
    first = out.strip().splitlines()[0] if out.strip() else ""
    name, _, driver = first.rpartition(",")
    try:
        return GpuInfo("nvidia", name.strip(), int(driver.strip().split(".")[0]))
    except ValueError:
        return GpuInfo("none")


def default_plan(
    system: str | None = None,
    gpu: GpuInfo | None = None,
    include_spconv: bool = True,
    torch_version: str = TORCH_VERSION,
) -> InstallPlan:
    """The network install for this machine: CUDA torch (+ spconv) with an NVIDIA GPU, MPS torch on macOS, else CPU.

    The CUDA and CPU builds come from PyTorch's own index, asked for by their local version label
    (`torch==X+cu128`), so everything else still comes from the user's usual index (PyPI or a mirror).
    """
    system = system or platform.system()
    if system == "Darwin":
        return InstallPlan(
            (f"torch=={torch_version}", *ENGINE_REQUIREMENTS), label="macOS (Metal / MPS)", expected_bytes=1 * GB
        )
    gpu = gpu if gpu is not None else detect_gpu()
    variant = next((v for lowest, v in CUDA_VARIANTS if gpu.vendor == "nvidia" and gpu.driver_major >= lowest), None)
    if variant is None:
        label = "CPU only" + (f" (NVIDIA driver {gpu.driver_major} is too old for CUDA 12)" if gpu.driver_major else "")
        return InstallPlan(
            (f"torch=={torch_version}+cpu", *ENGINE_REQUIREMENTS),
            label=label,
            extra_index_urls=(PYTORCH_INDEX.format(variant="cpu"),),
            expected_bytes=1 * GB,
        )
    requirements = (f"torch=={torch_version}+{variant}", *ENGINE_REQUIREMENTS)
    requirements += (SPCONV_REQUIREMENT,) if include_spconv else ()
    return InstallPlan(
        requirements,
        label=f"CUDA {variant[2:4]}.{variant[4:]} for {gpu.name}",
        extra_index_urls=(PYTORCH_INDEX.format(variant=variant),),
        expected_bytes=7 * GB,
    )


def wheels_folder_plan(folder: str | Path, names: tuple[str, ...] = ("torch",)) -> InstallPlan:
    """An offline install from a folder of wheels (`--no-index --find-links`); spconv joins when the folder has it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RuntimeInstallError(f"The wheel folder {folder} does not exist; choose the folder holding the .whl files")
    wheels = sorted(p.name for p in folder.glob("*.whl"))
    if not wheels:
        raise RuntimeInstallError(f"{folder} holds no .whl files; download the wheels into it first (see INSTALL.md)")
    spconv = sorted({normalize_name(w.split("-")[0]) for w in wheels if w.lower().startswith("spconv")})
    return InstallPlan(
        names + tuple(spconv[:1]),
        label=f"wheels from {folder}",
        find_links=(str(folder),),
        no_index=True,
        expected_bytes=sum((folder / w).stat().st_size for w in wheels) * 2,
    )


# ------------------------------------------------------------------------------------- names & metadata


def normalize_name(name: str) -> str:
    """PEP 503 normalisation: `Fake_Torch` and `fake-torch` are the same distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not match:
        raise ValueError(f"not a requirement: {requirement!r}")
    return normalize_name(match.group(1))


def requirement_pin(requirement: str) -> str | None:
    """The exact version of `name==X` (local label included), or None for an open requirement."""
    match = re.match(r"\s*[A-Za-z0-9._-]+\s*==\s*([^\s;,]+)\s*$", requirement)
    return match.group(1) if match else None


def python_tag() -> str:
    return f"{sys.implementation.name}{sys.version_info[0]}.{sys.version_info[1]}"


def installed_versions(site_dir: str | Path) -> dict[str, str]:
    """Distribution name -> version from the *.dist-info folders in `site_dir`, without importing anything."""
    versions = {}
    for info in Path(site_dir).glob("*.dist-info"):
        name, _, version = info.name[: -len(".dist-info")].partition("-")
        versions[normalize_name(name)] = version
    return versions


# --------------------------------------------------------------------------------------------- state


@dataclass(frozen=True)
class RuntimeLayout:
    """The runtime folder and the names inside it."""

    root: Path

    @property
    def marker(self) -> Path:
        return self.root / "runtime.json"

    @property
    def log_file(self) -> Path:
        return self.root / "install.log"

    def env_dir(self, key: str) -> Path:
        return self.root / f"env-{key}"

    def staging_dir(self, key: str) -> Path:
        return self.root / f"staging-{key}"


@dataclass(frozen=True)
class RuntimeState:
    """What is installed, read from the marker and the dist-info folders (cheap: nothing is imported)."""

    installed: bool
    paths: tuple[str, ...] = ()
    packages: dict[str, str] = field(default_factory=dict)
    plan_key: str = ""
    label: str = ""
    command: tuple[str, ...] = ()
    requested: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()

    def summary(self) -> str:
        """'torch 2.13.0+cu128, spconv-cu126 2.3.8': the requested packages and the versions found on disk."""
        if not self.installed:
            return "no runtime installed"
        return ", ".join(f"{n} {self.packages.get(n, 'missing')}" for n in self.requested) or "installed"


def read_state(layout: RuntimeLayout) -> RuntimeState:
    """The live runtime and anything the user should know about (half-finished install, wrong Python)."""
    problems = [
        f"A previous install did not finish ({p.name}); the next install removes it."
        for p in sorted(layout.root.glob("staging-*"))
    ]
    if not layout.marker.is_file():
        return RuntimeState(False, problems=tuple(problems))
    try:
        marker = json.loads(layout.marker.read_text(encoding="utf-8"))
        env = layout.root / marker["env"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        problems.append(f"The runtime marker {layout.marker} is unreadable ({exc}); install the runtime again.")
        return RuntimeState(False, problems=tuple(problems))
    if not env.is_dir():
        problems.append(f"The runtime folder {env} is missing; install the runtime again.")
        return RuntimeState(False, problems=tuple(problems))
    if marker.get("python") != python_tag():
        problems.append(
            f"The runtime was installed for Python {marker.get('python')}, but this Blender runs {python_tag()}; "
            "install the runtime again."
        )
        return RuntimeState(False, problems=tuple(problems))
    return RuntimeState(
        True,
        paths=(str(env),),
        packages=installed_versions(env),
        plan_key=marker.get("key", ""),
        label=marker.get("label", ""),
        command=tuple(marker.get("command", ())),
        requested=tuple(requirement_name(r) for r in marker.get("requirements", ())),
        problems=tuple(problems),
    )


def activate(paths: tuple[str, ...] | list[str]) -> list[str]:
    """Append `paths` to sys.path (after Blender's own packages, which must win); returns the ones added."""
    added = [p for p in paths if p not in sys.path]
    sys.path.extend(added)
    return added


def deactivate(paths: list[str]) -> None:
    for p in paths:
        while p in sys.path:
            sys.path.remove(p)


def check_external_env(site_packages: str | Path, package: str = "torch") -> str | None:
    """None if `site_packages` holds `package` built for this Python, else a message saying what is wrong."""
    site = Path(site_packages)
    if not site.is_dir():
        return f"{site} is not a folder; choose the site-packages folder of a Python {python_tag()} environment"
    module_dir = site / package.replace("-", "_")
    if not (module_dir / "__init__.py").is_file():
        return f"{site} has no {package}; choose the site-packages folder of the environment (it holds {package}/)"
    # `_C.cpython-311-x86_64-linux-gnu.so`, `_C.cp311-win_amd64.pyd`: the tag names the Python it was built for.
    tagged = [p.name for p in module_dir.glob("_C.*.*") if p.suffix in (".so", ".pyd")]
    binaries = [b for b in tagged if b[len("_C") :] not in importlib.machinery.EXTENSION_SUFFIXES]
    if tagged and len(binaries) == len(tagged):
        return (
            f"The {package} in {site} was built for another Python ({binaries[0]}); Blender runs {python_tag()}. "
            f"Use an environment made with Python {sys.version_info[0]}.{sys.version_info[1]}."
        )
    return None


# ------------------------------------------------------------------------------------------- install


@dataclass(frozen=True)
class InstallResult:
    changed: bool
    message: str
    state: RuntimeState


def pip_launcher(python: str = sys.executable) -> list[str]:
    """How to run pip with Blender's Python: its own pip, else the pip wheel that ships inside ensurepip."""
    probe = subprocess.run([python, "-s", "-c", "import pip"], capture_output=True, env=_child_env(), check=False)
    if probe.returncode == 0:
        return [python, "-s", "-m", "pip"]
    found = subprocess.run(
        [python, "-s", "-c", "import ensurepip, pathlib; print(pathlib.Path(ensurepip.__file__).parent / '_bundled')"],
        capture_output=True,
        text=True,
        env=_child_env(),
        check=False,
    )
    wheels = sorted(Path(found.stdout.strip()).glob("pip-*.whl")) if found.returncode == 0 else []
    if not wheels:
        raise RuntimeInstallError(
            f"This Python ({python}) has neither pip nor ensurepip, so nothing can be installed with it. "
            "Point the add-on at an existing Python environment instead (Preferences > Runtime source)."
        )
    return [python, "-s", str(wheels[-1] / "pip")]


def pip_command(plan: InstallPlan, target: Path, launcher: list[str]) -> list[str]:
    """The exact pip command: binary wheels only (no compiler anywhere), into `target`, never Blender's folders."""
    cmd = [*launcher, "install", "--target", str(target), "--only-binary", ":all:"]
    cmd += ["--disable-pip-version-check", "--no-input", "--progress-bar", "off", "--no-warn-script-location"]
    if plan.no_index:
        cmd.append("--no-index")
    for link in plan.find_links:
        cmd += ["--find-links", link]
    for url in plan.extra_index_urls:
        cmd += ["--extra-index-url", url]
    return cmd + list(plan.requirements)


def _child_env() -> dict[str, str]:
    """The user's pip settings (proxy, mirror) pass through; Python search paths do not leak into pip."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PYTHONNOUSERSITE"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def ensure_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise RuntimeInstallError(
            f"The runtime folder {folder} is not writable ({exc.strerror or exc}). Fix its permissions, start Blender "
            "as a user who owns it, or point the add-on at an existing Python environment instead."
        ) from exc


def ensure_free_space(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise RuntimeInstallError(
            f"The runtime needs about {needed / GB:.1f} GB free on the disk holding {folder}, "
            f"but only {free / GB:.1f} GB is free. Free some space and install again."
        )


class InstallJob:
    """One install, started at once and polled: the modal operator polls it from a timer, `install()` loops.

    pip writes into `install.log`; `poll()` returns new log lines while pip runs and finishes the swap
    when it ends, so no thread is ever needed.
    """

    def __init__(
        self, plan: InstallPlan, layout: RuntimeLayout, python: str = sys.executable, launcher: list[str] | None = None
    ):
        self.plan, self.layout = plan, layout
        self.key = plan.key()
        self.staging = layout.staging_dir(self.key)
        self.previous = read_state(layout)
        self.result: InstallResult | None = None
        self.lines: list[str] = []
        self.command: list[str] = []
        self._python, self._launcher = python, launcher
        self._proc: subprocess.Popen | None = None
        self._log_offset = 0
        self._log_fh = None

    def up_to_date(self) -> bool:
        state = self.previous
        pins = {requirement_name(r): requirement_pin(r) for r in self.plan.requirements}
        return (
            state.installed
            and state.plan_key == self.key
            and all(n in state.packages and (p is None or state.packages[n] == p) for n, p in pins.items())
        )

    def start(self) -> None:
        if self.up_to_date():
            self.result = InstallResult(False, f"Already installed: {self.previous.summary()}", self.previous)
            return
        ensure_writable(self.layout.root)
        for leftover in self.layout.root.glob("staging-*"):
            log.info("removing the half-finished install %s", leftover)
            shutil.rmtree(leftover, ignore_errors=True)
        if self.staging.exists():
            raise RuntimeInstallError(f"Could not remove the half-finished install {self.staging}; delete it by hand")
        ensure_free_space(self.layout.root, self.plan.expected_bytes)
        launcher = self._launcher or pip_launcher(self._python)
        self.command = pip_command(self.plan, self.staging, launcher)
        self._log_fh = open(self.layout.log_file, "w", encoding="utf-8")  # closed in _finish or cancel
        self._log_fh.write("$ " + " ".join(self.command) + "\n")
        self._log_fh.flush()
        try:
            self._proc = subprocess.Popen(self.command, stdout=self._log_fh, stderr=subprocess.STDOUT, env=_child_env())
        except OSError as exc:
            self._log_fh.close()
            raise RuntimeInstallError(f"Could not start pip ({exc}); nothing was changed") from exc

    def poll(self) -> list[str]:
        """New output lines; sets `self.result` (or raises RuntimeInstallError) once pip has finished."""
        if self.result is not None or self._proc is None:
            return []
        code = self._proc.poll()
        new = self._read_new_lines()
        if code is not None:
            new += self._read_new_lines()
            self._finish(code)
        return new

    def cancel(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(timeout=30)
            self._close()
            shutil.rmtree(self.staging, ignore_errors=True)
            raise RuntimeInstallError(f"Install cancelled; nothing was changed ({self._still_there()})")

    def _read_new_lines(self) -> list[str]:
        with open(self.layout.log_file, "rb") as fh:
            fh.seek(self._log_offset)
            data = fh.read()
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self._log_offset += end + 1
        lines = data[:end].decode("utf-8", errors="replace").splitlines()
        self.lines += lines
        return lines

    def _close(self) -> None:
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def _still_there(self) -> str:
        return f"still using {self.previous.summary()}" if self.previous.installed else "no runtime installed"

    def _finish(self, code: int) -> None:
        self._close()
        if code != 0:
            shutil.rmtree(self.staging, ignore_errors=True)
            reason = explain_pip_failure("\n".join(self.lines), self.plan)
            still = self._still_there()
            raise RuntimeInstallError(f"{reason}\nNothing was changed ({still}). Log: {self.layout.log_file}")
        got = installed_versions(self.staging)
        for requirement in self.plan.requirements:
            name, pin = requirement_name(requirement), requirement_pin(requirement)
            if name not in got or (pin is not None and got[name] != pin):
                shutil.rmtree(self.staging, ignore_errors=True)
                raise RuntimeInstallError(
                    f"pip finished but {requirement} is not in the result ({got.get(name, 'missing')}); "
                    f"nothing was changed ({self._still_there()}). Log: {self.layout.log_file}"
                )
        env = self.layout.env_dir(self.key)
        try:
            if env.exists():  # same plan, damaged files: move it aside (a rename fails cleanly if in use)
                os.replace(env, env.with_name(f"{env.name}-old{os.getpid()}"))
            os.replace(self.staging, env)
            write_marker(self.layout, env, self.plan, self.command, self.key)
        except OSError as exc:
            shutil.rmtree(self.staging, ignore_errors=True)
            raise RuntimeInstallError(f"Could not put the new runtime in place ({exc}); {self._still_there()}") from exc
        leftovers = remove_old_envs(self.layout, keep=env)
        state = read_state(self.layout)
        message = f"Installed {state.summary()} ({self.plan.label or 'runtime'})."
        if leftovers:
            message += " Restart Blender to finish removing the previous version."
        self.result = InstallResult(True, message, state)


def write_marker(layout: RuntimeLayout, env: Path, plan: InstallPlan, command: list[str], key: str) -> None:
    """Switch the live runtime in one step: write a temporary file, then rename it over the marker."""
    data = {
        "format": MARKER_FORMAT,
        "env": env.name,
        "key": key,
        "python": python_tag(),
        "label": plan.label,
        "requirements": list(plan.requirements),
        "command": command,
        "installed": installed_versions(env),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    tmp = layout.marker.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, layout.marker)


def remove_old_envs(layout: RuntimeLayout, keep: Path | None) -> list[Path]:
    """Delete env folders other than `keep`; returns those that could not go (DLLs in use on Windows)."""
    left = []
    for env in sorted(layout.root.glob("env-*")):
        if env != keep:
            shutil.rmtree(env, ignore_errors=True)
            if env.exists():
                left.append(env)
    return left


def install(
    plan: InstallPlan,
    layout: RuntimeLayout,
    on_line: Callable[[str], None] | None = None,
    python: str = sys.executable,
    poll_s: float = 0.2,
) -> InstallResult:
    """Blocking install for scripts and tests; the same steps the preferences button runs from a timer."""
    job = InstallJob(plan, layout, python=python)
    job.start()
    while job.result is None:
        for line in job.poll():
            if on_line is not None:
                on_line(line)
        if job.result is None:
            time.sleep(poll_s)
    return job.result


def remove(layout: RuntimeLayout) -> str:
    """Forget the runtime first (the marker goes), then delete its folders; what stays locked goes next start."""
    if not layout.root.exists():
        return "No runtime installed; nothing to remove."
    try:
        layout.marker.unlink(missing_ok=True)
    except OSError as exc:
        raise RuntimeInstallError(f"Could not remove {layout.marker} ({exc}); check the folder's permissions") from exc
    left = remove_old_envs(layout, keep=None)
    for staging in layout.root.glob("staging-*"):
        shutil.rmtree(staging, ignore_errors=True)
    if left:
        return "Runtime removed; restart Blender to delete the files still in use: " + ", ".join(map(str, left))
    return "Runtime removed."


# --------------------------------------------------------------------------------------- explanations

_NETWORK = ("Failed to establish a new connection", "Temporary failure in name resolution", "NewConnectionError",
            "ConnectTimeout", "ProxyError", "Network is unreachable", "Connection refused", "Max retries exceeded",
            "getaddrinfo failed", "CERTIFICATE_VERIFY_FAILED")  # fmt: skip
_DISK = ("No space left on device", "[Errno 28]", "not enough space on the disk")
_PERMISSION = ("Permission denied", "[Errno 13]", "Access is denied")
_BAD_WHEEL = ("BadZipFile", "is not a zip file", "has an invalid wheel", "invalid wheel", "is not a valid wheel")
_WRONG_PLATFORM = ("is not a supported wheel on this platform",)


def explain_pip_failure(output: str, plan: InstallPlan) -> str:
    """Turn pip's output into one sentence a person can act on."""
    where = f"Python {sys.version_info[0]}.{sys.version_info[1]} on {platform.system()} {platform.machine()}"
    if any(s in output for s in _DISK):
        return "The disk is full: pip ran out of space while installing. Free some space and install again."
    if any(s in output for s in _PERMISSION):
        return "pip was not allowed to write its files (permission denied). Choose a folder you own."
    if any(s in output for s in _BAD_WHEEL):
        bad = re.search(r"([\w.+-]+\.whl)", output)
        return f"A wheel file is damaged ({bad.group(1) if bad else 'see the log'}): download it again."
    if any(s in output for s in _WRONG_PLATFORM):
        return f"A wheel does not fit this Blender ({where}); use wheels built for it."
    if not plan.no_index and any(s in output for s in _NETWORK):
        return (
            "Could not reach the package index (no network, a proxy or a firewall). Connect and try again, "
            "or install from a folder of wheels (see the offline install in INSTALL.md)."
        )
    missing = re.search(r"No matching distribution found for (\S+)", output)
    if missing:
        if plan.no_index:
            return (
                f"No wheel for {missing.group(1)} in {', '.join(plan.find_links)} fits this Blender ({where}); "
                "download the wheels for this Python version and platform."
            )
        return f"No build of {missing.group(1)} exists for this Blender ({where})."
    tail = "\n".join(output.strip().splitlines()[-5:])
    return f"pip failed:\n{tail}"


# ----------------------------------------------------------------------------------------------- probe

PROBE_SCRIPT = r"""
import json, sys
sys.path.extend(json.loads(sys.argv[1]))
out = {"python": sys.version.split()[0], "torch": None}
try:
    import torch
except Exception as exc:
    out["torch_error"] = f"{type(exc).__name__}: {exc}"
else:
    out["torch"] = torch.__version__
    out["cuda"] = bool(torch.cuda.is_available())
    out["cuda_device"] = torch.cuda.get_device_name(0) if out["cuda"] else ""
    out["mps"] = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if out["cuda"]:
        try:
            import spconv
            import spconv.pytorch
            out["spconv"] = getattr(spconv, "__version__", "yes")
        except Exception as exc:
            out["spconv_error"] = f"{type(exc).__name__}: {exc}"
print("PROBE" + json.dumps(out))
"""


def start_probe(paths: tuple[str, ...] | list[str], python: str = sys.executable) -> subprocess.Popen:
    """Import torch in a child process: a broken torch install must not take Blender down with it."""
    return subprocess.Popen(
        [python, "-s", "-c", PROBE_SCRIPT, json.dumps(list(paths))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_child_env(),
    )


def read_probe(proc: subprocess.Popen, timeout: float | None = None) -> dict:
    out, err = proc.communicate(timeout=timeout)
    for line in out.splitlines():
        if line.startswith("PROBE"):
            return json.loads(line[len("PROBE") :])
    return {"torch": None, "torch_error": (err.strip().splitlines() or ["the check crashed"])[-1]}
