"""Who may use one launch of `medal annotate`: its secret, the address it answers on, and how much a page may
upload.

The annotator serves patient radiographs and writes the masks and gold standards the pipeline trains on, so it
must answer only the person who started it, not any other web page open in the same browser. Three things decide
that (`guard.py` applies them to every request):

- a secret drawn per launch (`secrets.token_urlsafe`, 256 bits), printed in the address as Jupyter does
  (`http://127.0.0.1:8765/?token=...`) and kept in a cookie after the first request. A page of another site cannot
  guess it; a page on another port of the same host gets the cookie sent along (cookies ignore ports), which is why
  the Origin and fetch-metadata checks come on top;
- the Host names the server was bound to (`hosts`): a DNS-rebinding page reaches 127.0.0.1 under its own name, so
  its Host header is refused;
- the origins allowed to change anything (`origins`): `http://` + one of those Host names.

Off loopback the page is plain HTTP: anyone on the network path can read the images and the secret. That is
allowed only when the user chose the secret (`TOKEN_ENV`), and the log says so; an SSH tunnel to a loopback server
is the better way to annotate on a remote machine.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from medal.errors import MedalError

TOKEN_ENV = "MEDAL_ANNOTATE_TOKEN"
MIN_TOKEN_CHARS = 32
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")  # one loopback server answers to all three names
WILDCARDS = ("", "0.0.0.0", "::")
TOKEN_CHARS = re.compile(r"[A-Za-z0-9_-]+")
MIB = 1 << 20


def is_loopback(host: str) -> bool:
    """Whether `host` is this machine's loopback address (only the user's own machine can connect).

    Examples:
        >>> [is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "127.0.0.2", "192.168.1.5", "lab.example")]
        [True, True, True, True, False, False]
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def authority(host: str, port: int) -> str:
    """`host:port` as a browser writes it in the Host header (an IPv6 literal in brackets, port 80 left out).

    Examples:
        >>> authority("127.0.0.1", 8765), authority("::1", 8765), authority("lab.example", 80)
        ('127.0.0.1:8765', '[::1]:8765', 'lab.example')
    """
    name = f"[{host}]" if ":" in host else host
    return name if port == 80 else f"{name}:{port}"


@dataclass(frozen=True)
class Access:
    """One launch's secret, bound address and upload cap (`annotate.max_upload_mib`, the largest mask PNG)."""

    token: str
    host: str
    port: int
    max_upload_mib: int

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    @property
    def hosts(self) -> frozenset[str]:
        """The Host header values answered: the three loopback names on loopback, else exactly the bound host."""
        names = LOOPBACK_NAMES if self.host in LOOPBACK_NAMES else (self.host,)
        return frozenset(authority(name, self.port).lower() for name in names)

    @property
    def origins(self) -> frozenset[str]:
        """The origins of the annotator's own page, the only ones allowed to change anything."""
        return frozenset(f"http://{host}" for host in self.hosts)

    @property
    def cookie(self) -> str:
        """The cookie keeping the secret; its name carries the port, since cookies are shared between the ports of
        one host and two annotators may run at once."""
        return f"medal_annotate_{self.port}"

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mib * MIB

    def url(self, with_token: bool = True) -> str:
        base = f"http://{authority(self.host, self.port)}/"
        return f"{base}?token={self.token}" if with_token else base


def check_token(token: str) -> str:
    """A secret the user chose, refused in one line when it is short or would need escaping in a URL."""
    if len(token) < MIN_TOKEN_CHARS or not TOKEN_CHARS.fullmatch(token):
        raise MedalError(f"{TOKEN_ENV}: the secret must be at least {MIN_TOKEN_CHARS} characters of A-Z a-z 0-9 - _; "
                         f"make one with `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`")
    return token


def launch_access(host: str, port: int, max_upload_mib: int, environ: Mapping[str, str]) -> Access:
    """The access of one launch: the secret from `environ[TOKEN_ENV]` when set, else a new random one; a wildcard
    address is refused (no Host name could be checked), and so is any non-loopback address unless the user chose
    the secret."""
    if host in WILDCARDS:
        raise MedalError(f"annotate.host={host!r} answers on every interface, so no Host name can be checked: bind "
                         f"the one address the browser will use (annotate.host=<this machine's IP or name>, with "
                         f"{TOKEN_ENV} set), or keep 127.0.0.1 and reach it through "
                         f"`ssh -L {port}:127.0.0.1:{port} <this machine>`")
    if not 0 < port < 65536:
        raise MedalError(f"annotate.port={port}: choose a port between 1 and 65535")
    if max_upload_mib < 1:
        raise MedalError(f"annotate.max_upload_mib={max_upload_mib}: the cap on one upload must be at least 1 MiB")
    chosen = environ.get(TOKEN_ENV)
    if not is_loopback(host) and not chosen:
        raise MedalError(f"annotate.host={host} is not this machine's loopback: the page would be plain HTTP on the "
                         f"network (anyone on the path can read the images and the secret); set the secret yourself "
                         f"in {TOKEN_ENV} to serve there anyway, or keep annotate.host=127.0.0.1 and reach it "
                         f"through `ssh -L {port}:127.0.0.1:{port} <this machine>`")
    token = check_token(chosen) if chosen else secrets.token_urlsafe(32)
    return Access(token=token, host=host, port=port, max_upload_mib=max_upload_mib)
