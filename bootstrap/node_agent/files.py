"""Files replaced atomically, with the mode and owner of the file they replace."""

import os


def write_atomic(path, text, like):
    st = os.stat(like) if like and os.path.exists(like) else None
    import tempfile
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".pcluster-ad.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o600 if st is None else st.st_mode & 0o7777)
        if st is not None:
            os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
