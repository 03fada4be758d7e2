"""tools/wheelhouse.py (what an offline target lacks, never torch) and tools/stage_data.py
(the CIFAR-10 archive copied into the checkout's data/). No network: the wheel fetcher is
replaced by a fake index of dependency lists."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import tarfile
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"tools_{name}_under_test", REPO / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


wh = _load("wheelhouse")
stage_data = _load("stage_data")

#: a fake index: name -> {version: Requires-Dist lines}
INDEX = {
    "lightly": {"1.6.0": ["hydra-core>=1.0.0", "torch", "pytorch-lightning>=1.0.4", "numpy>=1.18.1",
                          'aenum>=3.1.11; python_version < "3.10"']},
    "hydra-core": {"1.3.8": ["omegaconf<2.4,>=2.2", "antlr4-python3-runtime==4.9.*", "packaging"]},
    "omegaconf": {"2.3.1": ["PyYAML>=5.1.0", "antlr4-python3-runtime==4.9.*"], "2.4.0": ["PyYAML>=5.1.0"]},
    "antlr4-python3-runtime": {"4.9.3": [], "4.13.2": []},
    "jsonargparse": {"4.53.0": ["PyYAML>=3.13", 'docstring-parser>=0.17; extra == "signatures"',
                                'typeshed-client>=2.8.2; extra == "signatures"', 'argcomplete; extra == "all"']},
    "docstring-parser": {"0.18.0": []},
    "typeshed-client": {"2.15.0": ["typing-extensions>=4.5.0"]},
    "aenum": {"3.1.16": []},
    "argcomplete": {"3.0": []},
}


def fake_fetch(tmp: Path, log: list[str]):
    def fetch(name: str, spec: SpecifierSet) -> wh.Fetched:
        versions = [v for v in INDEX[name] if spec.contains(v)]
        assert versions, f"no {name}{spec} in the fake index"
        v = max(versions, key=lambda s: tuple(int(x) for x in s.split(".")))
        log.append(f"{name}=={v}")
        path = tmp / f"{name}-{v}.whl"
        path.write_bytes(b"")
        return wh.Fetched(name, v, path, INDEX[name][v])

    return fetch


GPU_NODE = """\
torch==2.11.0+cu130
torchvision==0.26.0
pytorch-lightning==2.6.6
numpy==2.5.5
PyYAML==6.0.4
packaging==26.4
typing_extensions==4.16.0
nvidia-cudnn-cu13==9.19.0.56
"""


def test_parse_have_reads_freeze_list_json_inspect_and_names():
    have, env = wh.parse_have(GPU_NODE + "mylib @ file:///src/mylib\n-e git+https://x/y.git@abc#egg=editable_pkg\n")
    assert have["torch"] == "2.11.0+cu130" and have["typing-extensions"] == "4.16.0" and have["pyyaml"] == "6.0.4"
    assert have["mylib"] is None and have["editable-pkg"] is None and env == {}
    table = "Package           Version\n----------------- -------\nPyYAML            6.0.4\ntorch  2.11.0 /opt/x\n"
    assert wh.parse_have(table)[0] == {"pyyaml": "6.0.4", "torch": "2.11.0"}
    assert wh.parse_have(json.dumps([{"name": "Torch", "version": "2.11.0"}]))[0] == {"torch": "2.11.0"}
    inspect = {"environment": {"python_version": "3.12", "python_full_version": "3.12.3"},
               "installed": [{"metadata": {"name": "torch", "version": "2.11.0"}}]}
    have, env = wh.parse_have(json.dumps(inspect))
    assert have == {"torch": "2.11.0"} and env["python_full_version"] == "3.12.3"
    assert wh.parse_have("torch\ntimm\n")[0] == {"torch": None, "timm": None}
    with pytest.raises(ValueError, match="cannot read line"):
        wh.parse_have("torch >= 2")


def test_plan_fetches_exactly_what_the_target_lacks_and_never_torch(tmp_path):
    have, _ = wh.parse_have(GPU_NODE)
    log: list[str] = []
    reqs = ["torch>=2.2", "torchvision>=0.21", "pytorch-lightning>=2.2,<3", "lightly>=1.5.1,<1.7",
            "jsonargparse[signatures]>=4.27", "numpy>=1.23"]
    plan = wh.plan(reqs, have, wh.target_environment("3.12"), fake_fetch(tmp_path, log))
    # hydra's antlr4 pin (4.9.*) holds the version although a newer one exists; the marker
    # python_version < 3.10 leaves aenum out on 3.12; extra "signatures" brings its two, not "all"'s
    assert sorted(log) == ["antlr4-python3-runtime==4.9.3", "docstring-parser==0.18.0", "hydra-core==1.3.8",
                           "jsonargparse==4.53.0", "lightly==1.6.0", "omegaconf==2.3.1", "typeshed-client==2.15.0"]
    assert set(plan.wheels) == {n.split("==")[0] for n in log}
    assert {"torch", "torchvision", "pytorch-lightning", "numpy", "pyyaml", "packaging", "typing-extensions"} <= set(plan.kept)
    assert "2.11.0+cu130 meets >=2.2" in plan.kept["torch"] and not plan.upgrades
    on_39 = wh.plan(["lightly"], have, wh.target_environment("3.9"), fake_fetch(tmp_path, log := []))
    assert "aenum" in on_39.wheels


def test_plan_refuses_to_ship_or_replace_torch(tmp_path):
    env = wh.target_environment("3.12")
    with pytest.raises(wh.PlanError, match=r"target's torch 2.1.0 does not meet >=2.2 .*never ships torch"):
        wh.plan(["torch>=2.2"], {"torch": "2.1.0"}, env, fake_fetch(tmp_path, []))
    with pytest.raises(wh.PlanError, match="the target has no torchvision"):
        wh.plan(["torchvision>=0.21"], {"torch": "2.11.0"}, env, fake_fetch(tmp_path, []))
    # an unprotected package too old on the target is shipped, and said to be an upgrade
    plan = wh.plan(["omegaconf>=2.4"], {"omegaconf": "2.3.1", "pyyaml": "6.0"}, env, fake_fetch(tmp_path, []))
    assert plan.wheels["omegaconf"].version == "2.4.0" and plan.upgrades == {"omegaconf": "2.3.1 -> >=2.4"}


def test_platform_tags_and_the_install_line():
    tags = wh.manylinux_platforms("2.28", "x86_64")
    assert tags[0] == "manylinux_2_28_x86_64" and "manylinux_2_17_x86_64" in tags and "manylinux2014_x86_64" in tags
    assert "manylinux_2_29_x86_64" not in tags
    with pytest.raises(ValueError, match="glibc"):
        wh.manylinux_platforms("2.5", "x86_64")
    line = wh.install_line("wheelhouse", ["demo"])
    assert line == "python -m pip install --no-index --find-links wheelhouse 'ssl_cropmix[demo]'"
    assert "--no-deps" not in line  # resolved against what the target has: a missing wheel is an error, not a gap


def _archive(path: Path, members: list[str]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for m in members:
            info = tarfile.TarInfo(m)
            info.size = 3
            tf.addfile(info, io.BytesIO(b"jpg"))
    return path


def test_stage_data_copies_a_checked_archive_into_data(tmp_path, capsys):
    src = _archive(tmp_path / "cifar10-jpeg.tar.gz", ["cifar10/train/cat/0.jpg", "cifar10/test/cat/1.jpg"])
    dest = tmp_path / "checkout" / "data"
    assert stage_data.main([str(tmp_path), "--dest", str(dest)]) == 0
    assert (dest / "cifar10-jpeg.tar.gz").read_bytes() == src.read_bytes()
    assert "2 images" in capsys.readouterr().out
    (tmp_path / "bad").mkdir()
    bad = _archive(tmp_path / "bad" / "cifar10-jpeg.tar.gz", ["other/train/0.jpg"])
    assert stage_data.main([str(bad), "--dest", str(tmp_path / "d2")]) == 1
    assert "no cifar10/train/" in capsys.readouterr().err and not (tmp_path / "d2" / "cifar10-jpeg.tar.gz").exists()
    assert stage_data.main([str(tmp_path / "nothing"), "--dest", str(tmp_path / "d3")]) == 1
