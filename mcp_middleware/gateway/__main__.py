"""`python -m mcp_middleware.gateway` = `mcp-gateway`."""

from .cli import main

raise SystemExit(main())
