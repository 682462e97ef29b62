"""A disk that fills up, where a small tmpfs cannot be mounted (no root): with DSL_TEST_DISK_LIMIT=DIR:BYTES in
the environment, every torch.save into DIR writes through a file that raises ENOSPC, part-way through the write,
once BYTES have been written under DIR in all. Put this directory on PYTHONPATH to load it."""

import errno
import os

_spec = os.environ.get("DSL_TEST_DISK_LIMIT")
if _spec:
    import torch

    _root, _limit = _spec.rsplit(":", 1)
    _root, _left = os.path.abspath(_root), [int(_limit)]
    _save = torch.save

    class _FillingFile:
        def __init__(self, f):
            self._f = f

        def write(self, data):
            n = len(memoryview(data).cast("B"))
            if n > _left[0]:
                self._f.write(bytes(memoryview(data).cast("B")[: _left[0]]))
                _left[0] = 0
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._f.name)
            _left[0] -= n
            return self._f.write(data)

        def __getattr__(self, name):
            return getattr(self._f, name)

    def _limited_save(obj, f, *args, **kwargs):
        name = f if isinstance(f, (str, os.PathLike)) else getattr(f, "name", "")
        if not isinstance(name, (str, os.PathLike)) or not os.path.abspath(name).startswith(_root + os.sep):
            return _save(obj, f, *args, **kwargs)
        if isinstance(f, (str, os.PathLike)):
            with open(f, "wb") as out:
                return _save(obj, _FillingFile(out), *args, **kwargs)
        return _save(obj, _FillingFile(f), *args, **kwargs)

    torch.save = _limited_save
