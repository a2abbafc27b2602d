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


# Text as bytes, both ways: names from argv or a file may hold any byte (Python 3.6 under LC_ALL=C decodes argv as
# ASCII with surrogate escapes), and they must come out as they came in.
def read_text(path):
    with open(path, "rb") as f:
        return f.read().decode("utf-8", "surrogateescape")


def lines_of(text):
    # The lines grep and awk see: the last one without its newline counts, a final newline opens none.
    return text[:-1].split("\n") if text.endswith("\n") else text.split("\n") if text else []


def temp_beside(path):
    # An empty temporary dot-file (0600) in PATH's directory: sssd's conf.d and sudo's includedir skip dot-files, and
    # a rename within the directory is atomic (readers meanwhile see the old or the new file).
    import tempfile
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".pcluster-ad.")
    os.close(fd)
    return tmp


def fill(tmp, text, mode):
    with open(tmp, "wb") as f:
        f.write(text.encode("utf-8", "surrogateescape"))
    os.chmod(tmp, mode)


def replace_file(path, text, mode):
    # TEXT into PATH (mode MODE) through temp_beside; OSError when it fails, and no temporary file stays.
    tmp = temp_beside(path)
    try:
        fill(tmp, text, mode)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
