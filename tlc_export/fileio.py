"""Writing outputs: every file or directory a run writes goes through one :class:`OutputSet`.

The rules (issue 12, items 2, 3 and 6):

* An output never replaces an input (compared by device and inode, so symlinks and hard links count),
  two outputs of one run never share a path, and an existing file tlc-export did not write is replaced
  only when the user named it explicitly (a previous tlc-export report, graph, image or Triton entry
  is recognised and may be replaced).
* Paths are checked before any work: a missing parent directory is refused (tlc-export creates only a
  directory the user names as an output directory, and says so), as is a path that is a directory,
  lies under a file, or sits in a directory that cannot be written.
* All outputs are staged as temporaries beside their targets and renamed together at :meth:`commit`,
  with SIGINT/SIGTERM held off meanwhile; any failure leaves the previous outputs as they were.
  Temporaries are named ``.<name>.tlc-tmp-<pid>-<random>`` (backups ``.tlc-old-``); those of a process
  that no longer runs (SIGKILL) are removed by the next run writing into that directory.
* A new output gets the mode any file the user creates gets (``0o666 & ~umask``); a replaced file
  keeps its mode.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import UserError

TOOL = "tlc-export"
TMP_TAG, OLD_TAG = "tlc-tmp", "tlc-old"
_LEFTOVER = re.compile(rf"^\.(?P<name>.+)\.(?P<kind>{TMP_TAG}|{OLD_TAG})-(?P<pid>\d+)-[A-Za-z0-9_]+$")
ONNX_REPORT_KEY = "tlc_export.report"        # ONNX metadata_props key holding the conversion report
PNG_SOFTWARE = b"Software\x00" + TOOL.encode()


# ----------------------------------------------------------------------------------------- small helpers

def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def default_mode(directory: bool = False) -> int:
    """The mode ``open()``/``mkdir()`` would give a new file/directory under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def same_file(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` are one file (device and inode: symlinks and hard links count)."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def refuse_overwriting_input(output: Path, inputs: list[Path]) -> None:
    for inp in inputs:
        if Path(output).exists() and Path(inp).exists() and same_file(Path(output), Path(inp)):
            raise UserError(f"output {output} is the input file {inp}; choose another output path")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # someone else's live process
        return True
    return True


def remove_leftovers(directory: Path) -> list[Path]:
    """Remove temporaries (and restore backups) left in ``directory`` by a tlc-export process that no
    longer runs, e.g. one killed with SIGKILL. Returns what was removed or restored."""
    done = []
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return done
    for entry in entries:
        m = _LEFTOVER.match(entry.name)
        if not m or _pid_alive(int(m["pid"])):
            continue
        final = entry.with_name(m["name"])
        try:
            if m["kind"] == OLD_TAG and not final.exists() and not final.is_symlink():
                os.rename(entry, final)                 # killed between moving a directory aside and back
            elif entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            done.append(entry)
        except OSError:
            pass
    return done


# ----------------------------------------------------------------------------------------- recognising our files

def is_tlc_report(path: Path) -> bool:
    """A JSON file tlc-export wrote (its ``"tool": "tlc-export"`` field)."""
    try:
        if Path(path).stat().st_size > 64 << 20:
            return False
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, dict) and data.get("tool") == TOOL


def onnx_report(path_or_model) -> dict | None:
    """The conversion report recorded in an ONNX graph's metadata, or None."""
    import onnx

    model = path_or_model
    if not isinstance(model, onnx.ModelProto):
        try:
            model = onnx.load(str(path_or_model), load_external_data=False)
        except Exception:
            return None
    for prop in model.metadata_props:
        if prop.key == ONNX_REPORT_KEY:
            try:
                report = json.loads(prop.value)
            except ValueError:
                return None
            return report if isinstance(report, dict) and report.get("tool") == TOOL else None
    return None


def is_tlc_graph(path: Path) -> bool:
    """An ONNX graph tlc-export wrote: its metadata carries our report, or (graphs written before the
    report was recorded inside) the report beside it is ours."""
    return onnx_report(path) is not None or is_tlc_report(Path(path).with_suffix(".json"))


def is_tlc_png(path: Path) -> bool:
    """A PNG tlc-export wrote (a ``Software: tlc-export`` tEXt chunk before the image data)."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return False
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        return False
    pos = 8
    while pos + 8 <= len(head):
        length, kind = int.from_bytes(head[pos:pos + 4], "big"), head[pos + 4:pos + 8]
        if kind == b"tEXt" and head[pos + 8:pos + 8 + length] == PNG_SOFTWARE:
            return True
        if kind in (b"IDAT", b"IEND"):
            return False
        pos += 12 + length
    return False


def tag_png(data: bytes) -> bytes:
    """PNG bytes with a ``Software: tlc-export`` tEXt chunk after IHDR (how :func:`is_tlc_png` knows it)."""
    import zlib

    ihdr_end = 8 + 12 + int.from_bytes(data[8:12], "big")
    chunk = (len(PNG_SOFTWARE).to_bytes(4, "big") + b"tEXt" + PNG_SOFTWARE
             + zlib.crc32(b"tEXt" + PNG_SOFTWARE).to_bytes(4, "big"))
    return data[:ihdr_end] + chunk + data[ihdr_end:]


def is_tlc_triton_entry(path: Path) -> bool:
    """A Triton model directory tlc-export wrote (its README.txt says so)."""
    try:
        return "written by tlc-export" in (Path(path) / "README.txt").read_text(encoding="utf-8")[:400]
    except (OSError, UnicodeDecodeError):
        return False


# ----------------------------------------------------------------------------------------- the output set

@dataclass
class _Output:
    final: Path
    what: str
    directory: bool
    temp: Path | None = None


@contextmanager
def _signals_held():
    """Hold SIGINT/SIGTERM so a commit's renames are not cut in two: they are recorded meanwhile and
    re-raised (to the previous handlers) when the block ends. Python-level handlers, not a signal mask:
    a mask on this thread would not stop delivery through ONNX Runtime's or torch's worker threads."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in held}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        for s in dict.fromkeys(caught):
            signal.raise_signal(s)


def _temp_name(final: Path, kind: str) -> str:
    return f".{final.name}.{kind}-{os.getpid()}-"


class OutputSet:
    """The outputs of one run: claimed (checked) first, staged as temporaries, renamed together.

    ``inputs``: files the run reads (never written over). ``note``: receives one-line notes (a created
    directory). Use as a context manager: leaving it by an exception discards every temporary."""

    def __init__(self, inputs=(), note: Callable[[str], None] | None = None):
        self.inputs = [Path(p) for p in inputs if p is not None]
        self.note = note
        self._outputs: dict[Path, _Output] = {}
        self._checked_dirs: set[Path] = set()
        self._scratch: list[Path] = []
        self._pending_dirs: dict[Path, str] = {}      # output directories to create when first written
        self._created_dirs: list[Path] = []

    def __enter__(self) -> "OutputSet":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self.discard()
        return False

    # -- claiming ------------------------------------------------------------------------------------

    def add_input(self, path) -> None:
        self.inputs.append(Path(path))

    def output_dir(self, path, what: str, create_now: bool = False) -> Path:
        """A directory the user named for outputs. When missing it is created with the first staged
        output (and a note at commit; removed again if the run fails) provided its parent exists;
        refused when it is a file or its parent is missing. ``create_now``: create it at once (for
        outputs other code writes into it), with the note."""
        path = Path(path)
        if path.is_dir():
            self._check_writable(path, what)
            return path
        if path.exists() or path.is_symlink():
            raise UserError(f"{what} {path} exists and is not a directory; give a directory")
        self._check_parent(path, what)
        self._check_writable(path.parent, what)
        self._pending_dirs[Path(os.path.abspath(path))] = what
        if create_now:
            self._make_dir(path)
            if self.note is not None:
                self.note(f"created directory {path}")
            self._created_dirs.clear()
        return path

    def _make_dir(self, directory: Path) -> None:
        key = Path(os.path.abspath(directory))
        if key not in self._pending_dirs or key.is_dir():
            return
        try:
            key.mkdir()
        except OSError as exc:
            raise UserError(f"cannot create {self._pending_dirs[key]} {directory}: {_reason(exc)}") from None
        self._created_dirs.append(key)

    def claim(self, path, what: str, *, explicit: bool, recognise: Callable[[Path], bool] | None = None,
              directory: bool = False, flag: str | None = None) -> Path:
        """Check that ``path`` may be written as ``what`` (see the module doc) and reserve it.

        ``explicit``: the user named this path (an existing file may then be replaced). ``recognise``:
        tells a previous tlc-export output, which may be replaced anyway. ``flag``: the option that
        names this output, for the message."""
        path = Path(path)
        key = Path(os.path.abspath(path))
        if key in self._outputs:
            if self._outputs[key].what == what:
                return path
            raise UserError(f"{self._outputs[key].what} and {what} would both be written to {path}; "
                            f"give them different paths")
        for other in self._outputs.values():
            if path.exists() and other.final.exists() and same_file(path, other.final):
                raise UserError(f"{other.what} {other.final} and {what} {path} are the same file; "
                                f"give them different paths")
        self._check_target(path, what, directory)
        self._check_not_input(path, what)
        if path.exists() and not explicit and not (recognise is not None and recognise(path)):
            how = f"name it with {flag} to replace it, or pass {flag} another path" if flag else "move it away"
            raise UserError(f"{path} exists and was not written by tlc-export; {what} would replace it: {how}")
        self._outputs[key] = _Output(path, what, directory)
        return path

    def _check_target(self, path: Path, what: str, directory: bool) -> None:
        if path.is_dir() and not directory:
            raise UserError(f"{what} {path} is a directory; give a file path")
        if path.exists() and directory and not path.is_dir():
            raise UserError(f"{what} {path} exists and is not a directory")
        if Path(os.path.abspath(path.parent)) in self._pending_dirs:
            return
        self._check_parent(path, what)
        self._check_writable(path.parent, what)

    @staticmethod
    def _check_parent(path: Path, what: str) -> None:
        parent = path.parent
        if parent.is_dir():
            return
        ancestor = parent
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if ancestor.exists() and not ancestor.is_dir():
            raise UserError(f"{what} {path} is under {ancestor}, which is a file, not a directory")
        raise UserError(f"the directory of {what} {path} does not exist: create {parent} first "
                        f"(tlc-export does not create missing parent directories)")

    def _check_writable(self, directory: Path, what: str) -> None:
        directory = Path(os.path.abspath(directory))
        if directory in self._checked_dirs:
            return
        try:                                   # a real probe: os.access says yes to root on read-only mounts
            fd, probe = tempfile.mkstemp(prefix=_temp_name(Path("probe"), TMP_TAG), dir=directory)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise UserError(f"cannot write {what} into {directory}: {_reason(exc)}") from None
        remove_leftovers(directory)
        self._checked_dirs.add(directory)

    def _check_not_input(self, path: Path, what: str) -> None:
        for inp in self.inputs:
            if path.exists() and inp.exists() and same_file(path, inp):
                raise UserError(f"{what} {path} is the input file {inp}; choose another path")

    # -- staging ----------------------------------------------------------------------------------------

    def _get(self, path, what: str | None, directory: bool) -> _Output:
        key = Path(os.path.abspath(path))
        if key not in self._outputs:
            self.claim(path, what or f"output {Path(path).name}", explicit=True, directory=directory)
        return self._outputs[key]

    def stage(self, path, what: str | None = None) -> Path:
        """A fresh temporary beside ``path`` for a writer that needs a file name; renamed at commit."""
        out = self._get(path, what, directory=False)
        self._drop_temp(out)
        self._make_dir(out.final.parent)
        try:
            fd, tmp = tempfile.mkstemp(prefix=_temp_name(out.final, TMP_TAG), dir=out.final.parent)
        except OSError as exc:
            raise UserError(f"cannot write {out.what} {out.final}: {_reason(exc)}") from None
        os.close(fd)
        out.temp = Path(tmp)
        return out.temp

    def stage_dir(self, path, what: str | None = None) -> Path:
        """A fresh temporary directory beside ``path``, to fill; renamed into place at commit."""
        out = self._get(path, what, directory=True)
        self._drop_temp(out)
        self._make_dir(out.final.parent)
        try:
            out.temp = Path(tempfile.mkdtemp(prefix=_temp_name(out.final, TMP_TAG), dir=out.final.parent))
        except OSError as exc:
            raise UserError(f"cannot write {out.what} {out.final}: {_reason(exc)}") from None
        return out.temp

    def scratch_dir(self, near) -> Path:
        """A work directory beside ``near`` (named like a temporary, so a killed run's is cleaned up),
        removed at commit or discard."""
        near = Path(near)
        self._make_dir(near.parent)
        try:
            work = Path(tempfile.mkdtemp(prefix=_temp_name(near, TMP_TAG), dir=near.parent))
        except OSError as exc:
            raise UserError(f"cannot write into {near.parent}: {_reason(exc)}") from None
        self._scratch.append(work)
        return work

    def write_bytes(self, path, data: bytes, what: str | None = None) -> Path:
        tmp = self.stage(path, what)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
        except OSError as exc:
            raise UserError(f"cannot write {self._get(path, what, False).what} {path}: {_reason(exc)}") from None
        return tmp

    def write_text(self, path, text: str, what: str | None = None) -> Path:
        return self.write_bytes(path, text.encode("utf-8"), what)

    # -- committing -------------------------------------------------------------------------------------

    def commit(self) -> list[Path]:
        """Rename every staged temporary into place, all or none; returns the final paths."""
        staged = [o for o in self._outputs.values() if o.temp is not None]
        done: list[tuple[_Output, Path | None]] = []
        with _signals_held():
            try:
                for out in staged:
                    self._set_mode(out)
                for out in staged:
                    done.append((out, self._swap_in(out)))
            except OSError as exc:
                self._roll_back(done)
                self.discard()
                raise UserError(f"cannot write {staged[len(done)].what} {staged[len(done)].final}: "
                                f"{_reason(exc)}; the previous outputs are unchanged") from None
            except BaseException:
                self._roll_back(done)
                self.discard()
                raise
            for _, backup in done:
                _remove(backup)
        for out in staged:
            out.temp = None
        self._remove_scratch()
        if self.note is not None:
            for d in self._created_dirs:
                self.note(f"created directory {d}")
        self._created_dirs.clear()
        return [o.final for o in staged]

    @staticmethod
    def _set_mode(out: _Output) -> None:
        if out.final.exists() and out.final.is_dir() == out.directory:
            mode = stat.S_IMODE(os.stat(out.final).st_mode)      # a replaced file keeps its mode
        else:
            mode = default_mode(out.directory)
        os.chmod(out.temp, mode)

    @staticmethod
    def _swap_in(out: _Output) -> Path | None:
        """Put ``out.temp`` at ``out.final``; returns the backup of what was there (None if nothing)."""
        final = out.final
        backup = None
        if out.directory and final.is_dir() and not final.is_symlink():
            backup = Path(tempfile.mkdtemp(prefix=_temp_name(final, OLD_TAG), dir=final.parent))
            os.rmdir(backup)
            os.rename(final, backup)
            os.rename(out.temp, final)
            return backup
        if final.exists() or final.is_symlink():
            fd, name = tempfile.mkstemp(prefix=_temp_name(final, OLD_TAG), dir=final.parent)
            os.close(fd)
            backup = Path(name)
            try:
                os.unlink(backup)
                os.link(final, backup, follow_symlinks=False)    # the old file stays at final until replaced
            except OSError:
                shutil.copy2(final, backup, follow_symlinks=False)
        os.replace(out.temp, final)
        return backup

    @staticmethod
    def _roll_back(done: list[tuple[_Output, Path | None]]) -> None:
        for out, backup in reversed(done):
            try:
                if out.directory and out.final.is_dir():
                    shutil.rmtree(out.final)
                elif backup is None:
                    out.final.unlink(missing_ok=True)
                if backup is not None:
                    os.replace(backup, out.final)
            except OSError:
                pass

    def _drop_temp(self, out: _Output) -> None:
        if out.temp is not None:
            _remove(out.temp)
            out.temp = None

    def discard(self) -> None:
        """Remove every staged temporary (the previous outputs stay as they were)."""
        for out in self._outputs.values():
            self._drop_temp(out)
        self._remove_scratch()
        while self._created_dirs:
            try:
                self._created_dirs.pop().rmdir()
            except OSError:           # not empty: something else wrote there meanwhile
                pass

    def _remove_scratch(self) -> None:
        while self._scratch:
            _remove(self._scratch.pop())


def _remove(path: Path | None) -> None:
    if path is None:
        return
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


# ----------------------------------------------------------------------------------------- one-file writes

def atomic_write_bytes(path: Path, data: bytes, inputs=()) -> None:
    """Write ``data`` to ``path`` (a path the caller was given explicitly) through an :class:`OutputSet`."""
    with OutputSet(inputs) as outputs:
        outputs.write_bytes(path, data)
        outputs.commit()


def atomic_write_text(path: Path, text: str, inputs=()) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), inputs)


def read_onnx(path, what: str = "graph"):
    """An ONNX model from ``path``; a missing, empty, truncated or non-ONNX file is one-line ``UserError``."""
    import onnx

    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} not found: {path}")
    if not path.is_file():
        raise UserError(f"{what} {path} is not a file")
    if path.stat().st_size == 0:
        raise UserError(f"{what} {path} is empty (0 bytes); is the file complete?")
    try:
        model = onnx.load(str(path))
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"cannot read {what} {path} as ONNX ({first}); is the file complete?") from None
    if not model.HasField("graph") or not model.graph.node:
        raise UserError(f"{what} {path} is not an ONNX model (no graph nodes); is the file complete?")
    return model
