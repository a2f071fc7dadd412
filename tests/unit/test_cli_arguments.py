"""Arguments the CLI's parser refuses before it reads an inventory or reaches a host, run in process: one line on
stderr naming the command, the argument and the value, exit 2. The same rows run end to end, through the lab, in
tests/lab/test_badinput.py (which also checks that no host and no bucket changed)."""

from __future__ import annotations

import pytest

from topdeck.cli.main import main

MARKER = "/tmp/topdeck-cli-arguments-pwned"

ROWS = [
    (["deploy", "--on", "", "--yes"], ["deploy: argument --on: '' names no host"]),
    (["deploy", "--on", ",", "--yes"], ["deploy: argument --on: ',' names no host"]),
    (["deploy", "--mode", "bogus", "--yes"], ["deploy: argument --mode: invalid choice: 'bogus'",
                                              "see `topdeck deploy --help`"]),
    (["deploy", "--mode", f"switch;touch {MARKER}", "--yes"],
     ["deploy: argument --mode: invalid choice: 'switch;touch"]),
    (["deploy", "--canary", "abc", "--yes"], ["deploy: argument --canary: invalid int value: 'abc'"]),
    (["rollback", "host-1", "--to", "abc", "--yes"], ["rollback: argument --to: invalid int value: 'abc'"]),
    (["rollback", "host-1", "--to", f"1;touch {MARKER}", "--yes"],
     ["rollback: argument --to: invalid int value: '1;touch"]),
    (["rollback", "", "--yes"], ["rollback: argument HOST: '' names no host"]),
    (["status", "--on", ","], ["status: argument --on: ',' names no host"]),
    (["apply", "--mode", "bogus", "--yes"], ["apply: argument --mode: invalid choice: 'bogus'"]),
    (["trust", "host-1", "--fingerprint", "MD5:aa:bb"],
     ["trust: argument --fingerprint: 'MD5:aa:bb' is not a SHA256 fingerprint"]),
]


@pytest.mark.parametrize(("argv", "expected"), ROWS, ids=[" ".join(argv) for argv, _ in ROWS])
def test_a_bad_argument_is_one_line_naming_it_before_anything_is_read(argv: list[str], expected: list[str],
                                                                      tmp_path, capsys) -> None:
    missing = tmp_path / "no-inventory-here"
    with pytest.raises(SystemExit) as exit_:
        main(["--inventory", str(missing), *argv])
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    for part in expected:
        assert part in err, err
    assert str(missing) not in err  # refused while parsing: the inventory was never looked for
