"""Where the Python runtime is on the host, and where the zygote and its containers see it.

Computed once by the supervisor, from its own interpreter (the zygote runs the same one).
In the *neutral* layout the runtime is shown beneath ``/usr/lib/capsule`` (the interpreter's
prefix at ``python``, each site-packages at ``site-packages``, packages from a source tree
at ``packages/NAME``), as hidden mounts that name no host directory; the distribution's
library directories (``/usr/lib/x86_64-linux-gnu``) stay where they are. In the *host*
layout (when the zygote cannot have a mount namespace of its own) every directory is
shown at its own path. Computed from ``sys`` and ``/proc/self/maps``; mounts nothing, and
writes only the rewritten build data :func:`rewrite_build_data` is asked for.
"""

from __future__ import annotations

import glob
import os
import py_compile
import struct
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Final, Literal

from msgspec.structs import replace as replace_bind

from capsule._sandbox._view import Bind

__all__ = [
    "NEUTRAL_ROOT",
    "Mode",
    "RuntimeLayout",
    "neutral_support",
    "plan_runtime",
    "rewrite_build_data",
]

#: where the neutral layout shows the runtime
NEUTRAL_ROOT: Final = "/usr/lib/capsule"
#: library directories every distribution has, shown at their own paths
_SYSTEM_LIBS: Final = ("/usr/lib", "/lib", "/usr/lib64", "/lib64", "/usr/lib32", "/lib32")
_TOP_LINKS: Final = ("lib", "lib64", "lib32", "libx32", "bin", "sbin")
_PT_INTERP: Final = 3

Mode = Literal["neutral", "host"]


@dataclass(frozen=True, slots=True)
class RuntimeLayout:
    """The runtime's mounts (host source, shown target), links, and how to start the zygote."""

    mode: Mode
    binds: tuple[Bind, ...]
    symlinks: tuple[tuple[str, str], ...]
    #: the interpreter as the zygote sees it
    executable: str
    #: the zygote's ``sys.path``, as it sees it
    path: tuple[str, ...]
    #: where the zygote's interpreter finds the libraries it links to outside the system's
    #: directories (its ``LD_LIBRARY_PATH``: the host path its binary names is not there)
    library_path: tuple[str, ...] = ()
    #: why the layout is not neutral ("" when it is)
    reason: str = ""

    def to_host(self, path: str) -> str:
        """``path`` as the zygote sees it, on the host (unchanged if no mount covers it)."""
        for bind in sorted(self.binds, key=lambda b: -len(b.target)):
            if _covered(path, [bind.target]):
                return bind.source + path[len(bind.target) :]
        return path


def neutral_support() -> tuple[bool, str]:
    """Whether the zygote can be given a mount namespace and overlays of its own (and if
    not, why): it needs to be root on the host (a user namespace of its own would cut it
    off from the host's mount namespace, where file-system servers mount) and overlayfs."""
    if os.geteuid() != 0:
        return False, "not root: the zygote has no mount namespace of its own"
    try:
        with open("/proc/filesystems", encoding="ascii") as f:
            known = {line.split()[-1] for line in f if line.strip()}
    except OSError as exc:
        return False, f"cannot read /proc/filesystems: {exc}"
    if "overlay" not in known:
        return False, "the kernel has no overlayfs (modprobe overlay)"
    return True, ""


def _covered(path: str, roots: Iterable[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def _mapped_libraries() -> Iterator[str]:
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
        for line in maps:
            path = line.rstrip("\n").partition("/")[2]
            if path and ".so" in path and not path.endswith(" (deleted)"):
                yield "/" + path


def _interpreter(executable: str) -> str | None:
    """The ELF program interpreter (``/lib64/ld-linux-x86-64.so.2``) ``executable`` names."""
    try:
        with open(executable, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit ELF only
                return None
            order = "<" if head[5] == 1 else ">"
            (phoff,) = struct.unpack_from(order + "Q", head, 32)
            phentsize, phnum = struct.unpack_from(order + "HH", head, 54)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
            for i in range(phnum):
                kind, _, offset, _, _, size = struct.unpack_from(
                    order + "IIQQQQ", table, i * phentsize
                )
                if kind == _PT_INTERP:
                    f.seek(offset)
                    return f.read(size).rstrip(b"\0").decode()
    except (OSError, struct.error, UnicodeDecodeError):
        return None
    return None


def plan_runtime(packages: Iterable[str], *, neutral: bool, reason: str = "") -> RuntimeLayout:
    """The runtime of this interpreter: its prefixes, site-packages, ``packages`` (package
    directories that sit in a source tree, for editable installs: the tree itself, tests and
    version control, is never shown) and loaded libraries, with their shown paths."""
    shown: dict[str, str] = {}  # host directory -> where it is shown
    hidden: set[str] = set()

    def add(path: str, target: str, *, hide: bool) -> None:
        """Show ``path`` at ``target``, unless a directory shown already holds it where it
        is wanted. A directory shown at its own path and one shown elsewhere are kept
        apart: a system library directory inside a prefix shown elsewhere (a Python
        installed in /usr) still gets a mount at its own path."""
        real = os.path.realpath(path)
        target = target if neutral else real
        if not os.path.exists(real):
            return
        moved = target != real
        for root, shown_at in shown.items():
            if _covered(real, [root]) and (
                (moved and shown_at != root) or shown_at + real[len(root) :] == target
            ):
                return
        for inner in [r for r, at in shown.items() if _covered(r, [real]) and (at != r) == moved]:
            del shown[inner]
            hidden.discard(inner)
        shown[real] = target
        if neutral and hide:
            hidden.add(real)

    add(sys.base_prefix, f"{NEUTRAL_ROOT}/python", hide=True)
    add(sys.base_exec_prefix, f"{NEUTRAL_ROOT}/python-exec", hide=True)
    sites = [
        os.path.realpath(entry)
        for entry in sys.path
        if entry and os.path.basename(os.path.realpath(entry)) in {"site-packages", "dist-packages"}
    ]
    for number, site in enumerate(dict.fromkeys(sites)):
        add(site, f"{NEUTRAL_ROOT}/site-packages" + (f"-{number + 1}" if number else ""), hide=True)
    for package in packages:
        add(package, f"{NEUTRAL_ROOT}/packages/{os.path.basename(package)}", hide=True)
    libraries = sorted(set(_mapped_libraries()))
    interpreter = _interpreter(os.path.realpath(sys.executable))
    system = [os.path.dirname(os.path.realpath(lib)) for lib in libraries]
    if interpreter is not None:
        system.append(os.path.dirname(os.path.realpath(interpreter)))
        system.append(os.path.realpath(os.path.dirname(interpreter)))
    for number, directory in enumerate(sorted(set(system))):
        if _covered(directory, _SYSTEM_LIBS):
            add(directory, directory, hide=False)
        else:
            add(directory, f"{NEUTRAL_ROOT}/lib/{number}", hide=True)
    if os.path.exists("/etc/ld.so.cache"):
        add("/etc/ld.so.cache", "/etc/ld.so.cache", hide=False)
    binds = tuple(
        Bind(source, target, executable=True, hidden=source in hidden)
        for source, target in sorted(shown.items(), key=lambda item: item[1])
    )
    layout = RuntimeLayout(
        mode="neutral" if neutral else "host",
        binds=binds,
        symlinks=(),
        executable="",
        path=(),
        reason=reason,
    )
    symlinks = [
        (f"/{name}", os.readlink(f"/{name}")) for name in _TOP_LINKS if os.path.islink(f"/{name}")
    ]
    library_path: list[str] = []
    if neutral:  # libraries found through a host path baked into the binary (its RUNPATH)
        for library in libraries:
            real = os.path.realpath(library)
            name = os.path.basename(library)
            if name.startswith("lib") and not _covered(os.path.dirname(real), _SYSTEM_LIBS):
                shown_at = _shown(layout, real)
                if shown_at is not None:
                    library_path.append(os.path.dirname(shown_at))
    # the neutral zygote is told its whole path (it runs without site); the host one finds
    # its own, as any ``python -I`` does, and is told where the source-tree packages are
    path = [
        os.path.dirname(target)
        for target in (_shown(layout, os.path.realpath(p)) for p in packages)
        if target is not None
    ]
    path += [
        shown
        for shown in (_shown(layout, os.path.realpath(e)) for e in sys.path if e and neutral)
        if shown is not None and os.path.exists(layout.to_host(shown))
    ]
    executable = _shown(layout, os.path.realpath(sys.executable))
    if executable is None:
        raise RuntimeError(f"the interpreter {sys.executable} lies outside its own prefix")
    return RuntimeLayout(
        mode=layout.mode,
        binds=binds,
        symlinks=tuple(dict.fromkeys(symlinks)),
        executable=executable,
        path=tuple(dict.fromkeys(path)),
        library_path=tuple(dict.fromkeys(library_path)),
        reason=reason,
    )


def _shown(layout: RuntimeLayout, real: str) -> str | None:
    """Where the host path ``real`` is shown (None if no mount covers it)."""
    for bind in layout.binds:
        if _covered(real, [bind.source]):
            return bind.target + real[len(bind.source) :]
    return None


def rewrite_build_data(layout: RuntimeLayout, where: str) -> RuntimeLayout:
    """``layout`` with a layer over the interpreter's prefix holding its build data
    (``_sysconfigdata_*.py``, what ``sysconfig``'s variables come from) rewritten to name
    where the prefix is shown, with its bytecode; written beneath ``where`` (in the
    supervisor's run directory, removed with it). Unchanged in the host layout."""
    if layout.mode != "neutral":
        return layout
    binds = []
    for number, bind in enumerate(layout.binds):
        names = {bind.source} | {
            prefix
            for prefix in (sys.base_prefix, sys.base_exec_prefix)
            if os.path.realpath(prefix) == bind.source
        }
        found = glob.glob(os.path.join(bind.source, "lib", "python*", "_sysconfigdata_*.py"))
        if not bind.hidden or not bind.target.startswith(f"{NEUTRAL_ROOT}/python") or not found:
            binds.append(bind)
            continue
        layer = os.path.join(where, f"layer-{number}")
        for data in found:
            relative = os.path.relpath(data, bind.source)
            with open(data, encoding="utf-8") as f:
                text = f.read()
            for name in sorted(names, key=len, reverse=True):
                text = text.replace(name, bind.target)
            written = os.path.join(layer, relative)
            os.makedirs(os.path.dirname(written), mode=0o755, exist_ok=True)
            with open(written, "w", encoding="utf-8") as f:
                f.write(text)
            os.chmod(written, 0o644)
            py_compile.compile(
                written,
                cfile=os.path.join(
                    os.path.dirname(written),
                    "__pycache__",
                    os.path.basename(written)[:-3] + f".{sys.implementation.cache_tag}.pyc",
                ),
                dfile=os.path.join(bind.target, relative),
                doraise=True,
            )
        binds.append(replace_bind(bind, layers=(layer,)))
    return replace(layout, binds=tuple(binds))
