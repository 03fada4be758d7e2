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
    "torch.optim.lr_scheduler", "timm.data", "timm.layers", "timm.loss", "litdata",
    "pytorch_lightning.plugins.environments",
)
# libraries of optional extras (``pip install 'ssl_cropmix[streaming]'``): their names are
# checked where the extra is installed
_OPTIONAL_EXTERNAL = {"litdata"}
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
    if name not in _known_names():
        for ext in _OPTIONAL_EXTERNAL:
            try:
                importlib.import_module(ext)
            except ImportError:
                pytest.skip(f"{name}: may belong to the optional {ext!r}, which is not installed")
    assert name in _known_names(), f"{where}: `{name}` is not defined in ssl_cropmix (or the libraries it builds on)"


# ---------------------------------------------------------------------------- config values restated in docs
# Every docs/*.md table row (and command line) that names configs/ files is read for the
# recipe values it restates (epochs, warm-up, per-device / global / effective batch, devices,
# accumulation, lr, K / m / T, image and patch size, weight decay, precision), each compared
# with the value the YAML gives (class defaults filled in). The configs' own comments are read
# the same way. A table that restates a value in a form no rule reads goes unchecked, so the
# rules below are the contract: restate values in these forms.
_CONFIG_DIRS = ("moco", "mae", "classify", "eval", "smoke")


def _expand_braces(pattern: str) -> list[str]:
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    return [x for alt in m.group(1).split(",") for x in _expand_braces(pattern[: m.start()] + alt + pattern[m.end():])]


def _configs_named(text: str) -> list[str]:
    """Config files named in ``text`` (``configs/moco/x.yaml``, ``moco/x.yaml``, braces, globs)."""
    out: list[str] = []
    for token in re.findall(r"(?:configs/)?(?:" + "|".join(_CONFIG_DIRS) + r")/[\w*{},.-]+", text):
        token = token.removeprefix("configs/").rstrip(".,")
        for pat in _expand_braces(token):
            pat = pat if pat.endswith(".yaml") else pat + ".yaml"
            out += [str(p.relative_to(REPO / "configs")) for p in sorted((REPO / "configs").glob(pat))]
    return list(dict.fromkeys(out))


def _class_defaults(class_path: str | None) -> dict:
    if not class_path:
        return {}
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return {}
    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


@lru_cache(maxsize=None)
def _config_facts(name: str) -> dict[str, object]:
    """The recipe values of ``configs/<name>`` that docs restate (``None``: not set)."""
    import yaml

    cfg = yaml.safe_load((REPO / "configs" / name).read_text()) or {}
    trainer = cfg.get("trainer") or {}
    model_cfg, data_cfg = cfg.get("model") or {}, cfg.get("data") or {}
    model = {**_class_defaults(model_cfg.get("class_path")), **(model_cfg.get("init_args") or {})}
    data = {**_class_defaults(data_cfg.get("class_path")), **(data_cfg.get("init_args") or {})}
    devices = trainer.get("devices", 1)
    devices = devices * trainer.get("num_nodes", 1) if isinstance(devices, int) else None
    per_device, accum = data.get("batch_size"), trainer.get("accumulate_grad_batches", 1)
    glob_ = per_device * devices if isinstance(per_device, int) and devices else None
    effective = glob_ * accum if glob_ else None
    base_lr = model.get("base_lr")
    return {
        "epochs": trainer.get("max_epochs"), "warmup": model.get("warmup_epochs"), "devices": devices,
        "per_device": per_device, "accum": accum, "global": glob_, "effective": effective,
        "base_lr": base_lr, "lr": base_lr * effective / 256 if base_lr and effective else None,
        "K": model.get("queue_size"), "m": model.get("momentum"), "T": model.get("temperature"),
        "px": data.get("image_size"), "patch": model.get("patch_size"), "wd": model.get("weight_decay"),
        "precision": str(trainer.get("precision", "32-true")),
    }


def _num(s: str) -> float:
    return float(s.replace(",", ""))


# (regex, fact): the regex's first group restates the fact
_PHRASES: tuple[tuple[str, str], ...] = (
    (r"(?<!every )(?<![\w.-])(\d+) ep(?:ochs)?\b(?! (?:of|from))", "epochs"),
    (r"(?<![\w.-])(\d+) warm-?up", "warmup"),
    (r"(?i:effective) batch (\d+)", "effective"),
    (r"(?<![Ee]ffective )(?<!-image )\bbatch (\d+)\b(?! x)(?!-image)", "global"),
    (r"\bK(?: =)? (\d+)\b", "K"),
    (r"\bm(?: =)? (0\.\d+)", "m"),
    (r"\bT(?: =)? (0\.\d+)", "T"),
    (r"(?<![\w.-])(\d+) px\b", "px"),
    (r"(?<![\w.-])(\d+)-px patches", "patch"),
    (r"\bbase lr (\d+(?:\.\d+)?(?:e-?\d+)?)", "base_lr"),
    (r"\blr (\d+(?:\.\d+)?(?:e-?\d+)?) x (?:global )?(?:batch|B) ?/ ?256", "base_lr"),
    (r"\bwd (\d+(?:\.\d+)?(?:e-?\d+)?)", "wd"),
    (r"accumulate_grad_batches \$\(\((\d+) / N\)\)", "accum_rule"),
    (r"on N GPUs use (\d+) / N", "accum_rule"),
)


def _restated(text: str, facts: dict) -> list[tuple[str, object, object]]:
    """``(what, doc value, config value)`` for every value ``text`` restates."""
    out = []
    text = re.sub(r"e\.g\. [^);]*", "", text)  # examples for other machines are not this recipe
    for pattern, fact in _PHRASES:
        for m in re.finditer(pattern, text):
            want = facts["effective"] // facts["per_device"] if fact == "accum_rule" else facts[fact]
            if want is None:  # not set by this file (an evaluation snippet: the value is its preset's)
                continue
            out.append((m.group(0), _num(m.group(1)), want))
    # "256 = 4 x 64", "4096 = 4 devices x 64 x 16", "(4 x 64 x 16)": the factors and the total
    for m in re.finditer(r"(?:(\d+) = |\()(\d+)(?: devices| GPUs)? x (\d+)(?: per device)?(?: x (\d+))?", text):
        factors = sorted(int(g) for g in m.groups()[1:] if g)
        three = len(factors) == 3
        want = sorted([facts["devices"], facts["per_device"]] + ([facts["accum"]] if three else []))
        out.append((m.group(0), factors, want))
        if m.group(1):
            out.append((m.group(0), int(m.group(1)), facts["effective" if three else "global"]))
    # "1.5e-4 x 4096 / 256 = 2.4e-3"
    for m in re.finditer(r"([\d.]+e-?\d+|0\.\d+) x (\d+) ?/ ?256 = ([\d.]+e-?\d+|0\.\d+)", text):
        out += [(m.group(0), _num(m.group(1)), facts["base_lr"]), (m.group(0), _num(m.group(2)), facts["effective"])]
        out.append((m.group(0), _num(m.group(3)), round(facts["lr"], 6)))
    for m in re.finditer(r"(?<!precision )\b(bf16-mixed|16-mixed|fp32)\b", text):
        out.append((m.group(0), {"fp32": "32-true"}.get(m.group(1), m.group(1)), facts["precision"].replace("32", "32-true") if facts["precision"] == "32" else facts["precision"]))
    return out


def _cells(row: str) -> list[str]:
    return [c.strip() for c in row.strip().strip("|").split("|")]


# header-named columns of tables whose rows name a config: header -> fact
_COLUMNS = {"per device": "per_device", "gpus": "devices", "accumulation": "accum", "effective": "effective",
            "epochs": "epochs", "lr": "lr", "batch": "global"}
# rows of "hyper-parameter | value" tables: name -> facts of the "/"-separated value
_NAMED = {"epochs": ("epochs",), "epochs / warmup": ("epochs", "warmup"), "k / m / t": ("K", "m", "T"),
          "batch": ("global",)}


def _doc_restatements() -> list[tuple[str, str, str, object, object]]:
    """``(doc:line, config, what, doc value, config value)`` of every restated value."""
    out = []
    for doc, text in _text():
        if doc == "README.md":
            continue
        header: list[str] = []
        current: list[str] = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.startswith("|"):
                header, current = [], []
                named = _configs_named(line)
                for cfg in named:
                    for what, got, want in _restated(line, _config_facts(cfg)):
                        out.append((f"{doc}:{lineno}", cfg, what, got, want))
                continue
            cells = _cells(line)
            if not header:
                header = [c.lower() for c in cells]
                continue
            if set(line) <= set("|-: "):
                continue
            if cells[0]:
                current = _configs_named(cells[0])
            rest = cells[1:]
            for cfg in current:
                facts = _config_facts(cfg)
                if "hyper-parameter" in header and "value" in header:
                    name = rest[header.index("hyper-parameter") - 1].lower()
                    value = rest[header.index("value") - 1]
                    if name in _NAMED:
                        values = [v.strip().split(",")[0] for v in value.split("/")]
                        for fact, v in zip(_NAMED[name], values):
                            if re.fullmatch(r"[\d.]+", v):
                                if facts[fact] is not None:
                                    out.append((f"{doc}:{lineno}", cfg, f"{name}: {value}", _num(v), facts[fact]))
                        continue
                    text_ = f"{name} {value}"
                else:
                    text_ = " | ".join(rest)
                    for col, cell in zip(header[1:], rest):
                        fact = _COLUMNS.get(col)
                        if fact is None:
                            continue
                        m = re.search(r"(\d+(?:\.\d+)?(?:e-?\d+)?)\s*$", cell)  # the cell's value (after any "=")
                        if m and not re.search(r"\d+ = \d+", cell):
                            got = _num(m.group(1))
                            want = round(facts[fact], 6) if fact == "lr" and facts[fact] else facts[fact]
                            if want is not None:
                                out.append((f"{doc}:{lineno}", cfg, f"{col}: {cell}", got, want))
                for what, got, want in _restated(text_, facts):
                    out.append((f"{doc}:{lineno}", cfg, what, got, want))
    return out


def _same(got: object, want: object) -> bool:
    if isinstance(got, float) and isinstance(want, (int, float)):
        return abs(got - want) <= 1e-6 * max(1.0, abs(want))
    return got == want


def test_docs_restate_config_values_as_the_configs_give_them():
    bad = [f"{where}: {cfg}: '{what}' says {got}, the config gives {want}"
           for where, cfg, what, got, want in _doc_restatements() if not _same(got, want)]
    assert not bad, "\n".join(bad)


def test_config_comments_restate_their_own_values():
    bad = []
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        name = str(path.relative_to(REPO / "configs"))
        facts = _config_facts(name)
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            comment = line.split("#", 1)[1] if "#" in line else ""
            for what, got, want in _restated(comment, facts):
                if not _same(got, want):
                    bad.append(f"configs/{name}:{lineno}: '{what}' says {got}, the config gives {want}")
    assert not bad, "\n".join(bad)


def test_docs_config_check_reads_the_recipe_tables():
    """The check is not vacuous: the recipe tables of mae.md, moco.md and recipes.md are read."""
    found = {(where.split(":")[0], cfg) for where, cfg, *_ in _doc_restatements()}
    for doc, cfg in (("docs/mae.md", "mae/imagenet10pct_cropmix.yaml"), ("docs/mae.md", "mae/cifar10_cropmix.yaml"),
                     ("docs/moco.md", "moco/imagenet_cropmix.yaml"), ("docs/recipes.md", "moco/imagenet_plain.yaml"),
                     ("docs/recipes.md", "mae/imagenet_cropmix.yaml")):
        assert (doc, cfg) in found, (doc, cfg)
    whats = " ".join(w for _, _, w, _, _ in _doc_restatements()).lower()
    for phrase in ("per device", "accumulation", "epochs", "warmup", "k / m / t", "$(("):
        assert phrase in whats, phrase


_PART_HELP = r"`(ssl-cropmix fit\s[^`]*?--data\.(?:source|views)\.help\s+\w+)`"


@pytest.mark.parametrize(("where", "line"), [(w, " ".join(c.split())) for w, c in _found(_PART_HELP, 1)])
def test_documented_part_help_runs_as_printed(where, line, capsys, monkeypatch):
    """Every per-class help line the docs print runs verbatim and lists that class's own
    arguments (README once printed one that argparse refused without ``--data``)."""
    import shlex

    from ssl_cropmix.cli import main

    argv = shlex.split(line)
    group, name = re.search(r"--data\.(source|views)\.help\s+(\w+)", line).groups()
    cls = getattr(importlib.import_module(f"ssl_cropmix.data.{'sources' if group == 'source' else 'recipes'}"), name)
    own = [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as e:
        main(argv[1:])
    assert e.value.code == 0, (where, line)
    listed = set(re.findall(rf"--{group}\.(\w+)", capsys.readouterr().out))
    assert own and listed - {"help"} == set(own), (where, line, sorted(listed), own)


def test_docs_print_part_help_lines():
    assert len(_found(_PART_HELP, 1)) >= 3
