"""benchmarks/dataloader.py keeps running: the large-source rows (``--datasets tiles``) and
the ``cropmix_every_crop`` pipeline that the invisible-crop numbers in docs/benchmarks.md
compare against."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("dataloader_bench_under_test", REPO / "benchmarks" / "dataloader.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_tiles_rows_and_the_every_crop_pipeline(capsys):
    from ssl_cropmix.data.device_views import _find
    from ssl_cropmix.transforms import CropMix

    mod = _module()
    assert _find(mod.make_transform("cropmix_every_crop", 32).query, CropMix).skip_invisible is False
    assert _find(mod.make_transform("cropmix", 32).query, CropMix).skip_invisible is True
    # main() sets one torch thread for the process; conftest's _restore_torch_threads undoes it
    assert mod.main(["--quick", "--datasets", "tiles", "--pipelines", "plain,cropmix,cropmix_every_crop",
                     "--num-workers", "0"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| tiles | 32 |")]
    assert [r.split("|")[3].strip() for r in rows] == ["plain", "cropmix", "cropmix_every_crop"]
    assert rows[0].split("|")[5].strip() == "1.00x"
