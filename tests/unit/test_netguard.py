"""The network guard's pure parts: which resolvers are allowed, the nft script, its name."""

from __future__ import annotations

import ipaddress

from batchyard.runtime.box.netguard import nameservers, removal, ruleset, table_name


def test_nameservers_are_read_in_order_without_duplicates_nor_zones() -> None:
    text = ("# generated\nsearch example.internal\nnameserver 10.255.255.53\n"
            "nameserver fe80::1%eth0\n  nameserver 10.255.255.53\nnameserver not-an-ip\n"
            "options edns0\n")
    assert [a.compressed for a in nameservers(text)] == ["10.255.255.53", "fe80::1"]


def test_no_nameserver_means_glibcs_default_on_loopback() -> None:
    assert nameservers("search example.org\n") == [ipaddress.IPv4Address("127.0.0.1")]


def test_the_script_replaces_the_table_of_the_uid_range_in_one_transaction() -> None:
    table = table_name(2_300_000_000, 2_300_009_999)
    script = ruleset(table, 2_300_000_000, 2_300_009_999, [
        ipaddress.IPv4Address("127.0.0.53"), ipaddress.IPv6Address("fd00::53")])
    lines = [line.strip() for line in script.splitlines()]
    assert table == "batchyard_2300000000_2300009999"
    # Made if missing, so that the delete never fails; then defined afresh.
    assert lines[:3] == [f"table inet {table}", f"delete table inet {table}",
                         f"table inet {table} {{"]
    assert "meta skuid 2300000000-2300009999 jump job" in lines
    job = lines[lines.index("chain job {") + 1:]
    # DNS to the resolvers first, then everything local or private refused.
    assert job[:5] == [
        "ip daddr 127.0.0.53 meta l4proto { tcp, udp } th dport 53 accept",
        "ip6 daddr fd00::53 meta l4proto { tcp, udp } th dport 53 accept",
        'oifname "lo" goto refuse', "ip daddr @refused4 goto refuse",
        "ip6 daddr @refused6 goto refuse"]
    for network in ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                    "169.254.0.0/16", "100.64.0.0/10", "0.0.0.0/8", "::1/128", "fc00::/7",
                    "fe80::/10"):
        assert network in script
    # A refusal is fast (reset / ICMP), never a silent drop.
    assert "reject with tcp reset" in script and " drop" not in script
    assert removal(table) == f"table inet {table}\ndelete table inet {table}\n"
