"""helper/run_identity.py's folder names: runs that differ in a result-changing flag, a teacher or a
--tag get different folders; flags that do not change the result leave the name as it was."""
import pytest

from builders import student_config, student_name, teacher_configs, teacher_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PLAIN = "resnet8_digits_lr_0.05_decay_0.0005_trial_0"           # RepDistiller's name


def folder(*argv):
    return teacher_folder(teacher_configs("--model", "resnet8", "--dataset", "digits", *argv)[0])


def test_teacher_folder_names_tell_result_changing_flags_apart():
    assert folder() == PLAIN                                         # RepDistiller's name is kept
    assert folder("--seed", "5") == PLAIN + "_seed~5"
    assert folder("--loss", "evidential").endswith("_loss~evidential")
    assert folder("--cosine", "--momentum", "0.5") == PLAIN + "_momentum~0.5_cosine"
    assert folder("--epochs", "3", "--print_freq", "5", "--quiet") == PLAIN   # not result-changing
    assert folder("--take_over_lock", "--resume") == PLAIN
    assert len({folder(), folder("--seed", "1"), folder("--trial", "1"), folder("--batch_size", "32")}) == 4


def test_a_teacher_tag_ends_its_folder_name():
    assert folder("--tag", "s5") == PLAIN + "_s5"
    assert folder("--seed", "5", "--tag", "s5") == PLAIN + "_seed~5_s5"


def _student_args(*argv):
    return student_config("--dataset", "digits", *argv)


def test_student_names_differ_in_teachers_seed_and_loss_flags_and_are_folder_safe():
    base = _student_args()
    name = student_name(base, ["resnet8"], ["aaaa"])
    assert name.startswith("S~resnet8_digits_kd_r~1.0_a~1.0_b~0.0_0_resnet8_h")
    others = [student_name(base, ["resnet8"], ["bbbb"]),             # another teacher checkpoint
              student_name(_student_args("--seed", "1"), ["resnet8"], ["aaaa"]),
              student_name(_student_args("--kd_T", "8"), ["resnet8"], ["aaaa"]),
              student_name(_student_args("-C", "0.7"), ["resnet8"], ["aaaa"])]
    assert len({name, *others}) == 5
    assert "_seed~1_" in others[1] and "_kd_T~8.0_" in others[2]
    assert student_name(_student_args("--epochs", "9", "--print_freq", "3"), ["resnet8"], ["aaaa"]) == name
    assert student_name(_student_args("--take_over_lock"), ["resnet8"], ["aaaa"]) == name
    odd = student_name(_student_args("--distill", "kd+attention:1000"), ["resnet8"], ["aaaa"])   # composite objectives
    assert "kd+attention~1000" in odd and ":" not in odd and "/" not in odd
