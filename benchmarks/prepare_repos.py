"""Check out snapshots of real public torch.hub repositories into benchmarks/.work/repos.

    python benchmarks/prepare_repos.py [--mirrors DIR]

Each repository is read from a bare git mirror (``DIR/<owner>+<name>/repo``, as the
session's snapshot tool leaves them; ``git clone --mirror`` makes the same) and its
HEAD tree is written to ``benchmarks/.work/repos/<owner>_<name>`` with the commit in
``.commit``. Nothing here touches the network, and the checkouts are git-ignored:
their code is never committed to this project. Repos without a mirror are listed
and skipped; the compatibility tests skip them with that reason.

pytorch/vision's full history is too large to mirror here, so without a mirror it is
assembled as a sparse snapshot of what its hubconf needs: ``hubconf.py`` (from
``benchmarks/.work/sources/pytorch+vision/hubconf.py``, a copy of the repository's
file, or ``--vision-hubconf``) and the ``torchvision/`` package's Python sources from
a ``torchvision`` release (downloaded by pip, no deps; the compiled ops are left out, as
in a source checkout that was never built): by default the release installed beside the
running interpreter's torch (so run this with the interpreter that runs the compatibility
suite), else ``--vision-release``'s, else 0.28.0, the release built for torch 2.13.0.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPOS_DIR = HERE / ".work" / "repos"
WHEELS_DIR = HERE / ".work" / "wheels"
VISION_HUBCONF = HERE / ".work" / "sources" / "pytorch+vision" / "hubconf.py"
VISION_RELEASE = "0.28.0"  # the release built for torch 2.13.0
REPOS = ("snakers4/silero-vad", "facebookresearch/dinov2", "facebookresearch/detr",
         "isl-org/MiDaS", "rwightman/gen-efficientnet-pytorch", "pytorch/vision",
         "facebookresearch/dino", "mateuszbuda/brain-segmentation-pytorch",
         "chenyaofo/pytorch-cifar-models", "lukemelas/EfficientNet-PyTorch",
         "milesial/Pytorch-UNet")


def checkout(mirror: Path, target: Path) -> str:
    """Write the mirror's HEAD tree to ``target``; returns the commit.

    Blobs a snapshot left out (its largest files) are skipped and listed in
    ``.missing``; links are written as links, modes as the tree says.
    """
    git = ["git", f"--git-dir={mirror}"]
    commit = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True,
                            text=True).stdout.strip()
    if (target / ".commit").is_file() and (target / ".commit").read_text().strip() == commit:
        return commit
    listing = subprocess.run([*git, "ls-tree", "-r", "-z", commit], check=True,
                             capture_output=True).stdout
    entries = []
    for record in listing.split(b"\0"):
        if record:
            meta, _, path = record.partition(b"\t")
            mode, kind, sha = meta.split()
            if kind == b"blob":
                entries.append((mode.decode(), sha.decode(), path.decode()))
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    missing = []
    batch = subprocess.Popen([*git, "cat-file", "--batch"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE)
    assert batch.stdin is not None and batch.stdout is not None
    for mode, sha, path in entries:
        batch.stdin.write(sha.encode() + b"\n")
        batch.stdin.flush()
        header = batch.stdout.readline().split()
        if header[-1] == b"missing":
            missing.append(path)
            continue
        data = batch.stdout.read(int(header[2]))
        batch.stdout.read(1)
        dest = tmp / path
        dest.parent.mkdir(parents=True, exist_ok=True)
        if mode == "120000":
            dest.symlink_to(data.decode())
        else:
            dest.write_bytes(data)
            dest.chmod(0o755 if mode == "100755" else 0o644)
    batch.stdin.close()
    batch.wait()
    (tmp / ".commit").write_text(commit + "\n")
    (tmp / ".missing").write_text("".join(f"{p}\n" for p in missing))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    for folder in [target, *(p for p in target.rglob("*") if p.is_dir() and not p.is_symlink())]:
        folder.chmod(0o755)
    return commit


def installed_vision_release() -> str:
    """The torchvision release installed for this interpreter (local label dropped:
    ``0.29.1+cu130`` is release 0.29.1), else :data:`VISION_RELEASE`."""
    try:
        return importlib.metadata.version("torchvision").partition("+")[0]
    except importlib.metadata.PackageNotFoundError:
        return VISION_RELEASE


def sparse_vision(hubconf: Path, target: Path, release: str = VISION_RELEASE) -> str:
    """Assemble pytorch/vision's hubconf.py and the Python files of torchvision
    ``release``; returns a label standing for the commit (the hubconf's hash and the
    wheel)."""
    WHEELS_DIR.mkdir(parents=True, exist_ok=True)
    wheels = sorted(WHEELS_DIR.glob(f"torchvision-{release}[-+]*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d",
                        str(WHEELS_DIR), f"torchvision=={release}"], check=True)
        wheels = sorted(WHEELS_DIR.glob(f"torchvision-{release}[-+]*.whl"))
    digest = hashlib.sha256(hubconf.read_bytes()).hexdigest()[:12]
    label = f"sparse hubconf.py@{digest} + {wheels[0].name}"
    if (target / ".commit").is_file() and (target / ".commit").read_text().strip() == label:
        return label
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copyfile(hubconf, tmp / "hubconf.py")
    with zipfile.ZipFile(wheels[0]) as wheel:
        for info in wheel.infolist():
            name = info.filename
            if not name.startswith("torchvision/") or name.endswith("/") or not name.endswith(
                    (".py", ".pyi", ".json", ".txt")) or ".." in name.split("/"):
                continue
            dest = tmp / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(wheel.read(info))
            dest.chmod(0o644)
    (tmp / ".commit").write_text(label + "\n")
    (tmp / ".missing").write_text("")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    for folder in [target, *(p for p in target.rglob("*") if p.is_dir())]:
        folder.chmod(0o755)
    return label


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mirrors", type=Path, default=Path("/work/.mirror"),
                        help="folder of <owner>+<name>/repo bare mirrors")
    parser.add_argument("--vision-hubconf", type=Path, default=VISION_HUBCONF,
                        help="pytorch/vision's hubconf.py, for its sparse snapshot")
    parser.add_argument("--vision-release", default=installed_vision_release(),
                        help="torchvision release whose Python sources the sparse snapshot "
                             "takes (default: the one installed for this interpreter, else "
                             f"{VISION_RELEASE})")
    args = parser.parse_args(argv)
    REPOS_DIR.mkdir(parents=True, exist_ok=True)
    missing = []
    for repo in REPOS:
        mirror = args.mirrors / repo.replace("/", "+") / "repo"
        if not (mirror / "HEAD").is_file():
            if repo == "pytorch/vision" and args.vision_hubconf.is_file():
                folder = REPOS_DIR / repo.replace("/", "_")
                label = sparse_vision(args.vision_hubconf, folder, args.vision_release)
                print(f"{repo}: {label} -> {folder}")
                continue
            missing.append(repo)
            continue
        commit = checkout(mirror, REPOS_DIR / repo.replace("/", "_"))
        folder = REPOS_DIR / repo.replace("/", "_")
        absent = len((folder / ".missing").read_text().splitlines())
        print(f"{repo}: {commit[:12]} -> {folder}"
              + (f" ({absent} large files absent from the snapshot)" if absent else ""))
    for repo in missing:
        print(f"{repo}: no mirror under {args.mirrors} (skipped)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
