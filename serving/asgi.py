"""Serving an ASGI app under uvicorn as the endpoint and the chat page both do: bind before anything slow (a busy
port fails at once; early requests wait in the backlog), and say so only once uvicorn accepts connections."""

import socket


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (0: a free port); OSError when it cannot."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(64)
    sock.set_inheritable(True)
    return sock


def run(app, sock: socket.socket, on_listening, **config):
    """Serve app on sock until SIGINT/SIGTERM; on_listening() runs once uvicorn has started accepting."""
    import uvicorn

    from common.patches import uvicorn_on_listening

    server = uvicorn.Server(
        uvicorn.Config(app, **{"log_level": "warning", "access_log": False, "timeout_graceful_shutdown": 3, **config})
    )
    uvicorn_on_listening(server, on_listening)
    server.run(sockets=[sock])
