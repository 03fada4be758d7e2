"""The documentation names only things that exist.

Scans README.md and every docs/*.md generically (no list of expected names here):

* every ``ssl-cropmix <command>`` has a working ``--help``, and every ``--option`` written
  after a task command appears in that command's help;
* every dotted ``ssl_cropmix.x.y`` name and every ``from ssl_cropmix... import a, b`` imports;
* every ``python -m <module>`` module and every ``configs/...yaml`` path exists;
* every API-looking name in backticks (``CamelCase`` or ``name(``) is defined somewhere in the
  package (a module attribute or a class member) or in the libraries the docs build on;
  ``MultiView(**named_transforms)`` would fail here.
"""

from __future__ import annotations

import builtins
import importlib
import inspect
import pkgutil
import re
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _text() -> list[tuple[str, str]]:
    return [(str(p.relative_to(REPO)), p.read_text()) for p in DOCS]


def _found(pattern: str, group: int = 0) -> list[tuple[str, str]]:
    out: dict[str, str] = {}
    for name, text in _text():
        for m in re.finditer(pattern, text):
            out.setdefault(m.group(group), name)
    return sorted((v, k) for k, v in out.items())


# ---------------------------------------------------------------------------- commands
def _commands() -> list[tuple[str, str]]:
    out: dict[str, str] = {}
    for where, spelled in _found(r"ssl-cropmix ([a-z][a-z|-]*)", 1):
        for cmd in spelled.split("|"):
            if cmd:
                out.setdefault(cmd, where)
    return sorted(out.items())


@lru_cache(maxsize=None)
def _help(cmd: str) -> str:
    import contextlib
    import io

    from ssl_cropmix.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.argv", ["ssl-cropmix"])
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
    assert e.value.code == 0, f"ssl-cropmix {cmd} --help exited {e.value.code}"
    return buf.getvalue()


@pytest.mark.parametrize("cmd,where", _commands())
def test_documented_command_has_help(cmd, where):
    assert _help(cmd).strip(), f"{where}: `ssl-cropmix {cmd} --help` printed nothing"


def _task_options() -> list[tuple[str, str, str]]:
    from ssl_cropmix.cli import TASK_COMMANDS

    out = set()
    for name, text in _text():
        for m in re.finditer(r"ssl-cropmix (" + "|".join(map(re.escape, TASK_COMMANDS)) + r")\b([^\n`]*)", text):
            for opt in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", m.group(2)):
                out.add((m.group(1), opt, name))
    return sorted(out)


@pytest.mark.parametrize("cmd,opt,where", _task_options())
def test_documented_task_option_exists(cmd, opt, where):
    assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", _help(cmd)), f"{where}: `ssl-cropmix {cmd} {opt}` unknown"


# ---------------------------------------------------------------------------- names
def _resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ModuleNotFoundError:
            continue
        for attr in parts[k:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


@pytest.mark.parametrize("where,dotted", _found(r"ssl_cropmix(?:\.[A-Za-z_]\w*)+"))
def test_documented_dotted_name_exists(where, dotted):
    try:
        _resolve(dotted)
    except (ImportError, AttributeError) as e:
        pytest.fail(f"{where}: {dotted} does not exist ({e})")


def _imports() -> list[tuple[str, str, str]]:
    out = set()
    for name, text in _text():
        for m in re.finditer(r"from (ssl_cropmix(?:\.\w+)*) import (?:\(([^)]*)\)|([^\n]+))", text):
            items = m.group(2) if m.group(2) is not None else m.group(3).split("#")[0]
            for item in items.replace("\n", " ").split(","):
                item = item.strip().split(" as ")[0].strip()
                if item:
                    out.add((name, m.group(1), item))
    return sorted(out)


@pytest.mark.parametrize("where,module,name", _imports())
def test_documented_import_works(where, module, name):
    mod = importlib.import_module(module)
    assert hasattr(mod, name), f"{where}: from {module} import {name} fails"


@pytest.mark.parametrize("where,module", _found(r"python -m ([A-Za-z_][\w.]*)", 1))
def test_documented_module_runs(where, module):
    if module.split(".")[0] in {"pytest", "pip", "venv", "torch"}:
        return
    assert importlib.util.find_spec(module) is not None, f"{where}: python -m {module}: no such module"


@pytest.mark.parametrize("where,path", _found(r"configs/[\w/.-]+\.yaml"))
def test_documented_config_exists(where, path):
    assert (REPO / path).is_file(), f"{where}: {path} does not exist"


# ---------------------------------------------------------------------------- API names in backticks
# libraries whose names the docs use next to ours
_EXTERNAL = (
    "torch", "torch.nn", "torch.nn.functional", "torch.utils.data", "torchvision", "torchvision.transforms.v2",
    "torchvision.transforms.v2.functional", "torchvision.tv_tensors", "torchvision.datasets", "torchvision.models",
    "pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.loggers", "pytorch_lightning.cli",
    "pytorch_lightning.strategies", "timm", "timm.models", "timm.optim", "safetensors.torch", "PIL.Image",
    "PIL.ImageFilter", "numpy", "lightly.loss", "lightly.models", "lightly.models.modules", "lightly.models.utils",
    "lightly.transforms", "lightly.models.modules.memory_bank", "torchmetrics", "jsonargparse", "torch.optim",
    "torch.optim.lr_scheduler", "timm.data", "timm.layers", "timm.loss",
)
# external classes whose members the docs name (Trainer.fit, a timm ViT's forward_features)
_EXTERNAL_CLASSES = (
    "pytorch_lightning.Trainer", "pytorch_lightning.LightningModule", "pytorch_lightning.LightningDataModule",
    "timm.models.vision_transformer.VisionTransformer", "torchvision.transforms.v2.Transform",
    "PIL.Image.Image",
)
# attribute names of the package's protocols, set in __init__ (not visible on the class):
# every method exposes ``backbone`` (docs/architecture.md, the backbone protocol)
_PROTOCOL_ATTRIBUTES = {"backbone"}


def _benchmark_names() -> set[str]:
    """Top-level functions and classes of the scripts in benchmarks/ (read, not imported:
    they are scripts, and some need a GPU or data to import their extras)."""
    import ast

    out: set[str] = set()
    for p in sorted((REPO / "benchmarks").glob("*.py")):
        for node in ast.parse(p.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                out.add(node.name)
    return out


@lru_cache(maxsize=None)
def _known_names() -> frozenset[str]:
    import ssl_cropmix

    names: set[str] = set(dir(builtins)) | _PROTOCOL_ATTRIBUTES
    for dotted in _EXTERNAL_CLASSES:
        try:
            names.update(dir(_resolve(dotted)))
        except (ImportError, AttributeError):
            pass
    modules = [ssl_cropmix] + [
        importlib.import_module(m.name)
        for m in pkgutil.walk_packages(ssl_cropmix.__path__, "ssl_cropmix.")
    ]
    for ext in _EXTERNAL:
        try:
            modules.append(importlib.import_module(ext))
        except ImportError:
            pass
    names.update(_benchmark_names())
    for mod in modules:
        names.add(mod.__name__.rsplit(".", 1)[-1])
        for attr, obj in list(vars(mod).items()):
            names.add(attr)
            if inspect.isclass(obj) and obj.__module__.startswith("ssl_cropmix"):
                names.update(dir(obj))
                for base in obj.__mro__:  # members of the classes ours build on (fit, log, ...)
                    names.update(vars(base))
    return frozenset(names)


def _api_tokens() -> list[tuple[str, str]]:
    out: dict[str, str] = {}
    for name, text in _text():
        for span in re.findall(r"`([^`\n]+)`", text):
            span = span.strip()
            m = re.match(r"^([A-Za-z_][\w.]*)(\(|$)", span)
            if not m:
                continue
            token, call = m.group(1), m.group(2)
            last = token.rsplit(".", 1)[-1]
            camel = re.match(r"^[A-Z][a-z0-9]+[A-Z]\w*$", last) is not None  # CropMix, TwoViews
            if not (camel or call):
                continue
            if "/" in span.split("(")[0] or last.isupper():
                continue
            out.setdefault(last, name)
    return sorted((v, k) for k, v in out.items())


@pytest.mark.parametrize("where,name", _api_tokens())
def test_documented_api_name_exists(where, name):
    assert name in _known_names(), f"{where}: `{name}` is not defined in ssl_cropmix (or the libraries it builds on)"
