"""The package's shape: a small documented surface, and no dependency on the rest
of conveyor (the client and the agent both import it)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from conveyor import protocol

PACKAGE = Path(protocol.__file__).parent


def test_public_names_are_exported_and_documented() -> None:
    for name in protocol.__all__:
        obj = getattr(protocol, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__.startswith("conveyor.protocol"), name
            doc = inspect.getdoc(obj)
            assert doc, f"{name} has no docstring"
    assert sorted(protocol.__all__) == sorted(
        name for name in vars(protocol) if not name.startswith("_")
    )


def test_imports_nothing_from_the_rest_of_conveyor() -> None:
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith("conveyor"), (path.name, alias.name)
            elif isinstance(node, ast.ImportFrom):
                assert node.level <= 1, (path.name, node.module)
                if node.level == 0:
                    assert not (node.module or "").startswith("conveyor"), (path.name, node.module)


def test_standard_library_only() -> None:
    allowed = {"__future__", "collections", "dataclasses", "enum", "re", "types", "typing"}
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert node.module.split(".")[0] in allowed, (path.name, node.module)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name.split(".")[0] in allowed, (path.name, alias.name)


def test_the_package_docstring_example_runs() -> None:
    doc = protocol.__doc__ or ""
    block = doc.split("::\n\n", 1)[1].split("\n\n", 1)[0]
    code = "\n".join(line.removeprefix("    ") for line in block.splitlines())
    exec(compile(code, "conveyor.protocol.__doc__", "exec"), {})


def test_caches_stay_bounded() -> None:
    from conveyor.protocol import _encode, _parse

    lines = b"\n".join(b"m:1|c|#id:%d" % i for i in range(_parse._CACHE_MAX + 10))
    assert len(protocol.parse_packet(lines).metrics) == _parse._CACHE_MAX + 10
    assert len(_parse._OPTIONS_CACHE) <= _parse._CACHE_MAX
    long_tags = b"#" + b"t" * (_parse._CACHED_LEN + 1)
    protocol.parse_packet(b"long:1|c|" + long_tags)
    assert long_tags.decode() not in _parse._OPTIONS_CACHE
    for i in range(_encode._CACHE_MAX + 10):
        protocol.encode_metric(f"name.{i}", "c", 1, tags=[f"id:{i}"])
    assert len(_encode._NAME_CACHE) <= _encode._CACHE_MAX
    assert len(_encode._TAGS_CACHE) <= _encode._CACHE_MAX


def test_errors_survive_pickling() -> None:
    import pickle

    error = protocol.ProtocolError("bad", "bad_value")
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.reason) == ("bad", "bad_value")
    oversized = pickle.loads(pickle.dumps(protocol.OversizedLineError(2000, 1432)))
    assert (oversized.size, oversized.max_size, oversized.reason) == (2000, 1432, "oversized")
