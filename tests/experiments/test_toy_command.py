"""``python -m experiments toy``: one row per block; bad arguments are one-line errors."""
from experiments.__main__ import main


def test_toy_prints_a_row_per_block(capsys):
    assert main(["toy", "--blocks", "concat", "--steps", "2", "--train-size", "8", "--test-size", "8"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("concat ")]
    # Hand count: mlp encoders 6->16->16 and 5->16->16, concat projection 32->16, head 16->4.
    params = (6 * 16 + 16 + 16 * 16 + 16) + (5 * 16 + 16 + 16 * 16 + 16) + (32 * 16 + 16) + (16 * 4 + 4)
    assert len(rows) == 1 and int(rows[0][1]) == params
    assert all(0.0 <= float(x) <= 1.0 for x in rows[0][2:4])


def test_toy_rejects_bad_arguments(capsys):
    assert main(["toy", "--blocks", "nope"]) == 2
    assert "unknown fusion block 'nope'" in capsys.readouterr().err
    assert main(["toy", "--blocks", "concat", "--k", "1"]) == 2
    assert "k must be >= 2, got 1" in capsys.readouterr().err
