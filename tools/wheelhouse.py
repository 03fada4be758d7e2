"""Write a wheelhouse for an offline (air-gapped) machine: exactly the wheels it lacks.

Run this on a machine that reaches the package index. It needs to know what the target
already has (its ``pip freeze``, ``pip list`` or ``pip inspect`` output, or a list of names),
its Python version and platform (default: CPython 3.12, manylinux x86_64, glibc >= 2.28).
It builds the ``ssl_cropmix`` wheel from this checkout, walks the dependencies of that wheel
(``Requires-Dist``, with the extras asked for, environment markers evaluated for the target),
stops at every package the target already has in a version that satisfies the requirement,
and downloads the wheels of the rest with ``pip download --no-deps --only-binary=:all:
--python-version ... --platform ... --implementation ... --abi ...``. A pure-Python package
published only as a source archive (``antlr4-python3-runtime``, needed by ``hydra-core``) is
built into a ``py3-none-any`` wheel here, so the target never builds anything.

It never downloads ``torch``, ``torchvision``, ``torchaudio``, ``triton``, ``nvidia-*`` or
``cuda-*``: the target's CUDA build stays as it is. A requirement on one of them that the target
does not satisfy is an error that names it (update the node's torch first), not a download.

    # on the target (offline), once:
    python -m pip freeze --all > target-freeze.txt
    # here (online), from the checkout's root:
    python tools/wheelhouse.py --have target-freeze.txt            # writes ./wheelhouse/
    # copy the checkout with wheelhouse/ to the target; there, from the checkout's root:
    python -m pip install --no-index --find-links wheelhouse 'ssl_cropmix[demo]'

The install line resolves against what the target has (no ``--no-deps``): packages already
there in a satisfying version are kept, the missing ones come from ``wheelhouse/``, and if
anything were still missing pip stops with "No matching distribution" instead of leaving a
half-installed package. Since the wheelhouse holds no torch, pip cannot replace the
target's torch: at worst it refuses.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

REPO = Path(__file__).resolve().parents[1]

#: Never downloaded: the target's own CUDA build of torch and what comes with it.
PROTECTED = re.compile(r"^(torch|torchvision|torchaudio|triton|pytorch-triton.*|nvidia-.*|cuda-.*)$")


class PlanError(RuntimeError):
    """The target cannot be completed from a wheelhouse (e.g. its torch is too old)."""


@dataclass
class Fetched:
    """One wheel written to the wheelhouse."""

    name: str
    version: str
    path: Path
    requires: list[str]


@dataclass
class Plan:
    """What the walk decided: wheels to ship, target packages kept (name -> why)."""

    wheels: dict[str, Fetched] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=dict)
    upgrades: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------- what the target has
def parse_have(text: str) -> tuple[dict[str, str | None], dict[str, str]]:
    """Installed packages of the target, from the output of one of:

    ``pip freeze [--all]`` (``name==1.2``, ``name @ url``), ``pip list`` (the two-column
    table), ``pip list --format=json``, ``pip inspect`` (its ``environment`` is returned too),
    or a plain list of names, one a line (version unknown: taken as satisfying).

    Returns:
        ``({canonical name: version or None}, pip-inspect environment markers or {})``.
    """
    text = text.strip()
    have: dict[str, str | None] = {}
    env: dict[str, str] = {}
    if text.startswith(("{", "[")):
        data = json.loads(text)
        if isinstance(data, dict):  # pip inspect
            env = {k: str(v) for k, v in data.get("environment", {}).items()}
            items = [(d["metadata"]["name"], d["metadata"]["version"]) for d in data.get("installed", [])]
        else:  # pip list --format=json
            items = [(d["name"], d.get("version")) for d in data]
        return {canonicalize_name(n): v for n, v in items}, env
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip() if not line.lstrip().startswith("-e") else line.strip()
        if not line or set(line) <= {"-", " "} or line.lower().startswith(("package ", "package\t")):
            continue
        if line.startswith("-e"):  # -e git+...#egg=name / -e /path
            m = re.search(r"egg=([A-Za-z0-9_.\-]+)", line)
            if m:
                have[canonicalize_name(m.group(1))] = None
            continue
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9_.\-]*)\s*@", line)  # name @ file:///...
        if m:
            have[canonicalize_name(m.group(1))] = None
            continue
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9_.\-]*)\s*(?:\[[^\]]*\])?\s*(==|===|\s)\s*(\d[^\s;]*)", line)
        if m and m.group(2).strip() in ("==", "===", ""):
            have[canonicalize_name(m.group(1))] = m.group(3)
            continue
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9_.\-]*)$", line)
        if m:
            have[canonicalize_name(m.group(1))] = None
            continue
        raise ValueError(f"--have: cannot read line {line!r} (expected pip freeze / pip list / pip inspect output)")
    return have, env


def target_environment(python_version: str, machine: str = "x86_64", overrides: dict[str, str] | None = None
                       ) -> dict[str, str]:
    """PEP 508 marker values of a CPython ``python_version`` on Linux ``machine``."""
    parts = python_version.split(".")
    if len(parts) < 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"python_version must look like '3.12' or '3.12.3', got {python_version!r}")
    full = ".".join(parts + ["0"] * (3 - len(parts)))
    env = {
        "python_version": ".".join(parts[:2]), "python_full_version": full, "implementation_name": "cpython",
        "implementation_version": full, "platform_python_implementation": "CPython", "sys_platform": "linux",
        "platform_system": "Linux", "platform_machine": machine, "os_name": "posix", "platform_release": "",
        "platform_version": "",
    }
    env.update(overrides or {})
    return env


def satisfied(version: str | None, spec: SpecifierSet) -> bool:
    """Whether an installed ``version`` (None: unknown, taken as yes) meets ``spec``.
    A local label (``2.11.0+cu130``) counts as its public version."""
    if version is None:
        return True
    try:
        return spec.contains(Version(version), prereleases=True)
    except InvalidVersion:
        return True


# ----------------------------------------------------------------------------- the walk
def plan(requirements: list[str], have: dict[str, str | None], env: dict[str, str],
         fetch: Callable[[str, SpecifierSet], Fetched]) -> Plan:
    """Walk ``requirements`` and their dependencies; fetch what ``have`` lacks.

    A small resolver: each name gets the newest version allowed by every requirement seen so
    far; if a later requirement excludes the version already fetched, it is fetched again.
    Packages the target has in a satisfying version are kept and not descended into (their
    own dependencies are installed there already).

    Raises:
        PlanError: a protected package (torch, torchvision, nvidia-*, ...) is missing on the
            target or too old/new for a requirement.
    """
    out = Plan()
    specs: dict[str, SpecifierSet] = {}
    extras: dict[str, set[str]] = {}
    done_extras: dict[str, set[str]] = {}
    needed_by: dict[str, list[str]] = {}
    queue: list[tuple[str, str]] = [(r, "ssl_cropmix") for r in requirements]
    while queue:
        raw, parent = queue.pop(0)
        req = Requirement(raw)
        name = canonicalize_name(req.name)
        specs[name] = specs.get(name, SpecifierSet()) & req.specifier
        extras.setdefault(name, set()).update(req.extras)
        needed_by.setdefault(name, []).append(f"{parent} ({req.specifier or 'any'})")
        spec = specs[name]
        if name in have:
            if satisfied(have[name], spec):
                out.kept[name] = f"{have[name] or '(version unknown)'} meets {spec or 'any'}"
                continue
            if PROTECTED.match(name):
                raise PlanError(f"the target's {name} {have[name]} does not meet {spec} (needed by "
                                f"{', '.join(needed_by[name])}); update it on the target first - this tool never "
                                f"ships {name}")
            out.upgrades[name] = f"{have[name]} -> {spec}"
        elif PROTECTED.match(name):
            raise PlanError(f"the target has no {name} (needed by {', '.join(needed_by[name])}); install the "
                            f"site's CUDA build of {name} there first - this tool never ships {name}")
        got = out.wheels.get(name)
        if got is None or not satisfied(got.version, spec):
            if got is not None:
                got.path.unlink(missing_ok=True)
            got = out.wheels[name] = fetch(name, spec)
            done_extras[name] = set()
            new = {""} | extras[name]
        else:
            new = extras[name] - done_extras[name]
            if not new:
                continue
        for dep in got.requires:
            r = Requirement(dep)
            if (r.marker is None and "" in new) or (
                    r.marker is not None and any(r.marker.evaluate({**env, "extra": e}) for e in new)):
                queue.append((dep, f"{name} {got.version}"))
        done_extras[name] |= new
    return out


# ----------------------------------------------------------------------------- pip
def wheel_metadata(path: Path) -> tuple[str, str, list[str]]:
    """``(name, version, Requires-Dist lines)`` read from a wheel's METADATA."""
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        msg = Parser().parsestr(z.read(meta).decode("utf-8"))
    return msg["Name"], msg["Version"], msg.get_all("Requires-Dist") or []


def manylinux_platforms(glibc: str, machine: str) -> list[str]:
    """pip ``--platform`` tags a glibc-``glibc`` Linux ``machine`` runs (pip matches tags exactly)."""
    major, minor = (int(x) for x in glibc.split("."))
    if major != 2 or minor < 17:
        raise ValueError(f"glibc must be 2.17 or newer, got {glibc!r}")
    tags = [f"manylinux_2_{m}_{machine}" for m in range(minor, 16, -1)]
    return tags + [f"manylinux2014_{machine}", f"manylinux2010_{machine}", f"manylinux1_{machine}"]


class PipFetcher:
    """``fetch(name, spec)`` for :func:`plan`: ``pip download --no-deps`` of one wheel for the
    target into ``dest``; a source-only pure-Python package is built into a wheel here."""

    def __init__(self, dest: Path, python_version: str, platforms: list[str], implementation: str = "cp",
                 abi: str | None = None, log: Callable[[str], None] = print) -> None:
        self.dest, self.log = dest, log
        pv = "".join(python_version.split(".")[:2])
        self.target = ["--only-binary=:all:", "--python-version", python_version, "--implementation", implementation,
                       "--abi", abi or f"{implementation}{pv}"]
        for p in platforms:
            self.target += ["--platform", p]

    def __call__(self, name: str, spec: SpecifierSet) -> Fetched:
        tmp = Path(tempfile.mkdtemp(prefix=f"wh-{name}-", dir=self.dest))
        try:
            req = f"{name}{spec}"
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(tmp), *self.target, req]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            built = proc.returncode != 0
            if built:
                if "No matching distribution" not in proc.stderr:
                    raise PlanError(f"pip download {req} failed:\n{proc.stderr.strip()[-2000:]}")
                self.log(f"  {req}: no wheel for the target on the index; building one from its source here")
                proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp), req],
                                      capture_output=True, text=True)
                if proc.returncode != 0:
                    raise PlanError(f"no wheel for {req} on the index, and building one failed:\n"
                                    f"{proc.stderr.strip()[-2000:]}")
            wheels = list(tmp.glob("*.whl"))
            if len(wheels) != 1:
                raise PlanError(f"pip wrote {len(wheels)} wheels for {req}, expected one: {wheels}")
            w = wheels[0]
            tags = parse_wheel_filename(w.name)[3]
            if built and not any(t.platform == "any" for t in tags):
                raise PlanError(f"{w.name} was built here for this machine, not the target; it is not pure Python")
            final = self.dest / w.name
            shutil.move(str(w), final)
            n, v, requires = wheel_metadata(final)
            return Fetched(canonicalize_name(n), v, final, requires)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def build_self(dest: Path) -> Path:
    """Build this checkout's ``ssl_cropmix`` wheel (pure Python) into ``dest``."""
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dest), str(REPO)]
    try:  # the build backend is here already: no download of setuptools into an isolated env
        import setuptools  # noqa: F401
        import wheel  # noqa: F401

        cmd.insert(4, "--no-build-isolation")
    except ImportError:
        pass
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PlanError(f"building the ssl_cropmix wheel failed:\n{proc.stderr.strip()[-2000:]}")
    return next(dest.glob("ssl_cropmix-*.whl"))


def install_line(dest: str, extras: list[str]) -> str:
    """The one line to run on the target, from the checkout's root."""
    target = "ssl_cropmix" + (f"[{','.join(extras)}]" if extras else "")
    return f"python -m pip install --no-index --find-links {dest} '{target}'"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--have", required=True,
                   help="file with the target's `pip freeze --all` / `pip list` / `pip list --format=json` / "
                        "`pip inspect` output, or a list of names")
    p.add_argument("--dest", default=str(REPO / "wheelhouse"), help="wheelhouse folder (default: ./wheelhouse, ignored by git)")
    p.add_argument("--python-version", default=None, help="target's Python, e.g. 3.12 (default: from `pip inspect`, else 3.12)")
    p.add_argument("--glibc", default="2.28", help="target's glibc (oldest manylinux tag accepted: 2.17 up to this); default 2.28")
    p.add_argument("--machine", default="x86_64", help="target's CPU architecture (default x86_64)")
    p.add_argument("--platform", action="append", default=None, help="explicit pip --platform tags (replace --glibc's list)")
    p.add_argument("--implementation", default="cp")
    p.add_argument("--abi", default=None, help="default cp<version>, e.g. cp312")
    p.add_argument("--extras", default="demo", help="ssl_cropmix extras to include, comma-separated (default: demo; '' for none)")
    p.add_argument("--no-self", action="store_true", help="leave the ssl_cropmix wheel out (install the checkout instead)")
    p.add_argument("--overwrite", action="store_true", help="empty --dest first if it holds wheels")
    a = p.parse_args(argv)

    have, inspect_env = parse_have(Path(a.have).read_text())
    pyver = a.python_version or inspect_env.get("python_full_version") or "3.12"
    env = target_environment(pyver, a.machine, inspect_env if not a.python_version else None)
    platforms = a.platform or manylinux_platforms(a.glibc, a.machine)
    extras = [e for e in a.extras.split(",") if e]
    dest = Path(a.dest)
    if dest.exists() and any(dest.iterdir()):
        if not a.overwrite:
            print(f"wheelhouse: {dest} is not empty; pass --overwrite to replace its wheels", file=sys.stderr)
            return 2
        for f in dest.iterdir():
            f.unlink() if f.is_file() else shutil.rmtree(f)
    dest.mkdir(parents=True, exist_ok=True)
    print(f"wheelhouse: target CPython {env['python_full_version']} on {platforms[0]} (+{len(platforms) - 1} older "
          f"tags), {len(have)} packages installed there; writing {dest}")
    try:
        self_whl = build_self(dest)
        _, version, requires = wheel_metadata(self_whl)
        top = [r for r in requires
               if Requirement(r).marker is None or any(Requirement(r).marker.evaluate({**env, "extra": e})
                                                        for e in ["", *extras])]
        if a.no_self:
            self_whl.unlink()
        result = plan(top, {k: v for k, v in have.items() if k != "ssl-cropmix"}, env,
                      PipFetcher(dest, pyver, platforms, a.implementation, a.abi))
    except PlanError as e:
        print(f"wheelhouse: {e}", file=sys.stderr)
        return 1
    for name, why in sorted(result.kept.items()):
        print(f"  kept on the target: {name} {why}")
    for name, why in sorted(result.upgrades.items()):
        print(f"  UPGRADED on the target: {name} {why}")
    files = sorted(dest.glob("*.whl"))
    total = sum(f.stat().st_size for f in files)
    print(f"\nwheelhouse: {len(files)} wheels, {total / 2**20:.2f} MiB in {dest}")
    for f in files:
        print(f"  {f.stat().st_size / 2**10:9.1f} KiB  {f.name}")
    line = install_line(os.path.relpath(dest, REPO) if dest.resolve().is_relative_to(REPO) else str(dest), extras)
    if a.no_self:
        line = (f"python -m pip install --no-index --find-links {dest} --no-build-isolation -e "
                f"'.{'[' + ','.join(extras) + ']' if extras else ''}'  # needs setuptools>=68 and wheel there")
    (dest / "INSTALL.txt").write_text(f"# on the target, from the checkout's root, no network needed:\n{line}\n")
    print(f"\non the target, from the checkout's root (no network; its torch is not touched):\n  {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
