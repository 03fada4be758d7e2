"""One validator for bool / int arguments of the public constructors (issue 22, case 5):
strings and other types are refused with the parameter's name, never coerced."""

from __future__ import annotations

import numpy as np
import pytest

from ssl_cropmix.validation import check_bool, check_bools, check_int


@pytest.mark.parametrize("value", ["no", "False", 0, 1, 1.0, None, [True]])
def test_check_bool_refuses_non_bools(value):
    with pytest.raises(TypeError, match=rf"^flag must be a bool, got {value!r}$".replace("[", r"\[")):
        check_bool("flag", value)


def test_check_bool_accepts_python_and_numpy_bools():
    assert check_bool("flag", np.bool_(False)) is False
    assert check_bool("flag", True) is True
    assert check_bool("flag", None, optional=True) is None
    with pytest.raises(TypeError, match="^b must be a bool, got 'x'$"):
        check_bools(a=True, b="x")


@pytest.mark.parametrize("value", ["3", 3.0, True, None])
def test_check_int_refuses_non_ints(value):
    with pytest.raises(ValueError, match=rf"^n must be an int >= 1, got {value!r}$"):
        check_int("n", value, 1)
    assert check_int("n", np.int64(3), 1) == 3


@pytest.mark.parametrize("name", ["drop_last", "persistent_workers"])
def test_datamodule_refuses_string_bools(name):
    """``drop_last="no"`` used to give ``drop_last=True`` (``bool("no")``)."""
    from ssl_cropmix.data.datamodule import CropMixDataModule
    from ssl_cropmix.data.sources import CIFAR10Source, DemoSource

    with pytest.raises(TypeError, match=rf"^{name} must be a bool, got 'no'$"):
        CropMixDataModule(DemoSource(), num_workers=1, **{name: "no"})


def test_datamodule_refuses_string_small_image_and_float_seed():
    from ssl_cropmix.data.datamodule import CropMixDataModule
    from ssl_cropmix.data.sources import CIFAR10Source, DemoSource

    with pytest.raises(TypeError, match="^small_image must be a bool, got 'yes'$"):
        CropMixDataModule(DemoSource(), small_image="yes")
    with pytest.raises(TypeError, match="^pin_memory must be a bool or None, got 'no'$"):
        CropMixDataModule(DemoSource(), pin_memory="no")
    with pytest.raises(ValueError, match="^fraction_seed must be an int, got 1.5$"):
        CropMixDataModule(DemoSource(), fraction_seed=1.5)
    with pytest.raises(TypeError, match=r"^download must be a bool, got 'no'$"):
        CIFAR10Source(download="no")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "build",
    [
        lambda: __import__("ssl_cropmix").MoCoCropMix(symmetric="no"),
        lambda: __import__("ssl_cropmix").MoCoCropMix(small_image="false"),
        lambda: __import__("ssl_cropmix").CropMixClassifier(num_classes=3, nesterov="no"),
        lambda: __import__("ssl_cropmix.callbacks.linear_probe", fromlist=["x"]).LinearProbe(cached_features="no"),
        lambda: __import__("ssl_cropmix.transforms.cropmix", fromlist=["x"]).CropMix(32, keep_pil="no"),
    ],
    ids=["moco.symmetric", "moco.small_image", "classifier.nesterov", "probe.cached_features", "cropmix.keep_pil"],
)
def test_methods_callbacks_transforms_refuse_string_bools(build):
    with pytest.raises(TypeError, match=r"must be a bool, got '(no|false)'$"):
        build()


def test_callbacks_refuse_bool_and_string_ints():
    from ssl_cropmix.callbacks.knn import KNNMonitor
    from ssl_cropmix.callbacks.online_probe import OnlineLinearProbe

    with pytest.raises(ValueError, match="^every_n_epochs must be an int >= 1, got True$"):
        KNNMonitor(every_n_epochs=True)
    with pytest.raises(ValueError, match="^top_k must be an int >= 1, got '5'$"):
        OnlineLinearProbe(top_k="5")
