from streams.logic.backoff import attempts_within, backoff_delays


def test_delays_double_up_to_the_cap():
    assert backoff_delays(5, 0.1, 0.5) == [0.1, 0.2, 0.4, 0.5]


def test_one_attempt_never_waits():
    assert backoff_delays(1, 0.1, 2.0) == []


def test_attempts_within_cover_the_wait_and_no_more():
    attempts = attempts_within(30.0, 0.1, 2.0)
    assert sum(backoff_delays(attempts, 0.1, 2.0)) >= 30.0
    assert sum(backoff_delays(attempts - 1, 0.1, 2.0)) < 30.0


def test_no_wait_means_one_attempt():
    assert attempts_within(0.0, 0.1, 2.0) == 1
