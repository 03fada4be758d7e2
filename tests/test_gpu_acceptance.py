"""benchmarks/gpu_acceptance.py: the CPU smoke run passes and writes its table and JSON; a
failing or crashing check makes the script exit non-zero; no GPU -> a clear refusal."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
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
    assert report["passed"] and report["smoke"] and report["pending"] == []
    assert report["environment"]["torch"] == torch.__version__ and report["preflight_problems"] == []
    assert [c["name"] for c in report["checks"]][:3] == ["loader", "steps", "pretrain_eval"]
    rows = {r["item"]: r for c in report["checks"] for r in c["rows"]}
    assert rows["probe parameters' device during its steps"]["value"] == "cpu"
    assert rows["probe trainer accelerator / precision"]["ok"]
    md = (tmp_path / "gpu_acceptance.md").read_text()
    assert "| loader | contrastive / plain |" in md and "MoCoCropMix resnet18" in md and "MAECropMix" in md


def _fast_preflight(mod, monkeypatch):
    """Tests of the section runner skip importing every dependency (the preflight's slow part)."""
    monkeypatch.setattr(mod, "_dependency_lines", lambda pf: {})


def test_failing_and_crashing_checks_exit_nonzero(tmp_path, monkeypatch):
    mod = _module()
    _fast_preflight(mod, monkeypatch)
    mod.CHECKS.clear()
    common = ["--cpu-smoke", "--out", str(tmp_path), "--data-root", str(tmp_path / "no-data")]
    mod.register_check("fails", lambda ctx: mod.CheckResult("fails", False, [mod._row("x", 1, "> 2", False)]))
    assert mod.main([*common, "--checks", "fails"]) == 1
    assert "| fails | x | 1 | > 2 | NO |" in (tmp_path / "gpu_acceptance.md").read_text()

    def crash(ctx):
        raise RuntimeError("boom")

    mod.CHECKS.clear()
    mod.register_check("crashes", crash)
    assert mod.main([*common, "--checks", "crashes"]) == 1
    assert json.loads((tmp_path / "gpu_acceptance.json").read_text())["checks"][0]["error"].startswith("RuntimeError: boom")
    mod.CHECKS.clear()
    mod.register_check("ok", lambda ctx: mod.CheckResult("ok", True))
    assert mod.main([*common, "--checks", "ok"]) == 0
    if not torch.cuda.is_available():
        # the GPU run refuses to pretend on a CPU machine
        assert mod.main(["--out", str(tmp_path), "--data-root", str(tmp_path / "no-data"), "--checks", "ok"]) == 2


def test_a_section_that_raises_or_overruns_leaves_the_others_rows_and_a_report_after_each(tmp_path, monkeypatch):
    mod = _module()
    _fast_preflight(mod, monkeypatch)
    mod.CHECKS.clear()
    monkeypatch.setitem(mod.BUDGETS, "slow", (0.3, 0.3, 0.3))
    seen_mid_run = {}

    def crash(ctx):
        raise RuntimeError("boom")

    def slow(ctx):
        time.sleep(5)  # the 0.3 s budget stops it
        return mod.CheckResult("slow", True, [mod._row("never", 1)])

    def reads_report(ctx):  # the report on disk already holds the sections before this one
        seen_mid_run.update(json.loads((tmp_path / "gpu_acceptance.json").read_text()))
        return mod.CheckResult("reads_report", True, [mod._row("after", 2)])

    mod.register_check("first", lambda ctx: mod.CheckResult("first", True, [mod._row("before", 1)]))
    mod.register_check("crashes", crash)
    mod.register_check("slow", slow)
    mod.register_check("reads_report", reads_report)
    t0 = time.perf_counter()
    rc = mod.main(["--cpu-smoke", "--out", str(tmp_path), "--data-root", str(tmp_path / "no-data"),
                   "--checks", "first,crashes,slow,reads_report"])
    assert rc == 1 and time.perf_counter() - t0 < 4.5
    assert [c["name"] for c in seen_mid_run["checks"]] == ["first", "crashes", "slow"]
    assert seen_mid_run["pending"] == ["reads_report"] and not seen_mid_run["passed"]
    report = json.loads((tmp_path / "gpu_acceptance.json").read_text())
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["first"]["passed"] and checks["reads_report"]["passed"]
    assert checks["crashes"]["error"].startswith("RuntimeError: boom") and not checks["crashes"]["passed"]
    assert checks["slow"]["error"].startswith("SectionTimeout") and checks["slow"]["seconds"] < 2
    md = (tmp_path / "gpu_acceptance.md").read_text()
    assert "| first | before | 1 |" in md and "| reads_report | after | 2 |" in md
    assert "| crashes | error | RuntimeError: boom | | NO |" in md


def test_preflight_names_a_missing_dependency_in_one_line(tmp_path):
    """A fresh process where ``import lightly`` fails (as on a GPU node without it): one line
    names lightly, its range and the install command, the section that needs it is blocked
    with that line, and nothing prints a traceback."""
    code = ("import runpy, sys; sys.modules['lightly'] = None; "
            f"sys.argv = [{str(SCRIPT)!r}, '--cpu-smoke', '--preflight', '--checks', 'steps', '--data-root', "
            f"{str(tmp_path / 'no-data')!r}]; runpy.run_path(sys.argv[0], run_name='__main__')")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text[-3000:]
    assert "Traceback" not in text
    problems = [line for line in text.splitlines() if line.startswith(("MISSING", "BROKEN", "WRONG"))]
    assert len(problems) == 1, text[-3000:]
    assert problems[0].startswith("MISSING dependency lightly>=1.5.1,<1.7: import lightly failed")
    assert "pip install" in problems[0] and "lightly>=1.5.1,<1.7" in problems[0].split("install:")[1]
    assert "preflight: 1 problem(s)" in text


def test_a_section_blocked_by_the_preflight_is_not_run_and_the_others_are(tmp_path, monkeypatch):
    mod = _module()
    mod.CHECKS.clear()
    line = "MISSING dependency lightly>=1.5.1,<1.7: import lightly failed (...); install: python -m pip install ..."
    real = mod.preflight

    def preflight(smoke, data_root, sections):
        pf = real(smoke, data_root, [])
        pf.problems.append(line)
        pf.blocked["needs_lightly"] = line
        return pf

    monkeypatch.setattr(mod, "_dependency_lines", lambda pf: {})
    monkeypatch.setattr(mod, "preflight", preflight)
    ran = []
    mod.register_check("needs_lightly", lambda ctx: ran.append("needs_lightly") or mod.CheckResult("needs_lightly", True))
    mod.register_check("other", lambda ctx: ran.append("other") or mod.CheckResult("other", True, [mod._row("r", 1)]))
    assert mod.main(["--cpu-smoke", "--out", str(tmp_path), "--data-root", str(tmp_path / "no-data"),
                     "--checks", "needs_lightly,other"]) == 1
    assert ran == ["other"]
    checks = {c["name"]: c for c in json.loads((tmp_path / "gpu_acceptance.json").read_text())["checks"]}
    assert checks["needs_lightly"]["error"] == f"not run: {line}" and checks["other"]["passed"]


def test_preflight_names_a_missing_data_archive_in_one_line(tmp_path, monkeypatch):
    mod = _module()
    monkeypatch.delenv("SSL_CROPMIX_CIFAR10", raising=False)
    pf = mod.Preflight()
    mod.check_data(pf, False, str(tmp_path / "nowhere"), ["loader", "steps", "pretrain_eval"])
    assert len(pf.problems) == 1 and "\n" not in pf.problems[0]
    line = pf.problems[0]
    assert line.startswith("MISSING data cifar10-jpeg.tar.gz") and str(tmp_path / "nowhere") in line
    assert "python tools/stage_data.py" in line
    assert pf.blocked == {"loader": line, "pretrain_eval": line}  # the sections that read CIFAR-10
    smoke = mod.Preflight()
    mod.check_data(smoke, True, str(tmp_path / "nowhere"), ["loader"])
    assert not smoke.problems and "demo photos" in smoke.data_line


def test_data_is_looked_for_in_the_checkout_then_the_environment_variable(tmp_path, monkeypatch):
    mod = _module()
    monkeypatch.setattr(mod, "REPO", tmp_path / "checkout")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "cifar10-jpeg.tar.gz").write_bytes(b"x")
    monkeypatch.delenv("SSL_CROPMIX_CIFAR10", raising=False)
    where, looked = mod.find_data(None)
    assert where is None and "checkout data/" in looked and "$SSL_CROPMIX_CIFAR10 (unset)" in looked
    monkeypatch.setenv("SSL_CROPMIX_CIFAR10", str(elsewhere))
    assert mod.find_data(None)[0] == elsewhere
    (tmp_path / "checkout" / "data").mkdir(parents=True)
    (tmp_path / "checkout" / "data" / "cifar10-jpeg.tar.gz").write_bytes(b"x")
    where, looked = mod.find_data(None)
    assert where == tmp_path / "checkout" / "data" and looked.endswith("(found)") and "SSL_CROPMIX" not in looked
    assert mod.find_data(str(elsewhere))[0] == elsewhere  # --data-root wins


def test_default_output_folder_is_ignored_by_git():
    mod = _module()
    rel = mod.DEFAULT_OUT.relative_to(REPO)
    proc = subprocess.run(["git", "check-ignore", "-q", str(rel / "gpu_acceptance.md")], cwd=REPO)
    if proc.returncode == 128:  # not a git checkout (e.g. an sdist)
        pytest.skip("not a git checkout")
    assert proc.returncode == 0, f"{rel} is not ignored by .gitignore"
