"""Defaults for stores and cached calls, loaded from a file at run time (seed 000's config).

``tm.config.load(path)`` reads YAML, JSON or a Python module and sets :data:`DEFAULT_DB_URL` and
:data:`DEFAULT_RESULT_DIR`. It accepts those two names directly (upper or lower case) and the seed's
form::

    db:
      user: tm
      password: secret
      host: localhost
      port: 5432
      name: results
    app:
      output_dir: /data/results

from which it builds ``postgresql://tm:secret@localhost:5432/results``. Precedence when a store is
made: an explicit argument, then ``$TM_DB_URL`` / ``$TM_RESULT_DIR``, then these defaults, then
``sqlite:///.tm/tm.db`` and ``.tm/results``. Importing this module reads and creates nothing.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

__all__ = ["DEFAULT_DB_URL", "DEFAULT_RESULT_DIR", "db_url_from", "load"]

#: The database URL a store uses when given none (and ``$TM_DB_URL`` is unset).
DEFAULT_DB_URL: str | None = None
#: The result directory a store uses when given none (and ``$TM_RESULT_DIR`` is unset).
DEFAULT_RESULT_DIR: str | None = None


def db_url_from(db: Mapping[str, Any]) -> str:
    """A database URL from the seed's ``db:`` mapping (``url``, or ``user``, ``password``,
    ``host``, ``port``, ``name``, and optionally ``dialect``, default ``postgresql``)."""
    if db.get("url"):
        return str(db["url"])
    dialect = str(db.get("dialect") or db.get("driver") or "postgresql")
    if dialect.startswith("sqlite"):
        return f"sqlite:///{db.get('name') or db.get('path')}"
    auth = ""
    if db.get("user"):
        auth = quote(str(db["user"]), safe="")
        if db.get("password") is not None:
            auth += ":" + quote(str(db["password"]), safe="")
        auth += "@"
    host = str(db.get("host") or "localhost")
    port = f":{int(db['port'])}" if db.get("port") else ""
    name = quote(str(db.get("name") or db.get("database") or ""), safe="")
    return f"{dialect}://{auth}{host}{port}/{name}"


def _read(path: Path) -> dict[str, Any]:
    suffix = path.suffix.lower()
    if suffix == ".py":
        spec = importlib.util.spec_from_file_location(f"_tm_config_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise ValueError(f"cannot load {path} as a Python module")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return {k: v for k, v in vars(module).items() if not k.startswith("_")}
    text = path.read_text(encoding="utf-8")
    if suffix == ".json":
        data = json.loads(text)
    elif suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ImportError(
                f"reading {path} needs PyYAML: pip install 'tm-orchestrate[yaml]'"
            ) from None
        data = yaml.safe_load(text)
    else:
        raise ValueError(f"{path}: expected a .yaml, .yml, .json or .py file")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads a config file and sets :data:`DEFAULT_DB_URL` and :data:`DEFAULT_RESULT_DIR`.

    Args:
        path: a ``.yaml``/``.yml``, ``.json`` or ``.py`` file.

    Returns:
        The file's settings as a dict, with ``DEFAULT_DB_URL`` and ``DEFAULT_RESULT_DIR`` set to
        what was taken from it (``None`` when it sets neither).
    """
    global DEFAULT_DB_URL, DEFAULT_RESULT_DIR
    data = _read(Path(path))
    lower = {str(k).lower(): v for k, v in data.items()}
    url = lower.get("default_db_url") or lower.get("db_url")
    if url is None and isinstance(lower.get("db"), Mapping):
        url = db_url_from(lower["db"])
    result_dir = lower.get("default_result_dir") or lower.get("result_dir")
    app = lower.get("app")
    if result_dir is None and isinstance(app, Mapping):
        result_dir = app.get("output_dir") or app.get("result_dir")
    if url is not None:
        DEFAULT_DB_URL = str(url)
    if result_dir is not None:
        DEFAULT_RESULT_DIR = str(result_dir)
    out = dict(data)
    out["DEFAULT_DB_URL"] = None if url is None else str(url)
    out["DEFAULT_RESULT_DIR"] = None if result_dir is None else str(result_dir)
    return out
