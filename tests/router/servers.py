"""Backends for the router tests: small `MCPServer`s named after what they prove."""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer


def numbered_server(index: int) -> MCPServer:
    """A server whose one tool says which server answered (for the many-mounts tests)."""
    server = MCPServer(f"server-{index}")

    @server.tool()
    def whoami() -> str:
        """Name the server that answered."""
        return f"server-{index}"

    return server


def team_server(team: str, tools: tuple[str, ...] = ("search", "create")) -> MCPServer:
    """A server offering `tools` (each answers `{team}:{tool}:{query}`), a resource and a prompt."""
    server = MCPServer(team)

    for tool in tools:

        def make(tool: str = tool) -> None:
            @server.tool(name=tool, description=f"{tool} in {team}")
            def handler(query: str = "") -> str:
                return f"{team}:{tool}:{query}"

        make()

    @server.resource(f"{team}://readme")
    def readme() -> str:
        """The team's readme."""
        return f"readme of {team}"

    @server.resource(f"{team}://items/{{item}}")
    def item(item: str) -> str:
        """One item of the team."""
        return f"{team} item {item}"

    @server.prompt(name="summarize")
    def summarize(topic: str) -> str:
        """Summarize a topic."""
        return f"[{team}] summarize {topic}"

    return server
