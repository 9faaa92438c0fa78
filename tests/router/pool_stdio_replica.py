"""A stdio replica for the pool tests: `tests.router.pool_replica`'s tools over stdio, named by its pid.

`whoami` answers `pid<N>`, so a test knows which process served a call (and which one to kill).
"""

from __future__ import annotations

import os

from tests.router.pool_replica import build

if __name__ == "__main__":
    build(f"pid{os.getpid()}").run("stdio")
