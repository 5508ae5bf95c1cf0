"""The seeded checkpoint fuzzer (`tests/robustness/fuzz.py`) at CI size: 2,000 cases over
every format keras_pvt reads. Each must load or raise a `CheckpointError` / `PresetError`
naming the damaged file, within 1 s of CPU time and 200 MB of peak memory growth."""

import collections

from tests.robustness import fuzz


def test_two_thousand_mutated_checkpoints(tmp_path, record_delta):
    results = fuzz.campaign(2000, seed=0, root=tmp_path)
    failures = [case for case in results if fuzz.failed(case)]
    outcomes = collections.Counter(case.outcome for case in results)
    record_delta("fuzz: cases that loaded", outcomes["loaded"])
    record_delta("fuzz: cases refused with CheckpointError", outcomes["CheckpointError"])
    record_delta("fuzz: max CPU time per case (s)", max(case.cpu_s for case in results))
    record_delta("fuzz: max peak RSS growth per case (MB)", max(case.peak_mb for case in results))
    assert not failures, "\n".join(map(str, failures[:10])) + "\n" + fuzz.summary(results)
    # Every format was exercised, and each both loaded and failed to load in some cases.
    targets = collections.Counter((case.target, case.outcome == "loaded") for case in results)
    for directory, name, _ in fuzz.TARGETS:
        assert targets[(f"{directory}/{name}", False)] > 0, (directory, name)
    assert sum(targets[(t, True)] for t, _ in targets) > 200
