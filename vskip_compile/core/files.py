"""The one guarded path for every file vskip reads or writes.

Model files come from anywhere (a hub download, a colleague's export), so nothing here
trusts a name, a size or a reference inside a file:

Reading
    :func:`input_file` accepts only regular files (a FIFO would block forever, a device
    would stream forever) and checks the size before a byte is read; :func:`read_bytes`,
    :func:`read_text`, :func:`read_json` and :func:`read_npz` build on it, each bounded.
    :func:`external_data` resolves an ONNX graph's external-data references by the rules
    onnx and ONNX Runtime enforce: a relative location without ``..``, inside the model's
    own directory, no symbolic link, offsets and lengths non-negative integers that fit
    the file (onnx 1.23 ``external_data_helper`` and its C++ ``_open_external_data``;
    ONNX Runtime refuses data outside the model's directory).

Writing
    :class:`Outputs` is a transaction. Each output is claimed first: it may not be any of
    the command's inputs (by path or by inode, ``--force`` or not), it may exist only
    with ``--force``, and its directory must exist and take new files. Data goes to a
    temp file created exclusively (``O_EXCL``: a planted symlink is never followed) under
    a random short name in the target's directory, and only :meth:`Outputs.commit`
    renames the temps into place. On any failure, and on SIGTERM / SIGINT (see
    :func:`signals_raise`), every temp is removed: nothing partial is left.

Every problem is a one-line :class:`VskipError`.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import shutil
import signal
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .errors import VskipError

# Bounds on what small inputs may cost before they are trusted.
MAX_JSON_BYTES = 16 * 2**20          # plans, sidecars, configs
MAX_JSON_DEPTH = 64
MAX_JSON_NUMBER_DIGITS = 64          # a 5000-digit number is no plan's layer index
MAX_GRAPH_BYTES = 2**31              # protobuf cannot hold more: weights go to external data

# Temp files: short random names, so a legal long output name never overflows NAME_MAX.
_TEMP_PREFIX = ".vskip-"
_TEMP_SUFFIX = ".tmp"
_live_temps: set[Path] = set()       # what a signal or crash must not leave behind


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like KeyboardInterrupt so every cleanup runs."""


# ------------------------------------------------------------------------------ reading

def input_file(path: str | os.PathLike, what: str = "file", max_bytes: int | None = None) -> Path:
    """``path`` if it names a regular file (symlinks followed) of at most ``max_bytes``."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise VskipError(f"{path}: no such file ({what})") from None
    except OSError as exc:
        raise VskipError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise VskipError(f"{path}: is a directory, not a {what}")
    if not stat.S_ISREG(info.st_mode):
        raise VskipError(f"{path}: not a regular file (a FIFO, socket or device); vskip reads only regular files")
    if max_bytes is not None and info.st_size > max_bytes:
        raise VskipError(f"{path}: {info.st_size} bytes is too large for a {what} (at most {max_bytes})")
    return path


def open_input(path: str | os.PathLike, what: str = "file", max_bytes: int | None = None):
    """An open binary handle on a regular file, checked again on the descriptor itself
    (the name could be swapped for a FIFO between the check and the open)."""
    path = input_file(path, what, max_bytes)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise VskipError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or (max_bytes is not None and info.st_size > max_bytes):
        os.close(fd)
        raise VskipError(f"{path}: changed while being opened; not a regular {what} of at most {max_bytes} bytes")
    return os.fdopen(fd, "rb")


def read_bytes(path: str | os.PathLike, what: str = "file", max_bytes: int = MAX_JSON_BYTES) -> bytes:
    with open_input(path, what, max_bytes) as handle:
        try:
            return handle.read(max_bytes + 1)
        except OSError as exc:
            raise VskipError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None


def read_text(path: str | os.PathLike, what: str = "file", max_bytes: int = MAX_JSON_BYTES) -> str:
    try:
        return read_bytes(path, what, max_bytes).decode("utf-8")
    except UnicodeDecodeError:
        raise VskipError(f"{path}: the {what} is not UTF-8 text") from None


def read_json(path: str | os.PathLike, what: str = "JSON file", max_bytes: int = MAX_JSON_BYTES):
    return parse_json(read_text(path, what, max_bytes), f"{path}", what)


def parse_json(text: str, source: str, what: str = "JSON"):
    """JSON with bounded nesting and number sizes, refusing duplicate keys.

    json would keep the last of two equal keys silently (e.g. two "freeze" lists), would
    recurse until Python's stack gives out, and would parse a 5000-digit integer.
    """
    depth = _max_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise VskipError(f"{source}: the {what} nests {depth} levels deep (at most {MAX_JSON_DEPTH})")

    def pairs(items):
        seen = set()
        for key, _ in items:
            if key in seen:
                raise VskipError(f"{source}: key {key!r} appears twice in one JSON object; list it once")
            seen.add(key)
        return dict(items)

    def number(kind):
        def parse(token: str):
            if len(token) > MAX_JSON_NUMBER_DIGITS:
                raise VskipError(f"{source}: a number of {len(token)} digits in the {what} "
                                 f"(at most {MAX_JSON_NUMBER_DIGITS})")
            return kind(token)
        return parse

    def constant(token: str):
        raise VskipError(f"{source}: {token} is not JSON; the {what} must use finite numbers")

    try:
        return json.loads(text, object_pairs_hook=pairs, parse_int=number(int), parse_float=number(float),
                          parse_constant=constant)
    except json.JSONDecodeError as exc:
        raise VskipError(f"{source}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:  # _max_depth bounds brackets; this is the last guard
        raise VskipError(f"{source}: the {what} nests too deeply") from None


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)


def _max_depth(text: str) -> int:
    """Deepest bracket nesting outside strings, in C-speed steps (headers may be MiBs)."""
    codes = np.frombuffer(_JSON_STRING.sub("", text).encode("utf-8", "replace"), dtype=np.uint8)
    steps = np.isin(codes, (ord("["), ord("{"))).astype(np.int64) - np.isin(codes, (ord("]"), ord("}")))
    return int(np.cumsum(steps).max(initial=0))


def read_npz(path: str | os.PathLike, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Arrays of an ``.npz``, each header checked against its stored size before loading.

    An .npy header declares a shape; a 324-byte file may declare 64 TiB. Every member's
    declared size must equal the bytes stored for it, and all of them together must fit
    ``max_bytes`` (default: the memory available now).
    """
    path = input_file(path, ".npz file")
    budget = available_memory() if max_bytes is None else max_bytes
    arrays: dict[str, np.ndarray] = {}
    try:
        with open_input(path, ".npz file") as handle, zipfile.ZipFile(handle) as archive:
            members = archive.infolist()
            if sum(m.file_size for m in members) > budget:
                raise VskipError(f"{path}: its arrays need {sum(m.file_size for m in members)} bytes, more than "
                                 f"the {budget} bytes available")
            for member in members:
                name = member.filename[:-4] if member.filename.endswith(".npy") else member.filename
                with archive.open(member) as stream:
                    arrays[name] = _read_npy(stream, member, path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, OSError) as exc:
        raise VskipError(f"{path}: not a readable .npz file ({one_line(exc)})") from None
    return arrays


def _read_npy(stream, member: zipfile.ZipInfo, path: Path) -> np.ndarray:
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        raise VskipError(f"{path}: {member.filename}: unknown .npy version {version}")
    if dtype.hasobject:
        raise VskipError(f"{path}: {member.filename}: holds Python objects; vskip reads numeric arrays only")
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    header = stream.tell()
    if header + declared != member.file_size:
        raise VskipError(f"{path}: {member.filename}: its header declares {declared} bytes of "
                         f"{dtype} {tuple(shape)}, but {member.file_size - header} are stored")
    data = stream.read(declared)
    array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return array.copy()


def available_memory() -> int:
    """Bytes of memory available now (MemAvailable), or physical memory where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 2**34


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def check_threads(threads: int | None, flag: str = "--threads") -> int | None:
    """A thread count between 1 and the cores this process may use (None: the runtime's default)."""
    if threads is None:
        return None
    cores = usable_cores()
    if type(threads) is not int or not 1 <= threads <= cores:
        raise VskipError(f"{flag} must be between 1 and {cores} (the cores this machine gives vskip), got {threads}")
    return threads


# ------------------------------------------------------------------------ external data

def external_tensors(model) -> Iterable:
    """Every tensor of ``model`` (a ModelProto) stored as external data, subgraphs included."""
    import onnx

    def walk(graph):
        for tensor in graph.initializer:
            yield tensor
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t
                elif attr.type == onnx.AttributeProto.GRAPH:
                    yield from walk(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for sub in attr.graphs:
                        yield from walk(sub)
                elif attr.type == onnx.AttributeProto.TENSORS:
                    yield from attr.tensors

    yield from (t for t in walk(model.graph) if t.data_location == onnx.TensorProto.EXTERNAL)


def external_info(tensor, model_path: Path) -> tuple[str, int, int | None]:
    """(location, offset, length) of one external tensor, every field checked."""
    info: dict[str, str] = {}
    for entry in tensor.external_data:
        info[entry.key] = entry.value
    where = f"{model_path}: tensor {escape(tensor.name)!r}"
    location = info.get("location")
    if not location:
        raise VskipError(f"{where}: external data without a location")
    numbers = []
    for key in ("offset", "length"):
        text = info.get(key)
        if text is None or text == "":
            numbers.append(None)
            continue
        if not text.isdigit() or len(text) > 20:
            raise VskipError(f"{where}: external data {key} {escape(text)!r} is not a non-negative integer")
        numbers.append(int(text))
    return location, numbers[0] or 0, numbers[1]


def resolve_external(model_path: Path, location: str, must_exist: bool = True) -> Path:
    """The file ``location`` names, which must lie inside the model's directory (onnx's rules)."""
    where = f"{model_path}: external data location {escape(location)!r}"
    if "\x00" in location:
        raise VskipError(f"{where} holds a NUL byte")
    relative = Path(location)
    if relative.is_absolute() or location.startswith(("/", "\\")) or (len(location) > 1 and location[1] == ":"):
        raise VskipError(f"{where} is absolute; external data must be inside the model's directory")
    if ".." in relative.parts or ".." in location.replace("\\", "/").split("/"):
        raise VskipError(f"{where} leaves the model's directory ('..'); external data must be inside it")
    base = Path(os.path.realpath(model_path.parent))
    candidate = model_path.parent / relative
    # No component may be a symbolic link: onnx refuses them, and one could point anywhere.
    probe = model_path.parent
    for part in relative.parts:
        probe = probe / part
        if probe.is_symlink():
            raise VskipError(f"{where} goes through the symbolic link {probe}; onnx and ONNX Runtime refuse them")
    real = Path(os.path.realpath(candidate))
    if base != real and base not in real.parents:
        raise VskipError(f"{where} resolves outside the model's directory")
    if must_exist or os.path.lexists(candidate):
        input_file(candidate, "external data file")
    return candidate


def external_data(model, model_path: str | os.PathLike, weights_needed: bool = True) -> dict[str, Path]:
    """location -> its file (inside the model's directory) for every external tensor of
    ``model``, all checked.

    Lengths must match the tensor's own size where its type has a fixed width, and every
    range must fit its file: a graph is refused before anything is read or copied.
    ``weights_needed=False`` (counting FLOPs needs only shapes) lets a data file be
    absent; the location rules hold all the same, and a file that is there is checked.
    """
    model_path = Path(model_path)
    files: dict[str, Path] = {}
    sizes: dict[str, int | None] = {}     # per location: the file's size, None when it is absent
    for tensor in external_tensors(model):
        location, offset, length = external_info(tensor, model_path)
        if location not in sizes:
            path = resolve_external(model_path, location, must_exist=weights_needed)
            sizes[location] = path.stat().st_size if path.exists() else None
            if sizes[location] is not None:
                files[location] = path
        size = sizes[location]
        if size is None:
            continue
        expected = _tensor_bytes(tensor)
        if length is None:
            length = expected if expected is not None else size - offset
        elif expected is not None and length != expected:
            raise VskipError(f"{model_path}: tensor {escape(tensor.name)!r}: external data length {length} is not "
                             f"its {expected} bytes")
        if offset + length > size:
            raise VskipError(f"{model_path}: external data file {files[location]} is truncated ({size} bytes, "
                             f"tensor {escape(tensor.name)!r} needs bytes {offset}-{offset + length})")
    return files


def _tensor_bytes(tensor) -> int | None:
    import onnx

    try:
        width = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    if tensor.data_type in (onnx.TensorProto.STRING,) or width == 0:
        return None
    if tensor.data_type in (getattr(onnx.TensorProto, name, -1) for name in ("INT4", "UINT4", "FLOAT4E2M1")):
        return None  # packed two to a byte
    count = 1
    for dim in tensor.dims:
        if dim < 0:
            return None
        count *= dim
    return count * width


# ------------------------------------------------------------------------------ writing

class Outputs:
    """The files one command writes, claimed up front and published together.

    ``inputs``: every file the command reads (a model, its weights, a plan, feeds); no
    output may be one of them. ``force``: whether existing outputs may be replaced.
    """

    def __init__(self, inputs: Iterable[str | os.PathLike] = (), force: bool = False):
        self.force = force
        self._inputs: list[tuple[Path, tuple[int, int] | None]] = []
        self._claimed: dict[Path, Path] = {}      # final path -> temp (written) path
        self._order: list[Path] = []
        self._staging: list[Path] = []            # temp directories (export)
        self._done = False
        for path in inputs:
            self.add_input(path)

    # -- claims
    def add_input(self, path: str | os.PathLike) -> None:
        """``path`` is read by the command: no output, claimed already or later, may be it."""
        path = Path(path)
        try:
            info = path.stat()
            identity = (info.st_dev, info.st_ino)
        except OSError:
            identity = None
        self._inputs.append((Path(os.path.realpath(path)), identity))
        for claimed in self._order:
            self._refuse_input(claimed, "output")

    def _refuse_input(self, path: Path, what: str) -> None:
        real = Path(os.path.realpath(path))
        for source, identity in self._inputs:
            same = real == source
            if not same and identity is not None and os.path.lexists(path):
                with contextlib.suppress(OSError):
                    info = path.stat()
                    same = (info.st_dev, info.st_ino) == identity
            if same:
                raise VskipError(f"{path}: the {what} would overwrite the command's own input {source}; "
                                 "choose another output")

    def claim(self, path: str | os.PathLike, what: str = "output") -> Path:
        """Check that ``path`` may be written; returns it. Nothing is written yet."""
        path = Path(path)
        name = path.name
        if not name or name in (".", ".."):
            raise VskipError(f"{path}: not a file name for the {what}")
        directory = path.parent if str(path.parent) else Path(".")
        real = Path(os.path.realpath(path))
        self._refuse_input(path, what)
        if path in self._claimed or real in {Path(os.path.realpath(p)) for p in self._claimed}:
            raise VskipError(f"{path}: named twice as an output of one command")
        if os.path.lexists(path):
            if path.is_dir() and not path.is_symlink():
                raise VskipError(f"{path}: is a directory; name a file for the {what}")
            if not self.force:
                raise VskipError(f"{path}: exists; pass --force to replace it")
        check_directory(directory)
        limit = _name_max(directory)
        if len(os.fsencode(name)) > limit:
            raise VskipError(f"{path}: the file name is {len(os.fsencode(name))} bytes; this file system allows "
                             f"{limit}")
        self._claimed[path] = None
        self._order.append(path)
        return path

    # -- writing
    def _temp(self, path: Path) -> Path:
        if path not in self._claimed:
            self.claim(path)
        directory = path.parent if str(path.parent) else Path(".")
        try:
            fd, name = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX, dir=directory)
        except OSError as exc:
            raise VskipError(f"{directory}: cannot create files there: {exc.strerror or exc}") from None
        os.close(fd)
        temp = Path(name)
        _live_temps.add(temp)
        old = self._claimed.get(path)
        if old is not None:
            _remove(old)
        self._claimed[path] = temp
        return temp

    def write_with(self, path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
        """Write ``path``'s future content through ``write(handle)`` into its temp file."""
        path = Path(path)
        temp = self._temp(path)
        try:
            with open(temp, "wb") as handle:
                write(handle)
            os.chmod(temp, 0o666 & ~_umask())  # mkstemp makes files private; outputs are not
        except OSError as exc:
            raise VskipError(f"{path}: cannot write it: {exc.strerror or exc}") from None
        return path

    def write_bytes(self, path: str | os.PathLike, data: bytes) -> Path:
        return self.write_with(path, lambda handle: handle.write(data))

    def write_text(self, path: str | os.PathLike, text: str) -> Path:
        return self.write_bytes(path, text.encode("utf-8"))

    def write_npz(self, path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
        return self.write_with(path, lambda handle: np.savez(handle, **arrays))

    def copy(self, source: str | os.PathLike, path: str | os.PathLike,
             progress: Callable[[str], None] | None = None) -> Path:
        """Copy the regular file ``source`` to ``path`` (a byte copy; the source is an input)."""
        self.add_input(source)
        with open_input(source, "file to copy") as src:
            if progress:
                progress(f"copying {os.fstat(src.fileno()).st_size / 2**20:.0f} MiB of weights to {path}")
            return self.write_with(path, lambda handle: shutil.copyfileobj(src, handle, 2**24))

    def staging_directory(self, near: str | os.PathLike) -> Path:
        """A private temp directory beside ``near`` (removed unless committed into place)."""
        parent = Path(near).parent if str(Path(near).parent) else Path(".")
        check_directory(parent)
        try:
            staging = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=parent))
        except OSError as exc:
            raise VskipError(f"{parent}: cannot create files there: {exc.strerror or exc}") from None
        _live_temps.add(staging)
        self._staging.append(staging)
        return staging

    def adopt(self, written: Path, path: str | os.PathLike) -> Path:
        """Publish ``written`` (a file inside one of our staging directories) as ``path``."""
        path = Path(path)
        if path not in self._claimed:
            self.claim(path)
        self._claimed[path] = written
        return path

    def publish_directory(self, staging: Path, directory: Path) -> list[Path]:
        """Move the files of ``staging`` into ``directory``: by one rename when it does not
        exist yet (a reader sees all files or none), else file by file (each claimed)."""
        if not os.path.lexists(directory):
            staging.chmod(0o777 & ~_umask())  # mkdtemp makes it private; an output directory is not
            try:
                os.rename(staging, directory)
            except OSError as exc:
                raise VskipError(f"{directory}: cannot move the output into place: {exc.strerror or exc}") from None
            self._staging.remove(staging)
            _live_temps.discard(staging)
            self._done = True
            return sorted(directory.iterdir())
        for item in sorted(staging.iterdir()):
            self.adopt(item, directory / item.name)
        return self.commit()

    # -- publishing
    def commit(self) -> list[Path]:
        """Rename every written temp into place (claims never written are skipped)."""
        published = []
        for path in self._order:
            temp = self._claimed.get(path)
            if temp is None:
                continue
            try:
                os.replace(temp, path)  # replaces a symlink at ``path`` itself, never its target
            except OSError as exc:
                raise VskipError(f"{path}: cannot move it into place: {exc.strerror or exc}") from None
            _live_temps.discard(temp)
            published.append(path)
        self._done = True
        self.discard()
        return published

    def discard(self) -> None:
        for path in self._order:
            temp = self._claimed.get(path)
            if temp is not None and not self._done:
                _remove(temp)
        for staging in self._staging:
            shutil.rmtree(staging, ignore_errors=True)
            _live_temps.discard(staging)
        self._staging.clear()

    def __enter__(self) -> "Outputs":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self._done:
            self.discard()
        if exc_type is not None and issubclass(exc_type, OSError):
            raise VskipError(f"cannot write the output: {one_line(exc)}") from None


def check_directory(directory: str | os.PathLike) -> Path:
    """``directory`` if it exists and takes new files (creating one is the only honest test)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise VskipError(f"{directory}: no such directory")
    try:
        tempfile.TemporaryFile(dir=directory, prefix=_TEMP_PREFIX).close()
    except OSError as exc:  # os.access lies for root; creating a file does not
        raise VskipError(f"{directory}: directory is not writable ({exc.strerror})") from None
    return directory


def output_directory(path: str | os.PathLike, purpose: str) -> bool:
    """Whether ``path``, a directory a command writes files into, exists already.

    Refused in one line: a dangling symbolic link, something that is not a directory, a
    missing parent, or (the directory, else its parent) one that takes no new files.
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise VskipError(f"{path}: is a dangling symbolic link; name a real directory for {purpose}")
    if path.exists() and not path.is_dir():
        raise VskipError(f"{path}: exists and is not a directory; name a directory for {purpose}")
    if path.exists():
        check_directory(path)
        return True
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise VskipError(f"{parent}: no such directory (for {purpose} {path})")
    check_directory(parent)
    return False


def _name_max(directory: Path) -> int:
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()
    _live_temps.discard(path)


def register_temp(path: str | os.PathLike) -> None:
    """Have ``path`` (a scratch file a command publishes and removes itself) removed on any exit."""
    _live_temps.add(Path(path))


def release_temp(path: str | os.PathLike, remove: bool = False) -> None:
    if remove:
        _remove(Path(path))
    _live_temps.discard(Path(path))


def remove_live_temps() -> None:
    """Remove every temp file or directory not yet published (a last resort at exit)."""
    for path in list(_live_temps):
        _remove(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def signals_raise():
    """SIGTERM raises :class:`Terminated` (and SIGINT KeyboardInterrupt) inside the block,
    so the cleanup of every open :class:`Outputs` runs; temps left are removed at the end."""
    def on_term(signum, frame):
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread: nothing to install
        previous = None
    try:
        yield
    finally:
        remove_live_temps()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


# ----------------------------------------------------------------------------- messages

def escape(text: object) -> str:
    """``text`` on one line: control characters (newlines, escapes) shown as \\xNN."""
    return "".join(c if c.isprintable() else (f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}")
                   for c in str(text))


def one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return escape(f"{where}{exc.strerror}")
    text = str(exc).strip().splitlines()
    return escape(text[0]) if text else type(exc).__name__


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
