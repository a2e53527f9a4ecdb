"""models/checkpoint.py's refusal of a checkpoint given the wrong architecture reads the right way
round: a checkpoint that records its architecture ('arch') is named as a checkpoint of that
architecture, the one given for it does not fit; without an 'arch' entry, the file name's
suggestion is a hint."""
import pytest
import torch

from models import model_dict
from models.checkpoint import CheckpointError, load_model


def test_a_checkpoint_that_says_its_architecture_is_named_as_such(tmp_path):
    path = tmp_path / "teacher.pth"
    torch.save({"model": model_dict["resnet20"](num_classes=10).state_dict(), "arch": "resnet20"}, path)
    with pytest.raises(CheckpointError) as e:
        load_model(path, arch="resnet8")
    message = str(e.value)
    assert message.startswith(f"checkpoint {path}: is a checkpoint of 'resnet20' (its 'arch' entry), not of the "
                              f"architecture 'resnet8' given for it: ")
    assert "name suggests" not in message and "\n" not in message
    assert load_model(path).arch == "resnet20"                     # its own architecture loads


def test_without_an_arch_entry_the_file_name_is_the_hint(tmp_path):
    path = tmp_path / "resnet20_best.pth"
    torch.save({"model": model_dict["resnet20"](num_classes=10).state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"does not fit architecture 'resnet8' \(its name suggests 'resnet20'\)"):
        load_model(path, arch="resnet8")
