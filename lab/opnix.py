"""The operator side with another Nix: run topdeck's core.nix.localnix with the Nix of a lab image (trixie: 2.26,
sid: 2.34) against a store of its own, or with this machine's own Nix and /nix ("native").

An image's Nix runs here natively, without a chroot: its root's own dynamic loader starts the root's
`/usr/bin/nix` (a multi-call binary that acts as nix-store, nix-build, ... by its argv[0]) with the root's
libraries, inside a mount namespace of its own where the store folder is bind-mounted on /nix:

    unshare -m --propagation private /bin/sh -c 'mount --bind STORE /nix && exec "$@"' \\
        ROOT/lib64/ld-linux-x86-64.so.2 --library-path ROOT/usr/lib/x86_64-linux-gnu:... --argv0 TOOL ROOT/usr/bin/nix

Everything else (/bin/sh for builders, /tmp, the files to build) is this machine's. Nix re-executes
/proc/self/exe for its build hook, which is the loader here, so the image's Nix runs with `build-hook =`
(no remote builds). This machine's Nix 2.8 must not get that setting: it then fails every build with
"error: executing '': No such file or directory". Needs root (unshare -m, mount --bind).

    env = image_env(images.ensure_image("sid").root, work / "store", work / "nix-sid")
    localnix.closure([path], env=env)      # runs Nix 2.34 against work/store
"""

from __future__ import annotations

import os
import platform
import shlex
from pathlib import Path

from topdeck.lab.errors import LabError
from topdeck.lab.nixenv import LAB_NIX_CONFIG, lab_env

NATIVE = "native"
TOOLS = ("nix", "nix-store", "nix-build", "nix-env", "nix-instantiate")
IMAGE_NIX_CONFIG = LAB_NIX_CONFIG + "\nbuild-hook ="
# Where a Debian root keeps its dynamic loader and libraries, by machine (only x86_64 is checked here).
_LOADERS = {"x86_64": ("lib64/ld-linux-x86-64.so.2", "x86_64-linux-gnu")}


def native_env() -> dict[str, str]:
    """This machine's Nix against this machine's /nix, with the lab's settings."""
    return lab_env()


def image_env(root: Path | str, store: Path | str, folder: Path | str) -> dict[str, str]:
    """The environment that makes localnix (and any Nix command run with it) use the Nix of the image root
    `root` against the store folder `store` (it becomes /nix for that Nix; made when missing).

    Writes `folder`/bin/{nix, nix-store, nix-build, nix-env, nix-instantiate} and returns this process's
    environment with that folder first on PATH, the lab's NIX_CONFIG plus `build-hook =`, and Nix's
    configuration, cache and home folders in `folder`, so that nothing of this machine's Nix 2.8 (its
    nix.conf, its ~/.cache/nix) is shared with the image's Nix.
    """
    root, store, folder = Path(root).absolute(), Path(store).absolute(), Path(folder).absolute()
    if os.pathsep in str(root):
        raise LabError(f"{root}: an image root with {os.pathsep!r} in its path cannot be a library path")
    if os.geteuid() != 0:
        raise LabError("running an image's Nix needs root (unshare -m and mount --bind)")
    if not Path("/nix").is_dir():
        raise LabError("running an image's Nix needs a /nix folder to mount its store on")
    loader, libraries = _loader(root)
    nix = root / "usr" / "bin" / "nix"
    if not nix.is_file():
        raise LabError(f"{root}: has no usr/bin/nix (is nix-bin installed in the image?)")
    store.mkdir(parents=True, exist_ok=True)
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for tool in TOOLS:
        _write_wrapper(bin_dir / tool, tool, loader, libraries, nix, store)
    for name in ("etc", "cache", "config", "home"):
        (folder / name).mkdir(exist_ok=True)
    env = lab_env({
        "NIX_CONFIG": IMAGE_NIX_CONFIG,
        "NIX_CONF_DIR": str(folder / "etc"),
        "XDG_CACHE_HOME": str(folder / "cache"),
        "XDG_CONFIG_HOME": str(folder / "config"),
        "HOME": str(folder / "home"),
    })
    env.pop("NIX_REMOTE", None)  # the image's Nix opens its own store, never a daemon of this machine
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", os.defpath)])
    return env


def wrapper_script(tool: str, loader: Path, libraries: str, nix: Path, store: Path) -> str:
    """The shell script that runs `tool` of the image's Nix with `store` as /nix; every path is quoted."""
    inner = 'mount --bind "$1" /nix && shift && exec "$@"'
    words = ["exec", "unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", inner, "sh", str(store),
             str(loader), "--library-path", libraries, "--argv0", tool, str(nix)]
    return (f"#!/bin/sh\n# {tool} of {nix}, with {store} as /nix (written by topdeck.lab.opnix)\n"
            + " ".join(shlex.quote(word) for word in words) + ' "$@"\n')


def _write_wrapper(file: Path, tool: str, loader: Path, libraries: str, nix: Path, store: Path) -> None:
    text = wrapper_script(tool, loader, libraries, nix, store)
    temporary = file.with_name(f".{file.name}.tmp")
    temporary.write_text(text)
    temporary.chmod(0o755)
    temporary.replace(file)


def _loader(root: Path) -> tuple[Path, str]:
    machine = platform.machine()
    if machine not in _LOADERS:
        raise LabError(f"running an image's Nix is set up for x86_64 only, not {machine}")
    loader_name, triplet = _LOADERS[machine]
    loader = root / loader_name
    if not loader.exists():
        raise LabError(f"{root}: has no {loader_name} (not a Debian root for {machine}?)")
    libraries = os.pathsep.join(str(root / folder / triplet) for folder in ("usr/lib", "lib"))
    return loader, libraries
