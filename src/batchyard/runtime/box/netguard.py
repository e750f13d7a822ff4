"""The job network guard: jobs reach the internet, not this host nor its private networks.

Jobs share the host's network namespace (they call third-party APIs, SPEC 5), so without
a guard a job reaches every service listening on loopback or the host's networks: the
platform's own API, a PostgreSQL with trust authentication, Redis, the cloud metadata
address. With ``BATCHYARD_JOB_NETWORK=public`` (the default) the server, at start,
replaces one nftables table of its own, ``inet batchyard_<first uid>_<last uid>``, in
one ``nft -f -`` transaction (so several servers with different uid ranges never touch
each other's table, and a restart re-applies it). Its output-hook chain matches packets
whose *socket owner* is a uid of this server's job range, and REJECTs (a TCP reset, or
ICMP administratively prohibited: a fast failure, never a hang) those bound for:

- this host: anything routed through ``lo`` (127.0.0.0/8, ::1, and every address of the
  host's own interfaces, whatever it is), and 0.0.0.0/8;
- private and special networks: 10/8, 172.16/12, 192.168/16, CGNAT 100.64/10,
  link-local 169.254/16 (the cloud metadata address) and fe80::/10, unique-local
  fc00::/7, multicast and reserved 224.0.0.0/3 and ff00::/8.

DNS keeps working: UDP and TCP port 53 to the nameservers of /etc/resolv.conf (read at
start; glibc's 127.0.0.1 when it names none) are accepted first, wherever they are.

The uid matched is the one the kernel records on the socket: the attempt's own uid at
both levels, because bwrap runs as root *without* a user namespace and the prelude
switches to the attempt's uid (runtime/box/sandbox.py), and the rlimits launcher switches
the same way. A server that is not root (or whose jobs run as its own uid) has no range
to match: the guard is then not installed, said in a warning, in ``GET /api/v1/health``
and in each attempt's first log line, and the server starts anyway (as ``sandbox=auto``
falls back), also when ``public`` was set explicitly.

The table stays when the server stops: jobs of a crashed server's uids must still not
reach local services, and the next start replaces it. ``BATCHYARD_JOB_NETWORK=open``
deletes this range's table (an operator's choice must not be overruled by a table left
from an earlier start); servers sharing one uid range must agree on the setting.

Not covered: traffic between two jobs' own sockets on loopback is refused too (a job
that needs a local server of its own uses a Unix socket); Unix sockets are not IP:
abstract ones (``@name``) live in the shared network namespace and stay reachable at
both levels, and at the rlimits level the host's socket files (/run/postgresql,
/run/mysqld, ...) are reachable by path as for any unprivileged user (bubblewrap's
mount tree has no /run, /var or host /tmp).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("batchyard.netguard")

PUBLIC = "public"
OPEN = "open"
REFUSED_V4 = ("0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
              "172.16.0.0/12", "192.168.0.0/16", "224.0.0.0/3")
REFUSED_V6 = ("::1/128", "fc00::/7", "fe80::/10", "ff00::/8")
RESOLV_CONF = Path("/etc/resolv.conf")
# The server's PATH may lack the sbin folders (a service manager's, a developer's shell).
NFT_CANDIDATES = ("/usr/sbin/nft", "/sbin/nft")
NFT_TIMEOUT_SECONDS = 10.0
REACHABLE = "network: loopback and private networks reachable"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class NetworkGuard:
    """What start-up did: the table in force (None: no guard) and how to say it."""

    table: str | None
    description: str


def table_name(first_uid: int, last_uid: int) -> str:
    return f"batchyard_{first_uid}_{last_uid}"


def nameservers(resolv_conf: str) -> list[IPAddress]:
    """The resolvers glibc would ask, in order; its default (127.0.0.1) when none is named."""
    found: list[IPAddress] = []
    for line in resolv_conf.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                # A link-local IPv6 resolver carries its interface: fe80::1%eth0.
                address = ipaddress.ip_address(words[1].split("%", 1)[0])
            except ValueError:
                continue
            if address not in found:
                found.append(address)
    return found or [ipaddress.IPv4Address("127.0.0.1")]


def ruleset(table: str, first_uid: int, last_uid: int, resolvers: Sequence[IPAddress]) -> str:
    """The whole ``nft -f`` input: the table made if missing, deleted, and defined again,
    all one transaction (no instant without the guard, nothing of an older version left)."""
    dns = []
    for address in resolvers:
        family = "ip" if address.version == 4 else "ip6"
        dns.append(f"\t\t{family} daddr {address.compressed} meta l4proto {{ tcp, udp }} "
                   f"th dport 53 accept\n")
    return (
        f"table inet {table}\n"
        f"delete table inet {table}\n"
        f"table inet {table} {{\n"
        f"\tset refused4 {{\n\t\ttype ipv4_addr; flags interval;\n"
        f"\t\telements = {{ {', '.join(REFUSED_V4)} }}\n\t}}\n"
        f"\tset refused6 {{\n\t\ttype ipv6_addr; flags interval;\n"
        f"\t\telements = {{ {', '.join(REFUSED_V6)} }}\n\t}}\n"
        f"\tchain output {{\n"
        f"\t\ttype filter hook output priority filter; policy accept;\n"
        f"\t\tmeta skuid {first_uid}-{last_uid} jump job\n"
        f"\t}}\n"
        f"\tchain job {{\n"
        f"{''.join(dns)}"
        # Whatever its address: the host itself (its LAN address included) routes via lo.
        f"\t\toifname \"lo\" goto refuse\n"
        f"\t\tip daddr @refused4 goto refuse\n"
        f"\t\tip6 daddr @refused6 goto refuse\n"
        f"\t}}\n"
        f"\tchain refuse {{\n"
        f"\t\tmeta l4proto tcp reject with tcp reset\n"
        f"\t\treject with icmpx type admin-prohibited\n"
        f"\t}}\n"
        f"}}\n")


def removal(table: str) -> str:
    """``nft -f`` input deleting the table, whether or not it exists."""
    return f"table inet {table}\ndelete table inet {table}\n"


def find_nft() -> str | None:
    found = shutil.which("nft")
    if found is not None:
        return found
    return next((path for path in NFT_CANDIDATES if os.access(path, os.X_OK)), None)


def run_nft(nft: str, script: str) -> str | None:
    """Apply ``script`` in one transaction; None when it worked, else why not."""
    try:
        done = subprocess.run([nft, "-f", "-"], input=script.encode(), capture_output=True,
                              timeout=NFT_TIMEOUT_SECONDS, env={"PATH": "/usr/sbin:/usr/bin"})
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{type(exc).__name__}: {exc}"
    if done.returncode != 0:
        lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
        return lines[0] if lines else f"exit status {done.returncode}"
    return None


def install_network_guard(mode: str, uid_range: tuple[int, int] | None,
                          resolv_conf: Path = RESOLV_CONF) -> NetworkGuard:
    """Put ``mode`` in force for the job uids ``uid_range`` (first, last), once at start."""
    nft = find_nft()
    if mode == OPEN:
        if uid_range is not None and nft is not None and os.geteuid() == 0:
            failure = run_nft(nft, removal(table_name(*uid_range)))
            if failure is not None:
                log.warning("could not delete the network guard of uids %d-%d: %s",
                            *uid_range, failure)
        return NetworkGuard(None, f"{REACHABLE} (BATCHYARD_JOB_NETWORK=open)")
    if os.geteuid() != 0:
        reason = "the server is not root"
    elif uid_range is None:
        reason = "jobs run as the server's own uid"
    elif nft is None:
        reason = "nft is not installed (Debian package nftables)"
    else:
        table = table_name(*uid_range)
        try:
            text = resolv_conf.read_text()
        except OSError:
            text = ""
        resolvers = nameservers(text)
        failure = run_nft(nft, ruleset(table, *uid_range, resolvers))
        if failure is None:
            dns = ", ".join(address.compressed for address in resolvers)
            return NetworkGuard(table, (
                f"network: public only (nftables table inet {table}: job uids "
                f"{uid_range[0]}-{uid_range[1]} refused this host, loopback, private, "
                f"link-local and CGNAT networks; DNS to {dns})"))
        reason = f"nft failed: {failure}"
    log.warning("jobs can reach this host's loopback services and private networks: the "
                "network guard (BATCHYARD_JOB_NETWORK=public) is not installed: %s", reason)
    return NetworkGuard(None, f"{REACHABLE} (no network guard: {reason})")


def guard_installed(uid_range: tuple[int, int]) -> bool:
    """Whether this host holds the table of ``uid_range`` (False where nft cannot tell)."""
    nft = find_nft()
    if nft is None:
        return False
    try:
        done = subprocess.run([nft, "list", "table", "inet", table_name(*uid_range)],
                              capture_output=True, timeout=NFT_TIMEOUT_SECONDS)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def remove_network_guard(uid_range: tuple[int, int]) -> str | None:
    """Delete the table of ``uid_range`` (an operator's or a test's clean-up); None when
    done (or nothing to do), else why not."""
    nft = find_nft()
    if nft is None:
        return "nft is not installed"
    return run_nft(nft, removal(table_name(*uid_range)))
