"""Real small file systems for disk-full and read-only tests (mount(8): the tests run as root).

- `TmpfsDisk`: a tmpfs of `size_mb` at a fresh directory; `fill()` takes every free byte
  with a filler file (what a runaway log does), `free()` gives it back.
- `Ext4Disk`: an ext4 image on a loop device, mounted `errors=remount-ro`; `break_()`
  triggers a file-system error (/sys/fs/ext4/<dev>/trigger_fs_error), so the kernel turns
  the mount read-only under the open files, as it does on a failing disk. (`mount -o
  remount,ro` refuses while a file is open for writing: EBUSY.) Only a remount repairs it.

Both unmount in `close()`, lazily if something still holds a file open.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

CHUNKS = (1 << 20, 1 << 16, 1 << 12, 1)


def _run(*cmd: str) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()}")


def _unmount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class TmpfsDisk:
    def __init__(self, size_mb: int = 8, path: Path | None = None) -> None:
        self._made = path is None
        self.path = path or Path(tempfile.mkdtemp(prefix="ops-disk-", dir="/tmp"))
        self.path.mkdir(parents=True, exist_ok=True)
        _run("mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(self.path))
        self.filler = self.path / "filler"

    def fill(self) -> int:
        """Write the filler until ENOSPC at every chunk size; the bytes it took."""
        taken = 0
        fd = os.open(self.filler, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
        try:
            for size in CHUNKS:
                block = b"\xff" * size
                while True:
                    try:
                        taken += os.write(fd, block)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        finally:
            os.close(fd)
        return taken

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def close(self) -> None:
        _unmount(self.path)
        if self._made:
            shutil.rmtree(self.path, ignore_errors=True)


class Ext4Disk:
    def __init__(self, size_mb: int = 16) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ops-ext4-", dir="/tmp"))
        self.image = self.root / "disk.img"
        self.path = self.root / "mnt"
        self.path.mkdir()
        with open(self.image, "wb") as f:
            f.truncate(size_mb << 20)
        _run("mkfs.ext4", "-q", "-F", str(self.image))
        _run("mount", "-o", "loop,errors=remount-ro", str(self.image), str(self.path))
        self.device = self._device()

    def _device(self) -> str:
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, where, *_ = line.split()
            if where == str(self.path):
                return Path(dev).name
        raise RuntimeError(f"{self.path} is not in /proc/mounts")

    def break_(self) -> None:
        """Make the kernel see an ext4 error: the mount becomes read-only (emergency_ro)."""
        Path(f"/sys/fs/ext4/{self.device}/trigger_fs_error").write_text("ops test\n")

    def close(self) -> None:
        _unmount(self.path)
        shutil.rmtree(self.root, ignore_errors=True)
