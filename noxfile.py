"""Development sessions for capsule-rt: tests, lint, type checks, demos, benchmarks, docs.

Runs only tools and checks on the working tree; it must not change source files.

Sessions
--------
``tests``
    Installs the project editable with the ``test`` extra and runs ``pytest``;
    extra arguments are passed on (``nox -s tests -- -k tokens``).
``lint``
    ``ruff check .`` and ``ruff format --check .``.
``typecheck``
    Installs the project with the ``test`` extra, ``mypy`` and ``nox``, then runs
    ``mypy``; the files to check come from ``[tool.mypy]`` in ``pyproject.toml``.
``demo``
    Runs ``demos/run_demo.py`` if it exists, otherwise ``capsule check demos/notes``.
``bench``
    Runs every ``benchmarks/*.py`` script in name order, each with
    ``--json benchmarks/results/<name>.json``. Names starting with ``_`` are helper
    modules, not benchmarks, and are skipped. Two benchmarks compare against other
    tools: ``benchmarks/spawn.py`` against bubblewrap and ``benchmarks/fusefs.py`` against
    bindfs, so the session first installs Debian's ``bubblewrap`` and ``bindfs`` with
    ``apt-get`` when their binaries (``bwrap``, ``bindfs``) are missing and it runs as
    root; otherwise it prints the command to run and goes on (those benchmarks then skip
    the rows of the missing tool). The project is installed with its ``peers`` extra
    (Ray), so that ``benchmarks/peers.py`` measures a Ray actor beside capsule; without
    Ray, and always with ``--quick``, that script skips the Ray rows.
``docs``
    Fails if ``docs/`` holds no Markdown file. Runs ``docs/check_docs.py`` if it
    exists; otherwise checks that every relative link in ``docs/**/*.md``,
    ``README.md`` and ``CHANGELOG.md`` points at an existing file.

A bare ``nox`` runs ``lint``, ``typecheck``, ``tests`` and ``docs``: the checks a change
must pass. ``demo`` and ``bench`` narrate or write results rather than check, so they
run only when named (``nox -s demo``, ``nox -s bench``).

Every session that installs the project first makes sure the Debian packages
``libfuse3-dev fuse3 pkg-config`` are present, because ``pyfuse3`` is built from source
against libfuse3. As root they are installed with ``apt-get``; otherwise the session
stops and prints the command to run.

Virtual environments are made with the interpreter that runs nox (the ``venv``
backend; no other tool is needed) and the project is installed editable, so a session
tests the working tree without a rebuild. Reuse of environments follows nox's default:
pass ``-r`` to reuse one (``-R`` also skips the installs).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote

import nox
from nox.command import CommandFailed

ROOT = Path(__file__).resolve().parent
FUSE_PACKAGES = ("libfuse3-dev", "fuse3", "pkg-config")
#: Debian packages the benchmarks compare against, each with the binary that shows it is
#: installed: bwrap for benchmarks/spawn.py, bindfs for benchmarks/fusefs.py.
BENCH_PACKAGES = {"bubblewrap": "bwrap", "bindfs": "bindfs"}

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["lint", "typecheck", "tests", "docs"]


def _fuse_present() -> bool:
    """Whether libfuse3's pkg-config entry and ``fusermount3`` are both installed."""
    pkg_config = shutil.which("pkg-config")
    if pkg_config is None or shutil.which("fusermount3") is None:
        return False
    # Fixed argument list with a resolved executable path: no untrusted input.
    probe = subprocess.run([pkg_config, "--exists", "fuse3"], check=False)  # noqa: S603
    return probe.returncode == 0


def ensure_fuse_packages(session: nox.Session) -> None:
    """Install ``libfuse3-dev fuse3 pkg-config`` with apt-get if missing, or stop the session.

    ``apt-get update`` runs only when the first install attempt fails, so a machine
    with fresh package lists does not pay for it.
    """
    if _fuse_present():
        return
    sudo_command = "sudo apt-get install -y " + " ".join(FUSE_PACKAGES)
    if os.geteuid() != 0:
        session.error(f"libfuse3 (pkg-config fuse3) or fusermount3 is missing; run: {sudo_command}")
    if shutil.which("apt-get") is None:
        session.error(
            "libfuse3 (pkg-config fuse3) or fusermount3 is missing and apt-get is not"
            f" available; install the equivalent of: {' '.join(FUSE_PACKAGES)}"
        )
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    install = ("apt-get", "install", "-y", "--no-install-recommends", *FUSE_PACKAGES)
    try:
        session.run(*install, env=env, external=True)
    except CommandFailed:
        session.log("apt-get install failed; updating the package lists and retrying")
        session.run("apt-get", "update", env=env, external=True)
        session.run(*install, env=env, external=True)
    if not _fuse_present():
        session.error(f"apt-get finished but libfuse3 is still not usable; try: {sudo_command}")


def _install_project(session: nox.Session, target: str = ".", *extra: str) -> None:
    """Install ``target`` (the project, maybe with extras) editable, plus ``extra`` packages.

    The FUSE system packages are checked first: pyfuse3 cannot build without them.
    """
    ensure_fuse_packages(session)
    session.install("-e", target, *extra)


_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_CODE_SPAN = re.compile(r"(`+).+?\1")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*(<[^>]*>|[^)\s]+)[^)]*\)")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def find_broken_links(markdown_files: Iterable[Path], root: Path) -> list[str]:
    """Return one ``file:line: target`` entry for each relative link to a missing file.

    Inline links and images are checked; links with a scheme (``https:``, ``mailto:``)
    and same-page anchors are not. A target starting with ``/`` is read from ``root``,
    any other from the Markdown file's folder. Code blocks and code spans are skipped.
    """
    broken: list[str] = []
    for md_file in markdown_files:
        in_fence = False
        fence = ""
        for number, line in enumerate(md_file.read_text(encoding="utf-8").splitlines(), 1):
            opener = _FENCE.match(line)
            if opener is not None:
                if not in_fence:
                    in_fence, fence = True, opener.group(1)
                elif opener.group(1) == fence:
                    in_fence = False
                continue
            if in_fence:
                continue
            for match in _LINK.finditer(_CODE_SPAN.sub("", line)):
                target = match.group(1).strip("<>")
                if not target or target.startswith("#") or _SCHEME.match(target):
                    continue
                path_part = unquote(re.split(r"[#?]", target, maxsplit=1)[0])
                if path_part.startswith("/"):
                    resolved = root / path_part.lstrip("/")
                else:
                    resolved = md_file.parent / path_part
                if not resolved.exists():
                    shown = md_file.relative_to(root) if md_file.is_relative_to(root) else md_file
                    broken.append(f"{shown}:{number}: {target}")
    return broken


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite with pytest."""
    _install_project(session, ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Check lint rules and formatting with ruff."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """Type-check capsule, fusefs and this file with mypy --strict (config in pyproject)."""
    _install_project(session, ".[test]", "mypy", "nox")
    session.run("mypy", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """Run demos/run_demo.py, or ``capsule check demos/notes`` while that script is missing."""
    _install_project(session)
    run_demo = Path("demos", "run_demo.py")
    if (ROOT / run_demo).is_file():
        session.run("python", str(run_demo), *session.posargs)
    else:
        session.run("capsule", "check", str(Path("demos", "notes")))


def _ensure_bench_packages(session: nox.Session) -> None:
    """Install the ``BENCH_PACKAGES`` whose binary is missing with apt-get, or say how to.

    Only warns when that cannot be done: the benchmarks needing them skip their rows
    instead. ``apt-get update`` runs only when the first install attempt fails.
    """
    missing = [package for package, binary in BENCH_PACKAGES.items() if not shutil.which(binary)]
    if not missing:
        return
    binaries = ", ".join(BENCH_PACKAGES[package] for package in missing)
    sudo_command = "sudo apt-get install -y " + " ".join(missing)
    if os.geteuid() != 0:
        session.warn(
            f"not installed: {binaries} (the benchmarks skip their rows); run: {sudo_command}"
        )
        return
    if shutil.which("apt-get") is None:
        session.warn(
            f"not installed: {binaries} (the benchmarks skip their rows), and apt-get is not"
            f" available; install the equivalent of: {' '.join(missing)}"
        )
        return
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    install = ("apt-get", "install", "-y", "--no-install-recommends", *missing)
    try:
        session.run(*install, env=env, external=True)
    except CommandFailed:
        session.log("apt-get install failed; updating the package lists and retrying")
        session.run("apt-get", "update", env=env, external=True)
        session.run(*install, env=env, external=True)
    still = [
        BENCH_PACKAGES[package] for package in missing if not shutil.which(BENCH_PACKAGES[package])
    ]
    if still:
        session.error(
            f"apt-get finished but {', '.join(still)} still not on PATH; try: {sudo_command}"
        )


@nox.session
def bench(session: nox.Session) -> None:
    """Run every benchmark script and write its results to benchmarks/results/."""
    _install_project(session, ".[peers]")
    _ensure_bench_packages(session)
    scripts = sorted(
        path for path in (ROOT / "benchmarks").glob("*.py") if not path.name.startswith("_")
    )
    if not scripts:
        session.error("no benchmark scripts found in benchmarks/")
    results = Path("benchmarks", "results")
    (ROOT / results).mkdir(parents=True, exist_ok=True)
    for script in scripts:
        output = results / f"{script.stem}.json"
        session.run("python", str(script.relative_to(ROOT)), "--json", str(output))


@nox.session
def docs(session: nox.Session) -> None:
    """Check the documentation: docs/check_docs.py if present, else relative links."""
    docs_dir = ROOT / "docs"
    pages = sorted(docs_dir.rglob("*.md"))
    if not pages:
        session.error("docs/ contains no Markdown files")
    _install_project(session)
    check_docs = Path("docs", "check_docs.py")
    if (ROOT / check_docs).is_file():
        session.run("python", str(check_docs), *session.posargs)
        return
    top_level = [ROOT / name for name in ("README.md", "CHANGELOG.md") if (ROOT / name).is_file()]
    broken = find_broken_links([*top_level, *pages], ROOT)
    for entry in broken:
        session.log(f"broken link: {entry}")
    if broken:
        session.error(f"{len(broken)} broken relative link(s) in the documentation")
    session.log(f"checked links in {len(top_level) + len(pages)} Markdown file(s)")
