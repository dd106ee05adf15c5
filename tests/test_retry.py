"""RetryPolicy: checked values, the CLI and spec forms, backoff, attempts and the deadline."""

from __future__ import annotations

import math
import time

import pytest

from geoflow.errors import CheckpointError, DeadlineError, RequestError
from geoflow.retry import ChunkFailure, Clock, RetryPolicy, attempt


@pytest.mark.parametrize("kwargs, named", [
    ({"attempts": 0}, "retry attempts must be a whole number >= 1"),
    ({"attempts": 2.5}, "retry attempts must be a whole number"),
    ({"attempts": "many"}, "retry attempts must be a whole number"),
    ({"attempts": True}, "retry attempts must be a whole number"),
    ({"backoff_s": -1}, "retry backoff must be a number of seconds >= 0"),
    ({"timeout_s": 0}, "request timeout must be a number of seconds > 0"),
    ({"timeout_s": math.inf}, "request timeout must be a number of seconds > 0"),
    ({"deadline_s": -5}, "deadline must be a number of seconds > 0"),
    ({"deadline_s": float("nan")}, "deadline must be a number of seconds > 0"),
    ({"io_threads": 0}, "io threads must be a whole number >= 1"),
    ({"worker_wait_s": 0}, "worker wait must be a number of seconds > 0"),
])
def test_bad_values_name_the_field_and_an_example(kwargs, named):
    with pytest.raises(RequestError, match=named) as err:
        RetryPolicy(**kwargs)
    assert err.value.hint and "e.g." in err.value.hint


def test_cli_options_count_retries_and_keep_the_rest():
    base = RetryPolicy(attempts=6, timeout_s=9, deadline_s=100)
    policy = RetryPolicy.from_options(retries="0", deadline="30.5", base=base)
    assert (policy.attempts, policy.timeout_s, policy.deadline_s) == (1, 9, 30.5)
    with pytest.raises(RequestError, match="retries must be a whole number >= 0 and <= 99, "
                                           "got '-1'"):
        RetryPolicy.from_options(retries="-1")


def test_spec_sections_reject_unknown_keys_with_the_known_ones():
    assert RetryPolicy.from_spec({"attempts": 2, "io_threads": 3}) == \
        RetryPolicy(attempts=2, io_threads=3)
    with pytest.raises(RequestError, match=r"spec.yaml: retry: unknown key\(s\) atempts") as err:
        RetryPolicy.from_spec({"atempts": 2}, where="spec.yaml: retry")
    assert "attempts" in err.value.hint
    with pytest.raises(RequestError, match=r"spec\.yaml: retry: deadline must be"):
        RetryPolicy.from_spec({"deadline_s": "soon"}, where="spec.yaml: retry")


def test_backoff_doubles_from_the_base_and_is_capped():
    policy = RetryPolicy(backoff_s=0.5)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert RetryPolicy(backoff_s=20).delay(3) == 30.0


def test_gdal_gets_the_same_attempts_and_timeout():
    opts = RetryPolicy(attempts=5, backoff_s=0.25, timeout_s=12.5).gdal_options()
    assert opts == {"GDAL_HTTP_MAX_RETRY": "4", "GDAL_HTTP_RETRY_DELAY": "0.25",
                    "GDAL_HTTP_TIMEOUT": "13", "GDAL_HTTP_CONNECTTIMEOUT": "13"}


def test_transient_errors_are_retried_with_backoff_then_reported():
    slept: list[float] = []
    calls = []

    def always_503() -> None:
        calls.append(1)
        raise OSError("HTTP 503 from https://h/a.tif?sig=SECRET")

    with pytest.raises(ChunkFailure, match="reading failed after 3 attempts: OSError") as err:
        attempt(always_503, "reading", RetryPolicy(attempts=3, backoff_s=1), sleep=slept.append)
    assert len(calls) == 3 and slept == [1.0, 2.0]
    assert "HTTP 503" in str(err.value)


def test_geoflow_errors_are_not_retried():
    calls = []

    def bad_checkpoint() -> None:
        calls.append(1)
        raise CheckpointError("truncated", hint="download it again")

    with pytest.raises(CheckpointError):
        attempt(bad_checkpoint, "loading", RetryPolicy(attempts=5), sleep=lambda s: None)
    assert calls == [1]


def test_no_attempt_starts_after_the_deadline():
    slept: list[float] = []
    clock = Clock(ends_at=time.time() + 1.5)  # room for the first wait (1 s), not the second
    with pytest.raises(ChunkFailure, match="after 2 attempts \\(the deadline stopped"):
        attempt(lambda: 1 / 0, "writing", RetryPolicy(attempts=10, backoff_s=1), clock,
                sleep=slept.append)
    assert slept == [1.0]


def test_the_clock_caps_waits_and_says_what_it_stopped():
    assert Clock().remaining() == math.inf and not Clock().expired
    assert Clock(ends_at=time.time() + 100).cap(30) == 30
    assert Clock(ends_at=time.time() + 2).cap(30) <= 2
    assert Clock(ends_at=time.time() - 1).cap(30) == 0.05
    with pytest.raises(DeadlineError, match="while searching") as err:
        Clock(ends_at=time.time() - 1).check("searching")
    assert err.value.exit_code == 3 and "--deadline" in err.value.hint
    Clock(ends_at=time.time() + 60).check("searching")  # in time: no error
    assert RetryPolicy().start().ends_at is None
    ends = RetryPolicy(deadline_s=60).start().ends_at
    assert ends is not None and 59 < ends - time.time() <= 60


def test_short_errors_carry_no_secrets() -> None:
    """Ledgers, reports and messages show errors through short_error: a GDAL message that
    quotes a signed URL (here in the cause) loses its token there, in one place."""
    from geoflow.retry import short_error

    try:
        try:
            raise OSError("HTTP 403 for https://acct.blob.core.windows.net/c/b04.tif?se=1&sig=S3")
        except OSError as cause:
            raise RuntimeError("Error reading 'b04.tif'") from cause
    except RuntimeError as err:
        text = short_error(err)
    assert "HTTP 403" in text and "acct.blob.core.windows.net/c/b04.tif" in text
    assert "sig=" not in text and "S3" not in text
