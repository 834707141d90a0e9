"""An MCP server built with the official Python SDK's `MCPServer`, served over Streamable
HTTP on 127.0.0.1 port 0 (stateless HTTP: no sessions; it prints `READY <url>` once
listening) or, with `--stdio`, over stdio. Its `grow` tool adds a tool and announces the
change on `subscriptions/listen`; its `touch` tool changes its status resource
(`note://http/status` or `note://stdio/status`) and announces the update to its subscribers.
Usage: python stateless_server.py [--stdio]
"""
import socket
import sys

import anyio
import uvicorn
from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("py-stateless")
STATUS_URI = f"note://{'stdio' if '--stdio' in sys.argv else 'http'}/status"
STATUS = {"text": "quiet"}


@server.resource(STATUS_URI)
def status() -> str:
    """The server's status line."""
    return STATUS["text"]


@server.tool()
async def touch(ctx: Context) -> str:
    """Changes the status resource and tells its subscribers."""
    STATUS["text"] = "busy"
    await ctx.notify_resource_updated(STATUS_URI)
    return "touched"


@server.tool()
def add(a: int, b: int) -> str:
    """Adds two integers."""
    return str(a + b)


@server.tool()
async def grow(ctx: Context) -> str:
    """Adds a `shout` tool and tells listeners the tool list changed."""

    def shout(text: str) -> str:
        """Repeats the text in capitals."""
        return text.upper()

    server.add_tool(shout)
    await ctx.notify_tools_changed()
    return "grown"


async def main():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    app = server.streamable_http_app(stateless_http=True)
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    print(f"READY http://127.0.0.1:{port}/mcp", flush=True)
    await uvicorn.Server(config).serve(sockets=[sock])


if __name__ == "__main__":
    if "--stdio" in sys.argv:
        server.run("stdio")
    else:
        anyio.run(main)
