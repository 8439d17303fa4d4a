"""The three document kinds (board, doc, discussion), the shape a new one starts with, and the
tools every reader of an untrusted document uses.

The definitive, versioned shapes are the JSON Schemas in shared/schema/ (see shared/schema.py).

Clients can write anything a CRDT allows, so a reader never trusts a value: it checks each one,
keeps what fits the shape, and records what does not as a `Problem(path, message)` instead of
raising. Paths are JSON Pointers into the JSON view of the document ("/tasks/t1/status").

pycrdt facts the readers rely on (0.14): numbers come back as floats; `str()`, `to_py()` and
`to_json` recurse in Rust or Python and can crash on deep nesting, so readers walk one level at a
time and stop at `MAX_DEPTH`; converting a deeply nested plain value (a JSON array nested tens of
thousands of levels, a few dozen kilobytes on the wire) needs more C stack than a default thread
has, so run readers through `call_with_deep_stack`; a Rust panic arrives as `PanicException`, a
`BaseException`, which `is_panic` recognises.
"""

from __future__ import annotations

import base64
import math
import secrets
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal, TypeAlias, TypeVar

from pycrdt import Array, Doc, Map, Text, XmlElement, XmlFragment, XmlText

Kind = Literal["board", "doc", "discussion"]
"""The kinds a document is created as; each has a schema and a reader of its own."""
KINDS: tuple[Kind, ...] = ("board", "doc", "discussion")
AnyKind = Literal["board", "doc", "discussion", "raw"]
"""A kind, or `raw`: a document of any other shape, written by some Yjs application, read
generically (every root as JSON; see shared/raw.py)."""
ANY_KINDS: tuple[AnyKind, ...] = ("board", "doc", "discussion", "raw")
SCHEMA_VERSION = 1

MAX_DEPTH = 64
"""How deep readers follow nested values before they stop and report."""
MAX_PROBLEMS = 500
"""How many problems a reader lists before it only counts them."""

JsonValue: TypeAlias = None | bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"]
T = TypeVar("T")


def initialize(
    doc: Doc[Any],
    kind: Kind,
    *,
    title: str,
    department: str | None = None,
    project: str | None = None,
    tags: Sequence[str] = (),
) -> None:
    """Write the initial shape of `kind` into an empty `doc` (call inside a transaction)."""
    if kind not in KINDS:
        raise ValueError(f"unknown document kind {kind!r}")
    meta = doc.get("meta", type=Map)
    meta["title"] = title
    meta["kind"] = kind
    meta["schema"] = SCHEMA_VERSION
    if department is not None:
        meta["department"] = department
    if tags:
        meta["tags"] = Array(list(dict.fromkeys(tags)))
    if kind == "board":
        if project is not None:
            meta["project"] = project
        doc.get("tasks", type=Map)
    elif kind == "doc":
        doc.get("default", type=XmlFragment)
    else:
        meta["subject_doc"] = None
        meta["subject_task"] = None
        doc.get("messages", type=Array)


def known_kind(value: object) -> Kind | None:
    """`value` when it names one of KINDS, else None (a recorded kind, `raw` or null)."""
    for kind in KINDS:
        if value == kind:
            return kind
    return None


def detect_kind(doc: Doc[Any]) -> Kind | None:
    """The kind recorded in the document's `meta.kind`, or None when absent or not a kind."""
    return call_with_deep_stack(lambda: _detect_kind(doc))


def _detect_kind(doc: Doc[Any]) -> Kind | None:
    try:
        if "meta" not in doc.keys():
            return None
        value = doc.get("meta", type=Map).get("kind")
    except Exception:
        return None
    except BaseException as exc:
        if is_panic(exc):
            return None
        raise
    for kind in KINDS:
        if value == kind:
            return kind
    return None


# --- problems -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    """Something in a document that does not match its schema and was skipped or replaced."""

    path: str
    """JSON Pointer into the document's JSON view ("" for the whole document)."""
    message: str

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


class ProblemLog:
    """Collects problems, listing at most `limit` and counting the rest."""

    def __init__(self, limit: int = MAX_PROBLEMS) -> None:
        self._limit = limit
        self._items: list[Problem] = []
        self._seen: set[str] = set()
        self._dropped = 0

    def add(self, path: str, message: str) -> None:
        if len(self._items) < self._limit:
            self._items.append(Problem(path, message))
        else:
            self._dropped += 1

    def add_once(self, key: str, path: str, message: str) -> None:
        """Add a problem only the first time `key` is seen (e.g. one unknown mark type)."""
        if key not in self._seen:
            self._seen.add(key)
            self.add(path, message)

    def __len__(self) -> int:
        return len(self._items) + self._dropped

    def problems(self) -> list[Problem]:
        items = list(self._items)
        if self._dropped:
            items.append(Problem("", f"{self._dropped} more problems not listed"))
        return items


def pointer(base: str, *parts: str | int) -> str:
    """Extend JSON Pointer `base` with `parts` (escaped; very long parts shortened)."""
    out = base
    for part in parts:
        text = str(part)
        if len(text) > 64:
            text = text[:60] + "…"
        out += "/" + text.replace("~", "~0").replace("/", "~1")
    return out


def is_panic(exc: BaseException) -> bool:
    """Whether `exc` is a Rust panic surfaced by pyo3 (`PanicException`, a BaseException)."""
    return type(exc).__name__ == "PanicException"


def describe(value: object) -> str:
    """A short name for the type of a value found in a document, for problem messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bytes | bytearray):
        return "binary data"
    if isinstance(value, Map):
        return "a Map"
    if isinstance(value, Array):
        return "an Array"
    if isinstance(value, Text):
        return "a Text"
    if isinstance(value, XmlText):
        return "an XmlText"
    if isinstance(value, XmlElement):
        return "an XmlElement"
    if isinstance(value, XmlFragment):
        return "an XmlFragment"
    if isinstance(value, Doc):
        return "a subdocument"
    if isinstance(value, dict):
        return "a plain object"
    if isinstance(value, list | tuple):
        return "a plain array"
    return type(value).__name__


# --- values ---------------------------------------------------------------------------------


def parse_timestamp(value: str) -> datetime | date:
    """Parse an ISO 8601 date ("2025-11-11") or date and time ("2025-11-11T20:00:00+08:00",
    "2025-11-11T12:00:00.000Z"). Raises ValueError."""
    text = value.strip()
    if not text or len(text) > 64:
        raise ValueError(f"not an ISO 8601 timestamp: {value[:64]!r}")
    if len(text) == 10 and "T" not in text and " " not in text:
        return date.fromisoformat(text)
    if "T" not in text and " " not in text and ":" not in text:
        raise ValueError(f"not an ISO 8601 timestamp: {value!r}")
    return datetime.fromisoformat(text)


def timestamp_text(value: str | date | datetime) -> str:
    """Validate and normalise a timestamp for storage (raises ValueError)."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if not isinstance(value, str):
        raise ValueError(f"a timestamp must be an ISO 8601 string, date or datetime, not {value!r}")
    parse_timestamp(value)
    return value.strip()


def utc_now() -> str:
    """The current time as JavaScript's Date.toISOString() writes it."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_id() -> str:
    """A fresh random id for a task, subtask or message."""
    return secrets.token_hex(8)


def to_plain(value: object, *, max_depth: int = MAX_DEPTH) -> tuple[JsonValue, bool]:
    """Convert a value read from a document to plain JSON, following at most `max_depth` levels.

    Returns (value, truncated). Shared types are read one level at a time (never through
    pycrdt's recursive `to_py`/`str`), integral floats become ints, binary becomes base64 text,
    non-finite numbers become null. Anything deeper than `max_depth` is replaced by null.
    """
    truncated = False

    def walk(v: object, depth: int) -> JsonValue:
        nonlocal truncated
        if v is None or isinstance(v, bool | str):
            return v
        if isinstance(v, int):
            return v
        if isinstance(v, float):
            if not math.isfinite(v):
                truncated = True
                return None
            if v.is_integer() and abs(v) < 2**53:
                return int(v)
            return v
        if isinstance(v, bytes | bytearray):
            return base64.b64encode(bytes(v)).decode("ascii")
        if isinstance(v, Text | XmlText):
            return str(v)
        if depth >= max_depth:
            truncated = True
            return None
        if isinstance(v, Map | dict):
            entries = sorted(((str(k), x) for k, x in v.items()), key=lambda e: e[0])
            return {k: walk(x, depth + 1) for k, x in entries}
        if isinstance(v, Array):
            return [walk(x, depth + 1) for x in sequence_items(v)]
        if isinstance(v, list | tuple):
            return [walk(x, depth + 1) for x in v]
        truncated = True
        return None

    return walk(value, 0), truncated


def sequence_items(array: Array[Any]) -> list[Any]:
    """The items of `array`, in order."""
    with array.doc.transaction():
        return [array[i] for i in range(len(array))]


_FAST_ROOT_ITEMS = 1000


def root_items(doc: Doc[Any], name: str, log: ProblemLog) -> list[Any]:
    """The items of root Array `name`.

    pycrdt reads an Array item by walking from its start, so reading a long array one index at a
    time is quadratic. For long root arrays this reads the shared-type items (Maps, Arrays, ...)
    in one pass through a text view of the root instead; plain values in such an array (which the
    schemas never put there) are then counted and reported, not returned.
    """
    array = doc.get(name, type=Array)
    length = len(array)
    if length <= _FAST_ROOT_ITEMS:
        return sequence_items(array)
    try:
        view = doc.get(name, type=Text)
        items = [value for value, _attrs in view.diff() if not isinstance(value, str)]
    finally:
        doc.get(name, type=Array)
    if len(items) < length:
        skipped = length - len(items)
        log.add(pointer("", name), f"{skipped} items are plain values, not Maps; skipped")
    return items


_SEQUENCE_TYPES: tuple[type[Any], ...] = (Array, Text, XmlFragment)


def read_root(doc: Doc[Any], name: str, expected: type[T], log: ProblemLog) -> T | None:
    """Root `name` viewed as `expected` (Map, Array or XmlFragment), or None when it is absent.

    A root's Yjs type is not stored in updates; any view of it can be taken. When the expected
    view is empty but another one is not, the client used another type: that is reported and the
    (empty) expected view returned.
    """
    if name not in doc.keys():
        return None
    root: T = doc.get(name, type=expected)
    if _size(root) == 0:
        found: str | None = None
        try:
            if expected is not Map and len(doc.get(name, type=Map)) > 0:
                found = "a Map"
            elif expected is Map and len(doc.get(name, type=Array)) > 0:
                found = "a sequence (Array, Text or XmlFragment)"
        finally:
            root = doc.get(name, type=expected)
        if found is not None:
            log.add(pointer("", name), f"is {found}, not {_type_name(expected)}; ignored")
    return root


def _size(value: object) -> int:
    if isinstance(value, XmlFragment):
        return len(value.children)
    if isinstance(value, Map | Array | Text):
        return len(value)
    return 0


def _type_name(cls: type[Any]) -> str:
    if cls is Map:
        return "a Map"
    if cls is Array:
        return "an Array"
    if cls is XmlFragment:
        return "an XmlFragment"
    return cls.__name__


# Stack sizes tried for big-stack threads, largest first: a 16 MiB frame of pure nesting needs
# about 2.3 GiB. Only address space is reserved; a machine that refuses gets a smaller one.
DEEP_STACK_MB = (4096, 1024, 256)


def start_deep_thread(target: Callable[[], None], name: str) -> threading.Thread:
    """Start a thread with the largest stack the machine will reserve; code on it may call
    the readers directly (they detect it)."""

    def run() -> None:
        _DEEP.active = True
        target()

    with _STACK_LOCK:
        for size in DEEP_STACK_MB:
            previous = threading.stack_size(size * 1024 * 1024)
            try:
                thread = threading.Thread(target=run, name=name, daemon=True)
                thread.start()
                return thread
            except (RuntimeError, MemoryError):
                continue
            finally:
                threading.stack_size(previous)
    raise RuntimeError("could not start a thread with a large stack")


def call_with_deep_stack(fn: Callable[[], T]) -> T:
    """Run `fn()` on a fresh thread with a large C stack and return its result (or raise).

    pycrdt converts plain nested values in Rust, recursively; a value nested about 20,000 levels
    deep overflows a default 8 MiB stack and kills the process (a segfault, not an exception).
    The big stack is only reserved address space. The calling thread waits, so `fn` sees the
    document exactly as the caller would. Already on such a thread, `fn` runs directly.
    The readers (read_board, read_doc, read_discussion, detect_kind) use this themselves.
    """
    if getattr(_DEEP, "active", False):
        return fn()
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as exc:
            error.append(exc)

    start_deep_thread(run, "tandem-deep-stack").join()
    if error:
        raise error[0]
    return result[0]


_STACK_LOCK = threading.Lock()
_DEEP = threading.local()


class Fields:
    """Typed, forgiving access to the entries of a Map (or plain object) from a document.

    Every accessor returns a value of the declared type; a value of the wrong type is reported
    to the log (with the entry's path) and replaced by the default.
    """

    def __init__(self, values: Mapping[str, Any], path: str, log: ProblemLog) -> None:
        self.values = values
        self.path = path
        self.log = log

    @classmethod
    def of(cls, value: object, path: str, log: ProblemLog, *, what: str) -> Fields | None:
        """Fields of `value` when it is a Map (or, reported, a plain object); else report."""
        if isinstance(value, Map):
            return cls(dict(value.items()), path, log)
        if isinstance(value, dict):
            log.add(path, f"{what} is a plain object, not a Map (concurrent edits will not merge)")
            return cls({str(k): v for k, v in value.items()}, path, log)
        log.add(path, f"{what} is {describe(value)}, not a Map; skipped")
        return None

    def at(self, key: str) -> str:
        return pointer(self.path, key)

    def _wrong(self, key: str, expected: str, value: object, fallback: str) -> None:
        self.log.add(self.at(key), f"expected {expected}, found {describe(value)}; {fallback}")

    def string(self, key: str, *, required: bool = False, fallback: str = "ignored") -> str | None:
        """A string (or Y.Text) entry; None when absent or null."""
        if key not in self.values:
            if required:
                self.log.add(self.at(key), "missing")
            return None
        value = self.values[key]
        if value is None:
            if required:
                self.log.add(self.at(key), "is null")
            return None
        if isinstance(value, str):
            return value
        if isinstance(value, Text):
            return str(value)
        self._wrong(key, "a string", value, fallback)
        return None

    def number(self, key: str) -> float | None:
        """A finite number; None when absent or null."""
        value = self.values.get(key)
        if value is None:
            return None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
            if math.isfinite(number):
                return number
            self.log.add(self.at(key), "is not a finite number; ignored")
            return None
        self._wrong(key, "a number", value, "ignored")
        return None

    def integer(self, key: str) -> int | None:
        number = self.number(key)
        if number is None:
            return None
        if not number.is_integer():
            self.log.add(self.at(key), "is not a whole number; ignored")
            return None
        return int(number)

    def boolean(self, key: str, *, default: bool = False) -> bool:
        """A boolean; "true"/"false" strings and 0/1 are read, but reported."""
        value = self.values.get(key)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if value in ("true", 1):
            self._wrong(key, "a boolean", value, "read as true")
            return True
        if value in ("false", 0):
            self._wrong(key, "a boolean", value, "read as false")
            return False
        self._wrong(key, "a boolean", value, f"read as {str(default).lower()}")
        return default

    def timestamp(self, key: str, *, required: bool = False) -> str | None:
        """An ISO 8601 timestamp string, stripped; None when absent, null or unparseable."""
        text = self.string(key, required=required)
        if text is None:
            return None
        try:
            parse_timestamp(text)
        except ValueError:
            shown = text if len(text) <= 40 else text[:37] + "…"
            self.log.add(self.at(key), f"is not an ISO 8601 date or time: {shown!r}; ignored")
            return None
        return text.strip()

    def choice(self, key: str, allowed: Iterable[str], default: str) -> str:
        """One of `allowed`; absent, null or anything else gives `default` (reported)."""
        options = tuple(allowed)
        value = self.values.get(key)
        if isinstance(value, Text):
            value = str(value)
        if value in options:
            assert isinstance(value, str)
            return value
        if key not in self.values or value is None:
            self.log.add(self.at(key), f"missing; read as {default!r}")
        elif isinstance(value, str):
            shown = value if len(value) <= 40 else value[:37] + "…"
            self.log.add(
                self.at(key),
                f"{shown!r} is not one of {', '.join(options)}; read as {default!r}",
            )
        else:
            self._wrong(key, "one of " + ", ".join(options), value, f"read as {default!r}")
        return default

    def sequence(self, key: str) -> list[Any] | None:
        """The items of an Array (or, reported, a plain array); None when absent or null."""
        value = self.values.get(key)
        if value is None:
            return None
        if isinstance(value, Array):
            return sequence_items(value)
        if isinstance(value, list | tuple):
            return list(value)
        self._wrong(key, "an Array", value, "ignored")
        return None

    def strings(self, key: str) -> tuple[str, ...]:
        """An Array of strings; other items are reported and skipped, duplicates dropped."""
        items = self.sequence(key)
        if items is None:
            return ()
        out: list[str] = []
        for index, item in enumerate(items):
            if isinstance(item, Text):
                item = str(item)
            if isinstance(item, str):
                if item not in out:
                    out.append(item)
            else:
                self.log.add(
                    pointer(self.path, key, index),
                    f"expected a string, found {describe(item)}; skipped",
                )
        return tuple(out)


def guarded(log: ProblemLog, path: str, what: str, fn: Callable[[], T], fallback: T) -> T:
    """Run `fn()`; if reading the document fails in any way, report it and return `fallback`."""
    try:
        return fn()
    except RecursionError:
        log.add(path, f"{what} is nested too deeply to read; skipped")
    except Exception as exc:
        log.add(path, f"{what} could not be read ({type(exc).__name__}); skipped")
    except BaseException as exc:
        if not is_panic(exc):
            raise
        log.add(path, f"{what} could not be read (the CRDT library failed); skipped")
    return fallback


def read_meta(doc: Doc[Any], log: ProblemLog, kind: Kind) -> Fields | None:
    """The `meta` root of a document as Fields, reporting a missing meta, another kind and a
    newer schema version."""
    meta = read_root(doc, "meta", Map, log)
    if meta is None:
        log.add("/meta", "missing")
        return None
    fields = Fields(dict(meta.items()), "/meta", log)
    found = fields.values.get("kind")
    if found is not None and found != kind:
        shown = found if isinstance(found, str) else describe(found)
        log.add("/meta/kind", f"is {shown!r}; read as a {kind}")
    schema = fields.integer("schema")
    if schema is not None and schema > SCHEMA_VERSION:
        log.add("/meta/schema", f"written for schema version {schema}; read as {SCHEMA_VERSION}")
    return fields
