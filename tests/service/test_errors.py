"""Every error that carries a code shares one base (:class:`service.errors.CodedError`)."""

from __future__ import annotations

import pytest

from service.errors import CodedError, NotFoundError, ServiceError
from service.jobs.archive import ArchiveError, MemberError
from service.jobs.worker import JobFailedError


@pytest.mark.parametrize(
    ("error", "default"),
    [
        (ServiceError, "bad_request"),
        (NotFoundError, "not_found"),
        (JobFailedError, "job_failed"),
        (ArchiveError, "invalid_archive"),
        (MemberError, "invalid_member"),
    ],
)
def test_coded_errors_share_one_base_with_a_default_and_a_precise_code(error: type[CodedError], default: str) -> None:
    assert issubclass(error, CodedError)
    plain = error("what went wrong")
    assert (plain.code, plain.message, str(plain)) == (default, "what went wrong", "what went wrong")
    assert error("what went wrong", code="precise").code == "precise"
    assert error.code == default  # a raise with a precise code does not change the class's default
