"""benchmarks/dataloader.py keeps running: the large-source rows (``--datasets tiles``) and
the ``cropmix_every_crop`` pipeline that the invisible-crop numbers in docs/benchmarks.md
compare against."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("dataloader_bench_under_test", REPO / "benchmarks" / "dataloader.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_tiles_rows_and_the_every_crop_pipeline(capsys):
    from ssl_cropmix.transforms import CropMix

    mod = _module()

    def cropmixes(views):
        return [c for t in [views.query, *views.query.transforms] for c in [t, *getattr(t, "transforms", [])]
                if isinstance(c, CropMix)]

    every = cropmixes(mod.make_transform("cropmix_every_crop", 32))
    default = cropmixes(mod.make_transform("cropmix", 32))
    assert len(every) == len(default) == 2  # BySourceSize: the PIL and the tensor backend
    assert [c.skip_invisible for c in every] == [False, False] and [c.skip_invisible for c in default] == [True, True]
    threads = torch.get_num_threads()
    try:  # the script sets one torch thread for its process: give the session its threads back
        assert mod.main(["--quick", "--datasets", "tiles", "--pipelines", "plain,cropmix,cropmix_every_crop",
                         "--num-workers", "0"]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| tiles | 32 |")]
    assert [r.split("|")[3].strip() for r in rows] == ["plain", "cropmix", "cropmix_every_crop"]
    assert rows[0].split("|")[5].strip() == "1.00x"
