"""helper/options.py: every shared flag is checked where it is defined (one line naming the flag,
before any data is loaded), and every trial label gets a seed of its own, inside the generators'
range, or is refused: no sign, no leading zero, no non-ASCII digit, no number beyond the range."""
import hashlib

import pytest
import torch

import train_student
import train_teacher
from helper.options import LABEL_OFFSET, SEED_LIMIT, trial_offset, trial_seed


def one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


SEED_AND_TRIAL = [
    (["--seed", "-5"], "argument --seed: expected an integer from 0 to 4294967295 in ASCII digits, got '-5'"),
    (["--seed", "4294967296"], "argument --seed"),
    (["--seed", "\u0665"], "argument --seed"),                       # an Arabic-Indic five
    (["--seed", "1e3"], "argument --seed"),
    (["--trial", "-3"], "'-3': a trial number has no sign"),
    (["--trial", "03"], "write the trial number without leading zeros (3)"),
    (["--trial", "\u0663"], "'\u0663': use ASCII letters"),                       # int('\u0663') == 3
    (["--trial", "caf\u00e9"], "use ASCII letters"),
    (["--trial", "\u00b2"], "use ASCII letters"),                    # '²'.isdigit(), but int('²') fails
    (["--trial", "4294967296"], "trial numbers go up to 4294967295"),
]


@pytest.mark.parametrize("argv, needle", SEED_AND_TRIAL + [
    (["--trials", "../../evil"], "--trials label '../../evil'"),
    (["--trials", "0,..,2"], "--trials label '..'"),
    (["--trials", "0,03"], "--trials label '03': write the trial number without leading zeros"),
    (["--trials", "1,\u0663"], "--trials label '\u0663': use ASCII letters"),
    (["--trials", "\u0663"], "--trials label '\u0663'"),            # not a count either
    (["--trials", "100000000"], "--trials count must be from 1 to 10000"),
    (["--trials", "0"], "--trials count must be from 1 to 10000"),
    (["--trial", "../../../x"], "--trial"),
    (["--trial", ".hidden"], "--trial"),
    (["--lr_decay_rate", "-1"], "--lr_decay_rate"),
    (["--lr_decay_rate", "0"], "--lr_decay_rate"),
    (["--momentum", "5"], "--momentum"),
    (["--momentum", "-0.1"], "--momentum"),
    (["--learning_rate", "inf"], "--learning_rate"),
    (["--learning_rate", "nan"], "--learning_rate"),
    (["--learning_rate", "0"], "--learning_rate"),
    (["--weight_decay", "-1e-4"], "--weight_decay"),
    (["--batch_size", "0"], "--batch_size"),
    (["--save_dir", ""], "--save_dir"),
    (["--print_freq", "0"], "--print_freq"),
    (["--resume", "--overwrite"], "give one of them"),
    (["--tag", "a/b"], "--tag"),
])
def test_teacher_flags_are_validated(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        train_teacher.main(["--dataset", "digits"] + argv)
    assert exc.value.code == 2
    assert needle in one_line_error(capsys)


@pytest.mark.parametrize("argv, needle", SEED_AND_TRIAL + [
    (["--kd_T", "0"], "--kd_T"),
    (["--kd_T", "-4"], "--kd_T"),
    (["--kd_T", "inf"], "--kd_T"),
    (["-r", "-1"], "-r/--gamma"),
    (["-a", "nan"], "-a/--alpha"),
    (["-b", "inf"], "-b/--beta"),
    (["--init_epochs", "-3"], "--init_epochs"),
    (["--beta_delay_epochs", "-1"], "--beta_delay_epochs"),
    (["--tag", "../x"], "--tag"),
    (["--trial", "a/b"], "--trial"),
    (["--teachers", "digits-resnet8-0", "digits-resnet8-0"], "--teachers names digits-resnet8-0 more than once"),
    (["--path_t", "a.pth", "./a.pth"], "--path_t names"),
    (["--model_s", "MobileNetV1"], "--model_s MobileNetV1 is an ImageNet model"),
    (["--momentum", "1"], "--momentum"),
])
def test_student_flags_are_validated(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        train_student.main(["--dataset", "digits"] + argv)
    assert exc.value.code == 2
    assert needle in one_line_error(capsys)


def test_save_dir_that_is_a_file_is_refused(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    for main in (train_teacher.main, train_student.main):
        with pytest.raises(SystemExit):
            main(["--dataset", "digits", "--save_dir", str(f)])
        assert "is a file" in one_line_error(capsys)


def test_trial_numbers_keep_their_seeds_and_labels_get_their_own_range():
    assert [trial_seed(0, t) for t in ("0", "1", "2", "41")] == [0, 1, 2, 41]      # RepDistiller/CA-MKD trials
    assert trial_seed(5, "3") == 8 and trial_seed(SEED_LIMIT - 1, str(SEED_LIMIT - 1)) == 2 * SEED_LIMIT - 2
    digest = hashlib.sha256(b"a").digest()
    assert trial_offset("a") == 2 ** 32 + (int.from_bytes(digest[:8], "big") >> 2)   # SHA-256, top 62 bits
    labels = ["a", "b", "run-1", "1a", "3.0", "0x3", "1_000", "1e3", "A", "trial~3"] + [f"t{i}" for i in range(2000)]
    offsets = [trial_offset(label) for label in labels]
    assert len(set(offsets)) == len(labels) and min(offsets) >= LABEL_OFFSET          # never a number's
    assert max(offsets) < LABEL_OFFSET + 2 ** 62
    top = trial_seed(SEED_LIMIT - 1, "zz")
    assert top < 2 ** 63
    torch.Generator().manual_seed(max(trial_seed(SEED_LIMIT - 1, t) for t in labels))   # in the generator's range


def test_every_accepted_trial_label_names_its_own_seed():
    """Labels the parser accepts that read as the same number would share a seed: only one
    spelling of each number passes."""
    parser = train_teacher.build_parser()
    accepted = {}
    for text in ["3", "03", "003", "-3", "+3", "\u0663", "\u06f3", "\uff13", "3 ", "3\u200b", "3a", "a3"]:
        try:
            config = train_teacher.parse_args(["--trial", text, "--device", "cpu"], parser)[0]
        except SystemExit:
            continue
        accepted[text] = trial_seed(config.seed, config.trial)
    assert sorted(accepted) == ["3", "3a", "a3"]
    assert len(set(accepted.values())) == len(accepted)
