"""The bare server loaded with the requests the authenticated stacks get: like for like.

`bare_token` is the SDK's app with nothing in front, its load carrying the same `Authorization`
header as `full_stack`'s and `gateway`'s (the server ignores it). The SDK looks request headers up
by scanning them, so one more header costs it ≈ 190 bytecodes a request (measured with
`python -m tests.benchmarks.profile_requests bytecodes bare,bare_token`); any server behind a bearer
check pays that, whichever layer checks the token. Comparing a stack with `bare_token` measures the
stack alone; comparing it with `bare` measures the stack plus the credential on the wire.
"""

from __future__ import annotations

from .apps import Stack
from .stack_full import _HEADERS

STACKS = {"bare_token": Stack(lambda app: app, headers=_HEADERS)}
