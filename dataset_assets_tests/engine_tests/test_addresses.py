"""Which addresses the fetcher refuses, in every spelling, whatever allow_private_addresses says.

The rules are unit-tested on the checker (no traffic: several of these addresses are real cloud
services); the one end-to-end test points numeric spellings of 127.0.0.1 at a live loopback
server and checks, from the server's side, that nothing reached it unless private addresses
are allowed.
"""

from __future__ import annotations

import ipaddress
import socket

import pyarrow.parquet as pq
import pytest

from dataset_assets.engine.addresses import AddressRefused, check_host, legacy_ipv4, refusal_reason
from dataset_assets.engine.fetch import _checked_url, _origin
from dataset_assets.engine.runner import download_shard
from dataset_assets_tests.conftest import local_options, rows
from dataset_assets_tests.fakeweb.images import make_image
from dataset_assets_tests.fakeweb.server import ImageServer, ServerConfig

LOOPBACK_SPELLINGS = ["2130706433", "127.1", "127.0.1", "0177.0.0.1", "0x7f.1", "0x7f000001", "0X7F.0.0.01"]


@pytest.mark.parametrize(
    ("host", "address"),
    [
        *((h, "127.0.0.1") for h in LOOPBACK_SPELLINGS),
        ("3232235521", "192.168.0.1"),
        ("2852039166", "169.254.169.254"),
        ("0xa9.0376.43518", "169.254.169.254"),  # hex, octal, then 16 bits
        ("1684301000", "100.100.100.200"),
        ("134744072", "8.8.8.8"),
        ("0", "0.0.0.0"),
        ("8.8.8.8", "8.8.8.8"),
    ],
)
def test_numeric_hosts_denote_the_address_inet_aton_reads(host: str, address: str) -> None:
    assert legacy_ipv4(host) == ipaddress.IPv4Address(address)
    assert socket.inet_aton(host) == ipaddress.IPv4Address(address).packed  # the platform agrees


@pytest.mark.parametrize(
    "host",
    [
        "example.com",
        "1.2.3.4.5",
        "08.1",
        "0x1g",
        "256.1.1.1",
        "1.16777216",
        "4294967296",
        "1..2",
        "",
        "1.2.3.a",
    ],
)
def test_other_hosts_are_not_numeric_addresses(host: str) -> None:
    assert legacy_ipv4(host) is None


ALWAYS_REFUSED = [
    "169.254.169.254",  # metadata of most clouds
    "169.254.170.2",  # AWS ECS task credentials
    "fd00:ec2::254",  # AWS metadata over IPv6: inside fc00::/7, which the option opens
    "[fd00:ec2::254]",
    "fd20:ce::254",  # GCP metadata over IPv6
    "100.100.100.200",  # Alibaba Cloud metadata
    "1684301000",  # the same, spelled as a number
    "::ffff:100.100.100.200",
    "100.64.0.1",  # carrier-grade NAT, first and last of 100.64.0.0/10
    "100.127.255.254",
    "192.0.0.192",  # Oracle Cloud's old metadata, in 192.0.0.0/24
    "192.0.0.8",
    "168.63.129.16",  # Azure WireServer
    "0xa9fea9fe",  # 169.254.169.254 in hex
    "metadata.google.internal",
    "METADATA.google.internal.",
    "224.0.0.1",  # multicast
]


@pytest.mark.parametrize("allow_private", [False, True])
@pytest.mark.parametrize("host", ALWAYS_REFUSED)
def test_metadata_and_special_ranges_are_refused_whatever_the_option(host: str, allow_private: bool) -> None:
    with pytest.raises(AddressRefused, match="refused to contact") as refused:
        check_host(host, allow_private)
    assert "allow_private_addresses" not in str(refused.value), "the message must not suggest the option"


@pytest.mark.parametrize(
    ("host", "canonical"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("::1", "::1"),
        ("10.1.2.3", "10.1.2.3"),
        ("192.168.1.1", "192.168.1.1"),
        ("fd12:3456::1", "fd12:3456::1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("3232235521", "192.168.0.1"),
    ],
)
def test_private_addresses_need_the_option(host: str, canonical: str) -> None:
    with pytest.raises(AddressRefused, match="set allow_private_addresses to permit"):
        check_host(host, allow_private=False)
    assert check_host(host, allow_private=True) == canonical


@pytest.mark.parametrize(
    ("host", "canonical"),
    [
        ("example.com", "example.com"),
        ("93.184.216.34", "93.184.216.34"),
        ("134744072", "8.8.8.8"),
        ("100.128.0.1", "100.128.0.1"),  # just past 100.64.0.0/10
        ("100.63.255.255", "100.63.255.255"),
        ("2606:4700::1111", "2606:4700::1111"),
    ],
)
def test_public_hosts_pass_as_the_address_they_denote(host: str, canonical: str) -> None:
    assert check_host(host, allow_private=False) == canonical


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("http://Bücher.DE/a.jpg", "http://xn--bcher-kva.de:80"),  # a name: its IDNA form
        ("http://xn--bcher-kva.de/a.jpg", "http://xn--bcher-kva.de:80"),  # the same origin
        ("https://EXAMPLE.com/a.jpg", "https://example.com:443"),
        ("http://[2001:db8::1]:8080/a.jpg", "http://2001:db8::1:8080"),  # an IP literal, as before
    ],
)
def test_a_url_is_checked_and_keyed_by_the_host_it_contacts(url: str, origin: str) -> None:
    """Policy files and address checks use the host as resolved (a name's ``xn--`` form)."""
    assert _origin(url) == origin
    assert _checked_url(url, allow_private=True).raw_host == origin.split("://")[1].rsplit(":", 1)[0]


def test_a_unicode_spelling_of_a_metadata_host_is_refused() -> None:
    fullwidth = "".join(chr(0xFEE0 + ord(c)) for c in "metadata")  # IDNA folds it to ASCII
    with pytest.raises(AddressRefused, match="metadata"):
        _checked_url(f"http://{fullwidth}.google.internal/computeMetadata/v1/", allow_private=True)


def test_resolver_answers_are_judged_by_the_same_rules() -> None:
    # What SafeResolver applies to every DNS answer: a name mapped to metadata stays refused.
    assert "metadata" in (refusal_reason("fd00:ec2::254", allow_private=True) or "")
    assert "100.64.0.0/10" in (refusal_reason("100.100.100.201", allow_private=True) or "")
    assert refusal_reason("10.0.0.1", allow_private=True) is None
    assert refusal_reason("10.0.0.1", allow_private=False) is not None


def test_numeric_spellings_of_loopback_are_refused_without_a_request(tmp_path) -> None:
    with ImageServer(
        images={"x.jpg": make_image(7, 40, 30)}, config=ServerConfig(max_lifetime_s=60)
    ) as server:
        urls = [f"http://{host}:{server.port}/img/x.jpg" for host in LOOPBACK_SPELLINGS]
        refused = download_shard(
            rows(urls), str(tmp_path / "refused"), local_options(allow_private_addresses=False)
        )
        requested_while_refused = list(server.stats.paths)
        allowed = download_shard(rows(urls), str(tmp_path / "allowed"), local_options())
        requested_while_allowed = list(server.stats.paths)

    assert requested_while_refused == [], "a refused URL reached the server"
    assert refused.successes == 0
    for record in pq.read_table(tmp_path / "refused" / "00000.parquet").to_pylist():
        assert record["status"] == "failed_to_download"
        assert record["error_message"].startswith("refused to contact private address"), record
        assert "(127.0.0.1)" in record["error_message"], "the message names the address it denotes"
    # Allowed, each spelling reaches the address it was judged as (not an "invalid URL").
    assert allowed.successes == len(urls)
    assert requested_while_allowed.count("/img/x.jpg") == len(urls)
