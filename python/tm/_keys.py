"""Call keys and result formats for cached calls (seed 000).

A call's key is a digest of the function's module and qualified name, its arguments bound to the
signature (defaults applied, keyword order irrelevant) and canonicalised by content, its seed and
its version. Results are stored in a format that keeps their type: tagged JSON (a tuple comes back
a tuple, an int an int), ``.npy``, Parquet, raw bytes, or pickle.

numpy and pandas are never imported here: a value is recognised as an array or a frame by its
type's module, and only then is the library (already imported by whoever made the value) used.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import decimal
import enum
import hashlib
import inspect
import io
import json
import marshal
import math
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


def source_version(fn: Callable[..., Any]) -> str:
    """A digest of ``fn``'s source; for a lambda (whose source is its whole line) and a function
    without source, of its bytecode and constants too."""
    target = inspect.unwrap(fn)
    code = getattr(target, "__code__", None)
    try:
        text = inspect.getsource(target).encode()
    except (OSError, TypeError):
        text = b""
    if code is not None and (not text or target.__name__ == "<lambda>"):
        text += _code_digest(code)
    if not text:
        text = repr(target).encode()
    return hashlib.blake2b(text, digest_size=8).hexdigest()


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
