"""Sources and view recipes (issue 26): each takes only its own arguments (LightningCLI's
per-class ``--help`` lists exactly those), validates them, round-trips through the
``class_path`` / ``init_args`` record that checkpoints keep (plain values: ``weights_only``
loads it), and the task commands rebuild the data from new and pre-0.2 (flat) records."""

from __future__ import annotations

import argparse
import inspect
import io
import re
from pathlib import Path

import pytest
import torch

from ssl_cropmix.data.datamodule import CropMixDataModule, build_part
from ssl_cropmix.data.recipes import MAEViews, MoCoViews, SupervisedViews, ViewRecipe
from ssl_cropmix.data.sources import (
    CIFAR10Source,
    CIFAR100Source,
    DemoSource,
    ImageFolderSource,
    ShardsSource,
    Source,
    STL10Source,
    source_from_flat,
)
from data_fixtures import make_tree

REPO = Path(__file__).resolve().parents[2]

SOURCES = [ImageFolderSource, DemoSource, CIFAR10Source, CIFAR100Source, STL10Source, ShardsSource]
RECIPES = [MoCoViews, MAEViews, SupervisedViews]


def _help_options(capsys, monkeypatch, group: str, cls: type) -> set[str]:
    from ssl_cropmix.cli import main

    monkeypatch.setattr("sys.argv", ["ssl-cropmix", "fit", "--data", "CropMixDataModule", f"--data.{group}.help",
                                     cls.__name__])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 0
    out = capsys.readouterr().out
    return set(re.findall(rf"^  --{group}\.([a-z_]+)", out, flags=re.M))


@pytest.mark.parametrize("cls", SOURCES + RECIPES, ids=lambda c: c.__name__)
def test_per_class_help_lists_exactly_its_own_arguments(cls, capsys, monkeypatch):
    group = "source" if issubclass(cls, Source) else "views"
    own = {n for n in inspect.signature(cls.__init__).parameters if n != "self"}
    assert _help_options(capsys, monkeypatch, group, cls) == own


def test_data_help_lists_no_flat_switches(capsys, monkeypatch):
    from ssl_cropmix.cli import main

    monkeypatch.setattr("sys.argv", ["ssl-cropmix", "fit", "--data.help", "CropMixDataModule"])
    with pytest.raises(SystemExit):
        main()
    opts = set(re.findall(r"^  --data\.([a-z_]+)", capsys.readouterr().out, flags=re.M))
    assert {"source", "views", "image_size", "batch_size", "label_fraction"} <= opts
    assert not opts & {"dataset", "data_dir", "query", "mae_view", "supervised_view", "augment_on", "download",
                       "on_bad_image", "train_split", "device_max_size"}
    params = inspect.signature(CropMixDataModule.__init__).parameters
    assert len(params) - 1 <= 15  # on the order of ten, each meaningful for every source and recipe


def test_parts_validate_their_arguments_naming_them(tmp_path):
    with pytest.raises(ValueError, match="train_split must be a non-empty split name, got ''"):
        ImageFolderSource(str(tmp_path), train_split="")
    with pytest.raises(ValueError, match="on_bad_image"):
        ImageFolderSource(str(tmp_path), on_bad_image="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"val_split must be one of \('train', 'test', 'val'\) for cifar10, got 'x'"):
        CIFAR10Source(val_split="x")
    with pytest.raises(ValueError, match="kind must be one of .* got 'mask'"):
        MAEViews("mask")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kind='plain' takes no crop_scale"):
        SupervisedViews("plain", crop_scale=(0.2, 1.0))
    with pytest.raises(ValueError, match="augment_on='device' builds the named queries"):
        MoCoViews(torch.nn.Identity(), augment_on="device")
    with pytest.raises(ValueError, match="subset_file needs a file-based source"):
        CropMixDataModule(CIFAR10Source(), subset_file="1percent.txt")
    assert STL10Source(train_split="unlabeled").labeled_split == "train"


@pytest.mark.parametrize("part", [
    ImageFolderSource("/data/imagenet", val_split=None, on_bad_image="raise"), DemoSource(), CIFAR100Source(download=True),
    STL10Source(train_split="train+unlabeled"), ShardsSource("s3://bucket/shards", cache_dir="/tmp/c"),
    MoCoViews("scalemix", "device", 96), MoCoViews("contrastive", "device", device_colour_kernel="eager"), MAEViews("rrc"), SupervisedViews("rrc", crop_scale=(0.25, 1.0), random_erasing=0.25),
    MoCoViews("cropmix", skip_invisible=False), MAEViews(skip_invisible=False),
], ids=repr)
def test_config_round_trips_and_is_plain_data(part, tmp_path):
    base = Source if isinstance(part, Source) else ViewRecipe
    again = build_part(part.config(), base, "part")
    assert type(again) is type(part) and again.init_args() == part.init_args()
    torch.save({"hp": part.config()}, tmp_path / "hp.pt")
    assert torch.load(tmp_path / "hp.pt", weights_only=True)["hp"] == part.config()


def test_device_colour_kernel_reaches_the_device_views_and_is_checked():
    """The recipe's ``device_colour_kernel`` is what its DeviceViews run; it is refused when
    bad or without the device path (it would do nothing there)."""
    for recipe in (MoCoViews("contrastive", "device", device_colour_kernel="eager"),
                   MAEViews("rrc", "device", device_colour_kernel="fused")):
        dv = recipe.device_views(32, True, (0.5,) * 3, (0.25,) * 3)
        assert dv.colour_kernel == recipe.device_colour_kernel
    assert MoCoViews(augment_on="device").device_views(32, True, (0.5,) * 3, (0.25,) * 3).colour_kernel == "auto"
    with pytest.raises(ValueError, match="device_colour_kernel must be one of .* got 'triton'"):
        MoCoViews(augment_on="device", device_colour_kernel="triton")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="device_colour_kernel is for augment_on='device'.*augment_on='workers'"):
        MAEViews(device_colour_kernel="eager")


def _cropmixes(transform) -> list:
    from ssl_cropmix.transforms import CropMix

    found, todo = [], [transform]
    while todo:
        t = todo.pop()
        if isinstance(t, CropMix):
            found.append(t)
        todo += [getattr(t, a) for a in ("query", "key") if hasattr(t, a)] + list(getattr(t, "transforms", []))
    return found


def test_skip_invisible_reaches_the_worker_views_and_is_checked(tmp_path, monkeypatch):
    """The recipes' ``skip_invisible`` is what their Mixup CropMix views use (default True);
    ``False`` is refused where nothing would use it; the CLI takes it."""
    from ssl_cropmix.cli import cli_main

    for recipe, n in ((MoCoViews("cropmix"), 2), (MAEViews("cropmix_mixup"), 1)):  # BySourceSize: two CropMix
        for skip in (True, False):
            r = type(recipe)(**{**recipe.init_args(), "skip_invisible": skip})
            found = _cropmixes(r.worker_transform(32, True, (0.5,) * 3, (0.25,) * 3))
            assert len(found) == n and all(c.skip_invisible is skip for c in found)
    with pytest.raises(ValueError, match=r"skip_invisible=False is for the worker path's Mixup CropMix.*query='contrastive'"):
        MoCoViews("contrastive", skip_invisible=False)
    with pytest.raises(ValueError, match=r"skip_invisible=False is for.*augment_on='device'"):
        MoCoViews("cropmix", "device", skip_invisible=False)
    with pytest.raises(ValueError, match=r"skip_invisible=False is for.*kind='rrc'"):
        MAEViews("rrc", skip_invisible=False)
    with pytest.raises(TypeError, match="skip_invisible must be a bool, got 'no'"):
        MAEViews(skip_invisible="no")  # type: ignore[arg-type]
    monkeypatch.chdir(tmp_path)
    cli = cli_main(["--config", str(REPO / "configs" / "smoke" / "moco_demo_cpu.yaml"), "--data.views.query=cropmix",
                    "--data.views.skip_invisible=false", f"--trainer.default_root_dir={tmp_path}"], run=False)
    cli.datamodule.setup("fit")
    views = cli.datamodule.views
    assert views.skip_invisible is False
    assert [c.skip_invisible for c in _cropmixes(views.worker_transform(32, True, (0.5,) * 3, (0.25,) * 3))] == [False] * 2


def test_build_part_refuses_classes_outside_the_data_package():
    with pytest.raises(ValueError, match="must name a class of ssl_cropmix.data, got 'os.system'"):
        build_part({"class_path": "os.system", "init_args": {}}, Source, "source")
    with pytest.raises(ValueError, match="must name a Source, got 'ssl_cropmix.data.recipes.MAEViews'"):
        build_part({"class_path": "ssl_cropmix.data.recipes.MAEViews"}, Source, "source")


def test_datamodule_hparams_are_plain_and_rebuild_the_same_data(tmp_path):
    make_tree(tmp_path / "train")
    make_tree(tmp_path / "val", per_class=(1, 1, 1))
    dm = CropMixDataModule(ImageFolderSource(str(tmp_path)), SupervisedViews("rrc"), image_size=16, num_workers=0)
    buf = io.BytesIO()
    torch.save(dict(dm.hparams), buf)
    buf.seek(0)
    hp = torch.load(buf, weights_only=True)
    again = CropMixDataModule(build_part(hp.pop("source"), Source, "source"), build_part(hp.pop("views"), ViewRecipe, "v"),
                              **hp)
    assert again.source.init_args() == dm.source.init_args() and again.views.init_args() == dm.views.init_args()
    assert again.num_classes == 3 and again.image_size == 16


def _args(**kw) -> argparse.Namespace:
    base = dict(dataset=None, data_dir=None, train_split=None, val_split=None, image_size=None, small_image=None,
                loader_batch_size=8, num_workers=0)
    base.update(kw)
    return argparse.Namespace(**base)


def test_task_commands_rebuild_data_from_new_and_pre_0_2_records(tmp_path):
    """``probe`` / ``finetune`` read the checkpoint's data record: the source's class_path /
    init_args, or (checkpoints written before the sources) the flat ``dataset`` / ``data_dir``
    arguments, read through ``source_from_flat``; command-line flags override either."""
    from ssl_cropmix.commands import _datamodule

    make_tree(tmp_path / "train")
    make_tree(tmp_path / "test", per_class=(1, 1, 1))
    new = CropMixDataModule(ImageFolderSource(str(tmp_path), val_split="test"), MoCoViews(), image_size=16,
                            mean=(0.5, 0.5, 0.5), num_workers=0)
    old = {"data_dir": str(tmp_path), "dataset": "folder", "train_split": "train", "val_split": "test", "views": "moco",
           "query": "contrastive", "image_size": 16, "mean": [0.5, 0.5, 0.5], "augment_on": "workers"}
    for rec in (dict(new.hparams), old):
        dm = _datamodule(_args(), {"datamodule_hyper_parameters": rec})
        assert isinstance(dm.source, ImageFolderSource) and dm.source.root == str(tmp_path)
        assert dm.source.val_split == "test" and dm.image_size == 16 and dm.mean == (0.5, 0.5, 0.5)
        assert isinstance(dm.views, SupervisedViews) and dm.num_classes == 3
        demo = _datamodule(_args(dataset="demo"), {"datamodule_hyper_parameters": rec})
        assert isinstance(demo.source, DemoSource)  # the folder's root is never handed to the demo set
        val = _datamodule(_args(val_split="train"), {"datamodule_hyper_parameters": rec})
        assert val.source.root == str(tmp_path) and val.source.val_split == "train"
    assert source_from_flat("cifar10", "/c", val_split="val").init_args()["val_split"] == "test"
    with pytest.raises(ValueError, match="dataset must be one of .* got 'imagenet'"):
        source_from_flat("imagenet", "/x")


def test_cli_links_the_class_count_from_a_nested_source_config():
    """LightningCLI hands nested parts as jsonargparse Namespaces (``dict()`` of one flattens
    them): the class count still comes from the source for the model's ``num_classes``."""
    from jsonargparse import Namespace

    from ssl_cropmix.cli import _linked_defaults

    model = Namespace(class_path="ssl_cropmix.methods.classifier.CropMixClassifier",
                      init_args=Namespace(num_classes=None, backbone="resnet18", small_image=True))
    source = Namespace(class_path="ssl_cropmix.data.sources.CIFAR100Source", init_args=Namespace(root=None))
    data = Namespace(class_path="ssl_cropmix.data.datamodule.CropMixDataModule",
                     init_args=Namespace(source=source, image_size=32, batch_size=4))
    assert _linked_defaults(model, data)["num_classes"] == 100
