"""Host images for the lab: Debian roots made with debootstrap, each with its own Nix, OpenSSH and systemd.

`native` is this machine itself (its Nix, no init system). The others are built once from the Debian archive that
this machine's apt uses and cached outside the repository, in `$TOPDECK_IMAGE_DIR` (default
/var/cache/topdeck-lab/images), one folder each:

    <name>/<digest>/root        the root file system (read-only to hosts: each boots it with an overlay of its own)
    <name>/<digest>/info.json   what it has: Debian suite, Nix, OpenSSH and systemd versions, build time

where <digest> names the recipe it was built from: a changed recipe builds a new image beside the old one, so a
host still running from the old one (another checkout's lab, say) keeps its root.

The recipe is the suite, the apt options, this file's package list and image/configure.sh (run in the new root).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from topdeck.lab.errors import LabError

NATIVE = "native"
DEFAULT_IMAGE_DIR = Path("/var/cache/topdeck-lab/images")
CONFIGURE_SCRIPT = Path(__file__).parent / "image" / "configure.sh"
PACKAGES = ("nix-bin", "openssh-server", "systemd", "systemd-sysv", "dbus", "libpam-systemd", "curl",
            "ca-certificates", "sudo", "procps", "iproute2", "libnss-myhostname")
FALLBACK_MIRROR = "http://deb.debian.org/debian"
DEBOOTSTRAP_STEP = re.compile(r"^I: (Retrieving|Validating|Unpacking|Configuring|Extracting) (\S+)")

Log = Callable[[str], None]


@dataclass(frozen=True)
class Recipe:
    name: str
    suite: str
    description: str
    apt_options: tuple[str, ...] = ()

    def digest(self, mirror: str) -> str:
        text = json.dumps([asdict(self), PACKAGES, mirror, CONFIGURE_SCRIPT.read_text()])
        return hashlib.sha256(text.encode()).hexdigest()


RECIPES = {
    "trixie": Recipe("trixie", "trixie", "Debian 13"),
    # Sid's Release file is past its Valid-Until date in the archive this machine reaches.
    "sid": Recipe("sid", "sid", "Debian sid", ("-o", "Acquire::Check-Valid-Until=false")),
}


@dataclass(frozen=True)
class ImageInfo:
    """What a host of this kind runs. `systemd` is empty for the native kind, which has no init system."""

    name: str
    description: str
    nix: str
    openssh: str
    systemd: str
    built: str = ""
    build_seconds: float = 0.0
    root: str = ""


@dataclass(frozen=True)
class ImageListing:
    info: ImageInfo
    state: str  # "ready", "outdated" (recipe changed), "missing"


def image_dir() -> Path:
    return Path(os.environ.get("TOPDECK_IMAGE_DIR", DEFAULT_IMAGE_DIR))


def known_kinds() -> tuple[str, ...]:
    return (NATIVE, *RECIPES)


def check_kind(name: str) -> str:
    if name not in known_kinds():
        raise LabError(f"unknown host image {name!r}; the lab has: {', '.join(known_kinds())}")
    return name


# --- reading ----------------------------------------------------------------------------------------


def list_images() -> list[ImageListing]:
    listings = [ImageListing(native_info(), "ready")]
    mirror = debian_mirror()
    for recipe in RECIPES.values():
        folder = _folder(recipe, mirror)
        info = _read_info(folder)
        if info is not None and (folder / "root").is_dir():
            listings.append(ImageListing(info, "ready"))
        else:
            older = any(_read_info(other) for other in (image_dir() / recipe.name).glob("*/"))
            listings.append(ImageListing(ImageInfo(recipe.name, recipe.description, "", "", ""),
                                         "outdated" if older else "missing"))
    return listings


def _folder(recipe: Recipe, mirror: str) -> Path:
    return image_dir() / recipe.name / recipe.digest(mirror)[:16]


def native_info() -> ImageInfo:
    nix = _command_output(["nix-store", "--version"]).rsplit(" ", 1)[-1]
    return ImageInfo(NATIVE, f"this machine (Debian {_debian_version(Path('/'))}), no init system", nix,
                     _package_version(["dpkg-query"], "openssh-server"), "")


def _read_info(folder: Path) -> ImageInfo | None:
    try:
        info = ImageInfo(**json.loads((folder / "info.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return replace(info, root=str(folder / "root"))


# --- building ---------------------------------------------------------------------------------------


def ensure_image(name: str, log: Log = print) -> ImageInfo:
    """The image `name`, built first when it is missing or its recipe changed (one builder at a time)."""
    if check_kind(name) == NATIVE:
        return native_info()
    recipe = RECIPES[name]
    mirror = debian_mirror()
    folder = _folder(recipe, mirror)
    with _locked(folder):
        info = _read_info(folder)
        if info is not None and (folder / "root").is_dir():
            return info
        return _build(recipe, folder, mirror, log)


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _build(recipe: Recipe, folder: Path, mirror: str, log: Log) -> ImageInfo:
    for tool in ("debootstrap", "systemd-nspawn", "unshare", "chroot"):
        if not shutil.which(tool):
            raise LabError(f"building image {recipe.name} needs {tool}: run `make setup` (scripts/setup.sh) first")
    started = time.monotonic()
    new_root = folder / "root.new"
    shutil.rmtree(new_root, ignore_errors=True)
    log(f"image {recipe.name}: debootstrap {recipe.suite} from {mirror} (about a minute)")
    _debootstrap(recipe, new_root, mirror, log)
    log(f"image {recipe.name}: installing {', '.join(PACKAGES)}")
    _configure(recipe, new_root)
    info = ImageInfo(
        name=recipe.name,
        description=f"{recipe.description} ({_debian_version(new_root)}), systemd as PID 1",
        nix=_package_version(["chroot", str(new_root), "dpkg-query"], "nix-bin"),
        openssh=_package_version(["chroot", str(new_root), "dpkg-query"], "openssh-server"),
        systemd=_package_version(["chroot", str(new_root), "dpkg-query"], "systemd"),
        built=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        build_seconds=round(time.monotonic() - started, 1),
        root=str(folder / "root"),
    )
    shutil.rmtree(folder / "root", ignore_errors=True)
    new_root.rename(folder / "root")
    (folder / "info.json").write_text(json.dumps({**asdict(info), "root": ""}, indent=2) + "\n")
    log(f"image {recipe.name}: ready in {info.build_seconds:.0f} s (Nix {info.nix}, OpenSSH {info.openssh}, "
        f"systemd {info.systemd})")
    return info


def _debootstrap(recipe: Recipe, root: Path, mirror: str, log: Log) -> None:
    command = ["debootstrap", "--variant=minbase", recipe.suite, str(root), mirror]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               errors="replace")
    assert process.stdout is not None
    tail: list[str] = []
    shown = 0.0
    for line in process.stdout:
        tail = [*tail[-20:], line.rstrip()]
        step = DEBOOTSTRAP_STEP.match(line)
        if step and time.monotonic() - shown > 5:
            log(f"image {recipe.name}: debootstrap: {step[1].lower()} {step[2]}")
            shown = time.monotonic()
    if process.wait() != 0:
        raise LabError(f"image {recipe.name}: debootstrap failed (exit {process.returncode}): "
                       + " / ".join(tail[-3:]))


def _configure(recipe: Recipe, root: Path) -> None:
    """Run configure.sh inside the new root, with /proc and /dev mounted in a mount namespace of its own."""
    shutil.copy(CONFIGURE_SCRIPT, root / "tmp" / "topdeck-configure.sh")
    quoted = {key: shlex.quote(str(root / key)) for key in ("proc", "dev")}
    script = (f"mount -t proc proc {quoted['proc']} && mount --rbind /dev {quoted['dev']} && "
              f"exec chroot {shlex.quote(str(root))} /bin/sh /tmp/topdeck-configure.sh \"$@\"")
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script, "sh",
                             *recipe.apt_options], capture_output=True, text=True, errors="replace",
                            env={**os.environ, "TOPDECK_LAB_PACKAGES": " ".join(PACKAGES)})
    (root / "tmp" / "topdeck-configure.sh").unlink(missing_ok=True)
    if result.returncode != 0:
        raise LabError(f"image {recipe.name}: configuring the root failed (exit {result.returncode}): "
                       + " / ".join((result.stdout + result.stderr).strip().splitlines()[-3:]))


# --- helpers ----------------------------------------------------------------------------------------


def debian_mirror() -> str:
    """The first Debian archive in this machine's apt sources (deb822 or one-line), else deb.debian.org."""
    sources = Path("/etc/apt/sources.list.d")
    texts = [path.read_text() for path in sorted(sources.glob("*.sources"))] if sources.is_dir() else []
    for text in texts:
        for stanza in text.split("\n\n"):
            fields = dict(_field(line) for line in stanza.splitlines() if ":" in line and not line.startswith("#"))
            if "deb" in fields.get("Types", "").split() and "security" not in fields.get("URIs", ""):
                uris = fields.get("URIs", "").split()
                if uris:
                    return uris[0].rstrip("/")
    legacy = Path("/etc/apt/sources.list")
    for line in legacy.read_text().splitlines() if legacy.exists() else []:
        words = line.split()
        if len(words) >= 3 and words[0] == "deb" and "security" not in words[1]:
            return words[2 if words[1].startswith("[") else 1].rstrip("/")
    return FALLBACK_MIRROR


def _field(line: str) -> tuple[str, str]:
    key, value = line.split(":", 1)
    return key.strip(), value.strip()


def _debian_version(root: Path) -> str:
    try:
        return (root / "etc" / "debian_version").read_text().strip()
    except OSError:
        return "unknown"


def _package_version(dpkg_query: list[str], package: str) -> str:
    return _command_output([*dpkg_query, "-W", "-f", "${Version}", package]) or "not installed"


def _command_output(command: list[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, errors="replace")
    except FileNotFoundError:
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""
