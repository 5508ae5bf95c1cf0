"""The seeded checkpoint fuzzer (`tests/robustness/fuzz.py`) at CI size: 2,000 cases over
every format keras_pvt reads, through the command README documents for longer runs. Each
case must load or raise a `CheckpointError` / `PresetError` naming the damaged file, within
1 s of CPU time and 200 MB of peak memory growth."""

import re

from tests.robustness import fuzz


def test_two_thousand_mutated_checkpoints(capsys, record_delta):
    code = fuzz.main(["--cases", "2000", "--seed", "0"])
    out = capsys.readouterr().out
    assert code == 0, out
    head = re.search(r"^2000 cases: (.*)\nmax CPU time ([\d.]+) s, max peak RSS growth "
                     r"([\d.]+) MB, failures 0$", out, re.M)
    assert head, out
    outcomes = dict(re.findall(r"(loaded|CheckpointError) (\d+)", head.group(1)))
    record_delta("fuzz: cases that loaded", int(outcomes["loaded"]))
    record_delta("fuzz: cases refused with CheckpointError", int(outcomes["CheckpointError"]))
    record_delta("fuzz: max CPU time per case (s)", float(head.group(2)))
    record_delta("fuzz: max peak RSS growth per case (MB)", float(head.group(3)))
    # Every format was exercised, and each was refused in some cases.
    for directory, name, _ in fuzz.TARGETS:
        assert re.search(rf"^  {directory}/{re.escape(name)}: CheckpointError \d+$", out, re.M), (
            directory, name, out)
    assert int(outcomes["loaded"]) > 200, out
