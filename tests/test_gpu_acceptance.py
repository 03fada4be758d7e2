"""benchmarks/gpu_acceptance.py: the CPU smoke run passes and writes its table and JSON; a
failing or crashing check makes the script exit non-zero; no GPU -> a clear refusal."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_acceptance.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_acceptance_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_cpu_smoke_passes(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--out", str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_acceptance.json").read_text())
    assert report["passed"] and report["smoke"]
    assert [c["name"] for c in report["checks"]][:3] == ["loader", "steps", "pretrain_eval"]
    rows = {r["item"]: r for c in report["checks"] for r in c["rows"]}
    assert rows["probe parameters' device during its steps"]["value"] == "cpu"
    assert rows["probe trainer accelerator / precision"]["ok"]
    md = (tmp_path / "gpu_acceptance.md").read_text()
    assert "| loader | contrastive / plain |" in md and "MoCoCropMix resnet18" in md and "MAECropMix" in md


def test_failing_and_crashing_checks_exit_nonzero(tmp_path):
    mod = _module()
    mod.CHECKS.clear()
    mod.register_check("fails", lambda ctx: mod.CheckResult("fails", False, [mod._row("x", 1, "> 2", False)]))
    assert mod.main(["--cpu-smoke", "--out", str(tmp_path)]) == 1
    assert "| fails | x | 1 | > 2 | NO |" in (tmp_path / "gpu_acceptance.md").read_text()

    def crash(ctx):
        raise RuntimeError("boom")

    mod.CHECKS.clear()
    mod.register_check("crashes", crash)
    assert mod.main(["--cpu-smoke", "--out", str(tmp_path)]) == 1
    assert json.loads((tmp_path / "gpu_acceptance.json").read_text())["checks"][0]["error"].startswith("RuntimeError: boom")
    mod.CHECKS.clear()
    mod.register_check("ok", lambda ctx: mod.CheckResult("ok", True))
    assert mod.main(["--cpu-smoke", "--out", str(tmp_path)]) == 0
    if not torch.cuda.is_available():
        assert mod.main(["--out", str(tmp_path)]) == 2  # the GPU run refuses to pretend on a CPU machine
