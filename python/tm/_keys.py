"""Call keys and result formats for cached calls (seed 000).

A call's key is a digest of the function's module and qualified name, its arguments bound to the
signature (defaults applied, keyword order irrelevant) and canonicalised by content, its seed and
its version. Results are stored in a format that keeps their type: tagged JSON (a tuple comes back
a tuple, an int an int), ``.npy``, Parquet, raw bytes, or pickle.

numpy and pandas are never imported here: a value is recognised as an array or a frame by its
type's module, and only then is the library (already imported by whoever made the value) used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import decimal
import enum
import functools
import hashlib
import inspect
import io
import json
import marshal
import math
import os
import pathlib
import pickle
import sys
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from .exceptions import CacheKeyError

__all__ = [
    "Binder",
    "canonical",
    "canonical_inputs",
    "decode",
    "encode",
    "key_of",
    "source_version",
]

#: The tag key of tagged JSON; a dict that has it as a key is itself stored tagged.
TAG = "__tm__"

_dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=True).encode
# Results keep their dicts' order: no sorting there.
_dumps_result = json.JSONEncoder(separators=(",", ":"), allow_nan=True).encode


def _hex(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _type_name(t: type) -> str:
    return f"{t.__module__}.{t.__qualname__}"


def _numpy_array(value: Any, where: str) -> Any:
    np = sys.modules["numpy"]
    if value.dtype.hasobject:
        return {TAG: "ndarray", "dtype": "object", "v": canonical(value.tolist(), where)}
    arr = np.ascontiguousarray(value)
    return {
        TAG: "ndarray",
        "dtype": arr.dtype.str,
        "shape": list(arr.shape),
        "sha": _hex(arr.tobytes()),
    }


def _pandas(value: Any, where: str) -> Any:
    pd = sys.modules["pandas"]
    try:
        digest = _hex(pd.util.hash_pandas_object(value, index=True).values.tobytes())
    except TypeError:  # unhashable cells (lists, dicts): fall back to a pickle of the content
        digest = _hex(pickle.dumps(value, protocol=5))
    kind = type(value).__name__
    out: dict[str, Any] = {TAG: kind, "sha": digest, "shape": list(value.shape)}
    if kind == "DataFrame":
        out["columns"] = [str(c) for c in value.columns]
        out["dtypes"] = [str(d) for d in value.dtypes]
    else:
        out["dtype"] = str(value.dtype)
        out["name"] = str(value.name)
    return out


#: Integers a key can hold: those JSON can write (Python refuses longer ones as text).
_INT_DIGITS = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 0
_BIG = 10**_INT_DIGITS if _INT_DIGITS else float("inf")


def canonical_inputs(bound: dict[str, Any]) -> str:
    """The canonical JSON of a call's bound arguments (the key's inputs).

    Raises:
        CacheKeyError: an argument has no canonical form, contains itself or is nested too
            deeply; the message names it.
    """
    try:
        return _dumps({name: canonical(value, name) for name, value in bound.items()})
    except RecursionError:
        for name, value in bound.items():
            try:
                canonical(value, name)
            except RecursionError:
                break
        else:
            name = ", ".join(bound)
        raise CacheKeyError(
            f"argument {name!r} refers to itself or is nested too deeply for a cache key: "
            f"pass a value without cycles, or list it in ignore=[...]"
        ) from None


def canonical(value: Any, where: str) -> Any:
    """A JSON-native form of ``value`` that is equal for equal content and differs otherwise.

    Args:
        value: An argument (or part of one).
        where: The argument's name and path inside it, for the error message.

    Raises:
        CacheKeyError: ``value`` (or something inside it) has no canonical form.
    """
    t = type(value)
    if value is None or t is str or t is bool:
        return value
    if t is int:
        if -_BIG < value < _BIG:
            return value
        raise CacheKeyError(
            f"argument {where!r} is an integer of more than {_INT_DIGITS} digits, more than "
            f"Python turns into text (sys.get_int_max_str_digits()): pass it as text or bytes, "
            f"or list it in ignore=[...]"
        )
    if t is float:
        return value if math.isfinite(value) else {TAG: "float", "v": repr(value)}
    if t is list:
        return [canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if t is tuple:
        return {TAG: "tuple", "v": [canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if t is dict:
        if all(type(k) is str for k in value) and TAG not in value:
            return {k: canonical(v, f"{where}[{k!r}]") for k, v in value.items()}
        items = [[canonical(k, where), canonical(v, f"{where}[{k!r}]")] for k, v in value.items()]
        items.sort(key=_dumps)
        return {TAG: "dict", "v": items}
    if t is bytes or t is bytearray:
        return {TAG: t.__name__, "v": _hex(bytes(value)), "n": len(value)}
    if t is set or t is frozenset:
        items = sorted((canonical(v, where) for v in value), key=_dumps)
        return {TAG: t.__name__, "v": items}
    module = t.__module__
    if module == "numpy" or module.startswith("numpy."):
        np = sys.modules["numpy"]
        if isinstance(value, np.ndarray):
            return _numpy_array(value, where)
        if isinstance(value, np.generic):
            return {TAG: "np", "dtype": value.dtype.str, "v": canonical(value.item(), where)}
    if (module == "pandas" or module.startswith("pandas.")) and t.__name__ in (
        "DataFrame",
        "Series",
    ):
        return _pandas(value, where)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {
            f.name: canonical(getattr(value, f.name), f"{where}.{f.name}")
            for f in dataclasses.fields(value)
        }
        return {TAG: "dataclass", "type": _type_name(t), "v": fields}
    if isinstance(value, enum.Enum):
        return {TAG: "enum", "type": _type_name(t), "v": canonical(value.value, where)}
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time, _dt.timedelta)):
        return {TAG: t.__name__, "v": str(value)}
    if isinstance(value, (decimal.Decimal, uuid.UUID, pathlib.PurePath)):
        return {TAG: t.__name__, "v": str(value)}
    raise CacheKeyError(
        f"argument {where!r} has no canonical form for a cache key ({_type_name(t)}): "
        f"pass a JSON-like value, a dataclass, an array or a DataFrame, or list it in ignore=[...]"
    )


def key_of(ident: str, inputs_json: str, seed: str | None, version: str) -> str:
    """The call key: a digest of the function's identity, its canonical inputs, seed and version."""
    text = f"{ident}\0{inputs_json}\0{seed}\0{version}"
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def _code_digest(code: Any) -> bytes:
    parts = [code.co_code, repr(code.co_names).encode()]
    for c in code.co_consts:
        parts.append(_code_digest(c) if hasattr(c, "co_code") else repr(c).encode())
    return hashlib.blake2b(b"\0".join(parts), digest_size=16).digest()


def _own_text(target: Any) -> bytes:
    """What the version of one function (or class) is made of: its source; for a lambda (whose
    source is its whole line) and a function without source, its bytecode and constants too."""
    code = getattr(target, "__code__", None)
    try:
        text = inspect.getsource(target).encode()
    except (OSError, TypeError):
        text = b""
    if code is not None and (not text or target.__name__ == "<lambda>"):
        text += _code_digest(code)
    if not text:
        text = repr(target).encode()
    return text


def source_version(fn: Callable[..., Any]) -> str:
    """A digest of ``fn``'s source, followed by one per helper of the user's own code that it
    references, transitively (see :func:`helpers`): ``"<own> +mod.helper=<digest> ..."``, so
    editing a helper invalidates the results and ``tm cache why`` can name it."""
    target = inspect.unwrap(fn)
    own = hashlib.blake2b(_own_text(target), digest_size=8).hexdigest()
    parts = [own]
    for name, digest in sorted(helpers(target).items()):
        parts.append(f"+{name}={digest}")
    return " ".join(parts)


def split_version(version: str) -> tuple[str, dict[str, str]]:
    """``(own digest, {helper: digest})`` of a :func:`source_version` (a version given by hand is
    its own part, without helpers)."""
    own, *rest = version.split(" +")
    found = {}
    for part in rest:
        name, sep, digest = part.rpartition("=")
        if not sep:
            return version, {}
        found[name] = digest
    return own, found


# Helpers ------------------------------------------------------------------------------------

#: At most this many helpers are followed from one cached function.
MAX_HELPERS = 500
#: Values of these types are constants wherever they are (a module-level name referenced).
_IMMUTABLE = (int, float, complex, str, bytes, bool, type(None), tuple, frozenset)
#: And of these only under an upper-case name (``LIMITS = {...}``): a mutable registry that a
#: function appends to must not change its version.
_CONTAINERS = (list, dict, set)


@functools.cache
def _installed_roots() -> tuple[str, ...]:
    import site
    import sysconfig

    roots = set()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        with contextlib.suppress(KeyError):
            roots.add(sysconfig.get_paths()[key])
    with contextlib.suppress(AttributeError):
        roots.update(site.getsitepackages())
    with contextlib.suppress(AttributeError):
        roots.add(site.getusersitepackages())
    roots.add(os.path.dirname(os.path.abspath(__file__)))  # tm itself
    return tuple(os.path.join(os.path.realpath(r), "") for r in roots if r)


@functools.lru_cache(maxsize=4096)
def _is_user_file(filename: str | None) -> bool:
    """Whether code from ``filename`` is the user's own: a real file outside the standard
    library, installed packages (site-packages, dist-packages) and tm."""
    if not filename or filename.startswith("<"):
        return False
    real = os.path.realpath(filename)
    if real.startswith(_installed_roots()):
        return False
    parts = real.split(os.sep)
    return "site-packages" not in parts and "dist-packages" not in parts


def _is_user_object(value: Any) -> bool:
    code = getattr(value, "__code__", None)
    if code is not None:
        return _is_user_file(code.co_filename)
    module = sys.modules.get(getattr(value, "__module__", None) or "")
    return module is not None and _is_user_file(getattr(module, "__file__", None))


def _names(code: Any) -> set[str]:
    """The global and attribute names ``code`` (and code nested in it) uses."""
    out = set(code.co_names)
    for c in code.co_consts:
        if hasattr(c, "co_names"):
            out |= _names(c)
    return out


def _constant_digest(value: Any, name: str) -> str | None:
    if isinstance(value, _CONTAINERS) and not name.isupper():
        return None
    if not isinstance(value, _IMMUTABLE + _CONTAINERS):
        return None
    try:
        text = _dumps(canonical(value, name))
    except (CacheKeyError, RecursionError, ValueError, TypeError):
        return None
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()


def helpers(fn: Any) -> dict[str, str]:
    """The helpers of ``fn`` in the user's own code, by ``module.qualname``, with a digest of each
    one's source (a function, a class) or value (a constant: an immutable value, or a list, dict
    or set under an upper-case name). Followed transitively through the global names that the
    functions use, the attributes they take of the user's modules, and functions in closures.
    Functions of the standard library, of installed packages and of tm are not helpers."""
    found: dict[str, str] = {}
    seen: set[int] = {id(fn)}
    todo = [fn]

    def consider(value: Any, label: str) -> None:
        if callable(value):
            try:
                value = inspect.unwrap(value)
            except Exception:  # a cycle of __wrapped__, or an object that fails to say
                return
        if id(value) in seen or len(found) >= MAX_HELPERS:
            return
        if inspect.isfunction(value) or inspect.isclass(value):
            seen.add(id(value))
            if not _is_user_object(value):
                return
            name = f"{value.__module__}.{value.__qualname__}"
            found[name] = hashlib.blake2b(_own_text(value), digest_size=4).hexdigest()
            if inspect.isfunction(value):
                todo.append(value)
            else:
                todo.extend(v for v in vars(value).values() if inspect.isfunction(v))
            return
        digest = _constant_digest(value, label.rpartition(".")[2])
        if digest is not None:
            found[label] = digest

    while todo:
        f = todo.pop()
        code = getattr(f, "__code__", None)
        if code is None or not _is_user_file(code.co_filename):
            continue
        names = _names(code)
        scope = getattr(f, "__globals__", {})
        module = getattr(f, "__module__", None) or "__main__"
        for name in sorted(names):
            if name not in scope:
                continue
            value = scope[name]
            if inspect.ismodule(value):
                if _is_user_file(getattr(value, "__file__", None)):
                    for attr in sorted(names):
                        if attr in vars(value):
                            consider(vars(value)[attr], f"{value.__name__}.{attr}")
                continue
            consider(value, f"{module}.{name}")
        for cell in f.__closure__ or ():
            with contextlib.suppress(ValueError):  # an empty cell
                value = cell.cell_contents
                if inspect.isfunction(value) or inspect.isclass(value):
                    consider(value, "")
    return found


_POS = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


class Binder:
    """Binds call arguments to a signature, with defaults applied, as an ordered dict by name.

    Plain signatures (no ``*args``, ``**kwargs`` or keyword-only parameters without defaults) take a
    fast path; the others go through :meth:`inspect.Signature.bind`.
    """

    def __init__(self, fn: Callable[..., Any], ignore: Iterable[str] = ()) -> None:
        self.sig = inspect.signature(fn)
        self.ignore = frozenset(ignore)
        params = list(self.sig.parameters.values())
        unknown = self.ignore - {p.name for p in params}
        if unknown and not any(p.kind is p.VAR_KEYWORD for p in params):
            raise ValueError(f"ignore names no parameter of {fn!r}: {', '.join(sorted(unknown))}")
        self.simple = all(p.kind in _POS for p in params)
        self.names = [p.name for p in params]
        self.defaults = {p.name: p.default for p in params if p.default is not p.empty}

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The arguments by name, in signature order, without the ignored ones."""
        if not self.simple or len(args) > len(self.names):
            return self._slow(args, kwargs)
        out = dict(zip(self.names, args, strict=False))
        used = 0
        for name in self.names[len(args) :]:
            if name in kwargs:
                out[name] = kwargs[name]
                used += 1
            elif name in self.defaults:
                out[name] = self.defaults[name]
            else:
                return self._slow(args, kwargs)  # a missing argument: inspect says which
        if used != len(kwargs):
            return self._slow(args, kwargs)  # an unknown or repeated keyword
        return self._drop(out)

    def _slow(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        bound = self.sig.bind(*args, **kwargs)
        bound.apply_defaults()
        out: dict[str, Any] = {}
        for name, value in bound.arguments.items():
            kind = self.sig.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                out.update(value)
            elif kind is inspect.Parameter.VAR_POSITIONAL:
                out[f"*{name}"] = list(value)
            else:
                out[name] = value
        return self._drop(out)

    def _drop(self, out: dict[str, Any]) -> dict[str, Any]:
        if self.ignore:
            for name in self.ignore:
                out.pop(name, None)
        return out


# Results -------------------------------------------------------------------------------------


class _NotJson(Exception):
    pass


_SCALARS = frozenset({type(None), str, bool, int, float})


def _tagged(value: Any) -> Any:
    """``value`` as tagged JSON-native data, exactly reversible; raises _NotJson otherwise.

    Scalars inside containers are checked inline rather than by a call each: most of a result is
    scalars, and this walk is most of a miss's own cost.
    """
    t = type(value)
    if t in _SCALARS:
        return value
    scalars = _SCALARS
    if t is list:
        return [v if type(v) in scalars else _tagged(v) for v in value]
    if t is dict:
        if TAG not in value and all(type(k) is str for k in value):
            return {k: v if type(v) in scalars else _tagged(v) for k, v in value.items()}
        return {TAG: "dict", "v": [[_tagged(k), _tagged(v)] for k, v in value.items()]}
    if t is tuple:
        return {TAG: "tuple", "v": [v if type(v) in scalars else _tagged(v) for v in value]}
    if t is set or t is frozenset:
        return {TAG: t.__name__, "v": [_tagged(v) for v in value]}
    raise _NotJson


def _plain(value: Any) -> bool:
    """Whether ``value`` is JSON as it is: str-keyed dicts (without the tag key), lists and
    scalars only, so it can be written without the copy :func:`_tagged` makes (most results)."""
    t = type(value)
    scalars = _SCALARS
    if t is dict:
        if TAG in value:
            return False
        for k, v in value.items():
            if type(k) is not str or (type(v) not in scalars and not _plain(v)):
                return False
        return True
    if t is list:
        for v in value:  # noqa: SIM110 - a loop: all() over a generator costs a third more
            if type(v) not in scalars and not _plain(v):
                return False
        return True
    return t in scalars


_BUILD = {"tuple": tuple, "set": set, "frozenset": frozenset}


def _untag(d: dict[str, Any]) -> Any:
    tag = d.get(TAG)
    if tag is None:
        return d
    if tag == "dict":
        return {k: v for k, v in d["v"]}
    return _BUILD[tag](d["v"])


_json_load = json.JSONDecoder(object_hook=_untag).decode
_json_plain = json.JSONDecoder().decode


def encode(value: Any) -> tuple[str, bytes]:
    """``(format, data)``: ``value`` serialised in a format that keeps its type."""
    t = type(value)
    if t is bytes:
        return "bytes", value
    module = t.__module__
    if module == "numpy" and t.__name__ == "ndarray" and not value.dtype.hasobject:
        buf = io.BytesIO()
        sys.modules["numpy"].save(buf, value, allow_pickle=False)
        return "npy", buf.getvalue()
    if (module == "pandas" or module.startswith("pandas.")) and t.__name__ == "DataFrame":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            pass
        else:
            buf = io.BytesIO()
            try:
                value.to_parquet(buf)
            except Exception:  # a frame Parquet cannot hold (mixed object columns): pickle it
                pass
            else:
                return "parquet", buf.getvalue()
    try:
        if _plain(value):
            return "json", _dumps_result(value).encode()
        return "json", _dumps_result(_tagged(value)).encode()
    except (_NotJson, ValueError, RecursionError):
        return "pickle", pickle.dumps(value, protocol=5)


def decode(fmt: str, data: bytes) -> Any:
    """The value that :func:`encode` turned into ``(fmt, data)``. Only call it on verified data."""
    if fmt == "json":
        text = data.decode()
        # The hook costs a call per object: skip it when nothing is tagged.
        return _json_load(text) if TAG in text else _json_plain(text)
    if fmt == "bytes":
        return data
    if fmt == "npy":
        import numpy as np

        return np.load(io.BytesIO(data), allow_pickle=False)
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        # ParquetFile skips the dataset layer of pd.read_parquet: the same frame, a third faster.
        return pq.ParquetFile(pa.BufferReader(data)).read().to_pandas()
    if fmt == "pickle":
        return pickle.loads(data)
    raise ValueError(f"unknown result format {fmt!r}")


#: Formats whose decoded value is kept in memory (and copied for each caller) rather than the
#: file's bytes: decoding them costs far more than copying them.
KEEP_DECODED = frozenset({"parquet", "npy"})


def to_keep(fmt: str, data: bytes, value: Any) -> Any:
    """What memory holds for a result whose file holds ``data`` and decodes to ``value``: the
    cheapest source of a fresh copy. A JSON value is held marshalled (marshal covers exactly the
    tagged-JSON types and loads several times faster than JSON; it never leaves the process),
    an array or a frame as itself, anything else as the file's bytes."""
    if fmt == "json":
        return marshal.dumps(value)
    if fmt in KEEP_DECODED:
        return value
    return data


def kept_value(fmt: str, kept: Any) -> Any:
    """A value for one caller from what :func:`to_keep` made; callers never share an object."""
    if fmt == "json":
        return marshal.loads(kept)
    if fmt in KEEP_DECODED:
        return kept.copy()
    return decode(fmt, kept)


#: File name extension of each format.
EXTENSIONS = {"json": "json", "bytes": "bin", "npy": "npy", "parquet": "parquet", "pickle": "pkl"}
