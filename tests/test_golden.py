"""Golden outputs: a fixed set of attacks (PGD, MI-FGSM with all boosters, C&W, ACE, PerC-AL,
Square, camouflage with JPEG EOT, and a continuous-batching stream) must produce, byte for byte,
the 8-bit PNGs recorded in ``tests/golden.json`` before the attack-core refactor (issue 25).

The digests are keyed by the machine's :func:`tests.golden.fingerprint` (CPU model and vector
ISA, jax/jaxlib, Pillow/zlib): float results are only reproducible bit for bit there. On a
machine with no recorded goldens the test is skipped with the command that records them (run it
on code known to be right, e.g. main, then check the change against them)."""

from __future__ import annotations

import pytest

from tests import golden


def test_attack_results_are_byte_identical_to_the_goldens(photo_paths):
    fp = golden.fingerprint()
    want = golden.load().get(fp)
    if want is None:
        pytest.skip(f"no goldens for this machine ({fp}); record them on known-good code with "
                    f"`python -m tests.golden --record`")
    got = golden.compute()
    assert sorted(got) == sorted(want)
    diff = {k: (want[k], got[k]) for k in want if want[k] != got[k]}
    assert not diff, f"attack results changed: {diff}"
