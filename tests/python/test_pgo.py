"""scripts/pgo-log-check, which scripts/build-proxy (and so Dockerfile.proxy) relies on to tell
whether the shipped binary got its PGO profile, on the output of real builds with the profile in
proxy/pgo/ (the warnings for the aoai_proxy crate kept; recorded with rustc 1.95):

- fits.log: `scripts/build-proxy` as it is;
- renamed.log: the same with `CARGO_PROFILE_RELEASE_DEBUG=line-tables-only`, which Cargo mixes
  into every symbol's hash: the profile matched no function and the binary executed as many
  instructions per request as one built without it, while the build said nothing;
- changed.log: `Forwarder::handle` given one more branch after the recording."""

import subprocess

from conftest import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "pgo"


def check(log):
    result = subprocess.run(
        [ROOT / "scripts" / "pgo-log-check", log], capture_output=True, text=True, check=True
    )
    return result.stdout.splitlines()


def test_a_build_the_profile_fits_has_nothing_to_report():
    assert check(FIXTURES / "fits.log") == []


def test_a_build_whose_symbols_were_renamed_is_reported():
    assert check(FIXTURES / "renamed.log") == [
        "it fits none of aoai-proxy's functions: their symbol names changed since it was "
        "recorded, as a change to the release profile in Cargo.toml does"
    ]


def test_changed_functions_are_counted():
    assert check(FIXTURES / "changed.log") == ["functions changed since it was recorded: 1"]


def test_a_log_without_the_missing_function_warnings_cannot_tell(tmp_path):
    log = tmp_path / "quiet.log"
    log.write_text("   Compiling aoai-proxy v0.1.0 (/src/proxy)\n    Finished `release` profile\n")
    assert check(log) == [
        "the build log does not say which functions the profile missed "
        "(built without -Cllvm-args=-pgo-warn-missing-function?)"
    ]
