"""The open-file limit: every client connection is a file descriptor.

A limit below the connection cap means the cap is never reached: accept()
starts failing first, and then for everyone.  At start-up the soft limit is
raised towards the hard one when needed, and a warning says so if it is
still too low.  Pure logic apart from the resource call; Windows has none.
"""

from __future__ import annotations

# Descriptors guardproxy needs besides client sockets: upstream connections
# (one per active stream; most client connections are idle), the listener,
# log files, the event loop's own.
HEADROOM = 256


def files_needed(max_connections: int) -> int:
    """The open-file limit that lets server.max_connections be reached."""
    return max_connections + HEADROOM


def check_open_files(max_connections: int) -> str | None:
    """Raise the soft limit if it is lower than the cap needs; a warning (for the log) if it stays lower."""
    try:
        import resource
    except ImportError:  # Windows: no per-process descriptor limit of this kind
        return None
    needed = files_needed(max_connections)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return None
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft >= needed:
        return None
    return (f"the open-file limit is {soft} but server.max_connections = "
            f"{max_connections} needs about {needed}; raise it (ulimit -n, or LimitNOFILE= in a "
            f"systemd unit) or lower max_connections")
