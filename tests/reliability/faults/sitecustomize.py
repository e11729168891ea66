"""Storage fault injection for the reliability tests, used only where a tiny
tmpfs cannot be mounted (not root). Loaded by the service processes through
PYTHONPATH; inert unless DR4SR_TEST_STORAGE_FULL_FLAG names a file.

While that file exists, every write through the local artifact store
behaves like a full disk: part of the bytes land, then ENOSPC."""

import errno
import os

_FLAG = os.environ.get("DR4SR_TEST_STORAGE_FULL_FLAG")

if _FLAG:
    from fsspec.implementations.local import LocalFileSystem

    _put_file = LocalFileSystem.put_file

    def put_file(self, lpath, rpath, *args, **kwargs):
        if os.path.exists(_FLAG):
            with open(lpath, "rb") as src, open(rpath, "wb") as dst:
                dst.write(src.read(512))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), rpath)
        return _put_file(self, lpath, rpath, *args, **kwargs)

    LocalFileSystem.put_file = put_file
