"""dataset.build: the data flags (argtypes numbers, --img_size, --dataset from the registry), flags
to options without fallbacks, and the loaders' one-line note."""
from __future__ import annotations

import argparse
import dataclasses

import pytest

from dataset import DataError, DataOptions, add_data_arguments, build_loaders, dataset_names, get_spec, \
    loaders_from_args, options_from_args, spec_from_args
from dataset.build import FLAG_OPTIONS


def parser():
    return add_data_arguments(argparse.ArgumentParser(prog="prog"))


def test_flag_options_are_exactly_the_parsers_data_flags():
    dests = {a.dest for a in parser()._actions} - {"help", "dataset"}
    assert set(FLAG_OPTIONS) == dests
    fields = {f.name for f in dataclasses.fields(DataOptions)}
    assert set(FLAG_OPTIONS) <= fields
    assert fields - set(FLAG_OPTIONS) == {"url", "md5", "synthetic_seed", "split_seed"}   # program-only


def test_defaults_come_from_data_options():
    args = parser().parse_args([])
    assert options_from_args(args) == DataOptions()
    assert args.dataset == "cifar100" and args.img_size is None


def test_dataset_choices_come_from_the_registry():
    choices = next(a for a in parser()._actions if a.dest == "dataset").choices
    assert choices == list(dataset_names())
    assert {"imagefolder", "tinyimagenet", "imagenet", "cifar100"} <= set(choices)


@pytest.mark.parametrize("argv, needle", [
    (["--synthetic_train", "0"], "argument --synthetic_train: expected an integer >= 1, got '0'"),
    (["--synthetic_test", "ten"], "argument --synthetic_test: expected an integer, got 'ten'"),
    (["--synthetic_classes", "-3"], "argument --synthetic_classes: expected an integer >= 1, got '-3'"),
    (["--synthetic_size", "1.5"], "argument --synthetic_size: expected an integer, got '1.5'"),
    (["--val_split", "-1"], "argument --val_split: expected an integer >= 0, got '-1'"),
    (["--num_workers", "-2"], "argument --num_workers: expected an integer >= 0, got '-2'"),
    (["--img_size", "0"], "argument --img_size: expected an integer >= 1, got '0'"),
    (["--dataset", "mnist"], "argument --dataset: invalid choice: 'mnist'"),
])
def test_bad_numbers_are_argparse_one_line_errors(argv, needle, capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert needle in err[-1]


def test_options_from_args_copies_every_flag():
    args = parser().parse_args(["--dataset", "synthetic", "--data_folder", "/x", "--no-download", "--no-verify",
                                "--synthetic_train", "7", "--synthetic_test", "3", "--synthetic_classes", "4",
                                "--synthetic_size", "9", "--val_split", "2", "--num_workers", "1",
                                "--drop_last", "--img_size", "9"])
    assert options_from_args(args) == DataOptions(
        data_folder="/x", download=False, verify=False, synthetic_train=7, synthetic_test=3, synthetic_classes=4,
        synthetic_size=9, val_split=2, num_workers=1, drop_last=True, img_size=9)


def test_a_namespace_without_the_data_flags_is_refused():
    with pytest.raises(AttributeError, match="data_folder"):
        options_from_args(argparse.Namespace(dataset="digits"))


def test_img_size_only_where_it_applies():
    assert get_spec("cifar100", img_size=32).image_size == 32              # its own size: accepted
    with pytest.raises(DataError, match=r"--img_size 64: --dataset cifar100 has a fixed image size \(32 px\); "
                                        r"--img_size applies to digits, imagefolder, imagenet, tinyimagenet") as e:
        build_loaders("cifar100", batch_size=4, device="cpu", seed=0, img_size=64)
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match=r"synthetic .*fixed image size \(32 px\).*--synthetic_size"):
        get_spec("synthetic", img_size=16)
    assert get_spec("synthetic", img_size=16, synthetic_size=16).image_size == 16
    with pytest.raises(DataError, match=r"--img_size must be an integer >= 1, got 0"):
        get_spec("tinyimagenet", img_size=0)


def test_loaders_carry_a_one_line_note():
    args = parser().parse_args(["--dataset", "digits"])
    loaders = loaders_from_args(args, batch_size=64, device="cpu", seed=0)
    assert loaders.note == ("data: digits, 1442 train / 355 test images 3x32x32, 10 classes, held on cpu as "
                            "uint8 (5.5 MB)")
    assert spec_from_args(args) == loaders.spec
