"""Every machine-readable opt-out, from the site's side: one loopback address per policy.

Each address plays a site with one policy file (robots.txt's Content-Signal and Content-Usage
lines, tdmrep.json, ai.txt, a robots.txt group for img2dataset), next to look-alikes that must
still be fetched. A refused row carries the signal to the shard's ``opt_outs``; a row refused
by a policy file is never requested; each policy file is asked once per origin even with two
worker processes; each signal's option turns it off; an unreadable file is an outage.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pyarrow.parquet as pq
import pytest

from dataset_assets.engine.consent.robots import parse_robots
from dataset_assets.engine.consent.tdmrep import parse_tdmrep
from dataset_assets.engine.consent.usage_prefs import content_signal_refusal, content_usage_refusal
from dataset_assets.engine.runner import download_shard
from dataset_assets_tests.conftest import local_options, rows
from dataset_assets_tests.fakeweb.images import make_image
from dataset_assets_tests.fakeweb.server import ImageServer, ServerConfig

ROWS_PER_HOST = 4
POLICY_FILES = ("/robots.txt", "/.well-known/tdmrep.json", "/ai.txt")
TDM_POLICY = "https://rights.example/tdm-policy.json"

# address index -> (file, text, status) served by that address only
SITES: dict[str, tuple[int, str, str, int]] = {
    "content-signal": (
        1,
        "/robots.txt",
        "User-agent: *\nContent-Signal: search=yes, ai-train=no\nAllow: /\n",
        200,
    ),
    "content-signal-yes": (
        2,
        "/robots.txt",
        "User-agent: *\nContent-Signal: search=yes, ai-train=yes\n",
        200,
    ),
    "content-usage": (
        3,
        "/robots.txt",
        "User-agent: *\nAllow: /\nContent-Usage: train-ai=n\nContent-Usage: /img/ok train-ai=y\n",
        200,
    ),
    "tdmrep": (
        4,
        "/.well-known/tdmrep.json",
        f'[{{"location": "/img/", "tdm-reservation": 1, "tdm-policy": "{TDM_POLICY}"}}]',
        200,
    ),
    "tdmrep-other-path": (
        5,
        "/.well-known/tdmrep.json",
        '[{"location": "/private/", "tdm-reservation": 1}]',
        200,
    ),
    "ai.txt": (6, "/ai.txt", "User-Agent: *\nDisallow: *.jpg\nAllow: /\n", 200),
    "ai.txt-png-only": (7, "/ai.txt", "User-Agent: *\nDisallow: *.png\n", 200),
    "img2dataset": (
        8,
        "/robots.txt",
        "User-agent: img2dataset\nDisallow: /\n\nUser-agent: dataset-assets\nAllow: /\n",
        200,
    ),
    "tdmrep-503": (9, "/.well-known/tdmrep.json", "busy", 503),
    "top-level-signal": (10, "/robots.txt", "Content-Signal: ai-train=no\n\nUser-agent: *\nAllow: /\n", 200),
    "ai.txt-429": (11, "/ai.txt", "slow down", 429),
}


@pytest.fixture(scope="module")
def consent_web() -> Iterator[ImageServer]:
    images = {name: make_image(i, 48, 36) for i, name in enumerate(("a.jpg", "ok.jpg", "pol.jpg"))}
    config = ServerConfig(max_lifetime_s=300, extra_hosts=max(site[0] for site in SITES.values()))
    with ImageServer(images=images, config=config) as server:
        for index, path, text, status in SITES.values():
            server.set_policy_file(path, text, status, host=server.hosts[index])
        server.set_header("pol.jpg", {"tdm-reservation": "1", "tdm-policy": TDM_POLICY})
        yield server


def _site_urls(server: ImageServer, site: str, name: str = "a.jpg") -> list[str]:
    """Several rows of one site, each a distinct path so the server's record tells them apart."""
    host = server.hosts[SITES[site][0]]
    return [server.url_for(f"/img/{name}?site={site}&n={n}", host) for n in range(ROWS_PER_HOST)]


def _header_urls(server: ImageServer, field: str, value: str) -> list[str]:
    return [server.url_for(f"/header/{field}/{value}/a.jpg?n={n}") for n in range(2)]


def _outcomes(folder) -> dict[str, tuple[str, str | None]]:
    table = pq.read_table(folder / "00000.parquet").to_pylist()
    return {r["url"]: (r["status"], r["error_message"]) for r in table}


def _origin(server: ImageServer, site: str) -> str:
    return f"http://{server.hosts[SITES[site][0]]}:{server.port}"


def test_every_opt_out_is_honoured_named_and_counted(consent_web: ImageServer, tmp_path) -> None:
    s = consent_web
    s.reset_stats()
    refused = {
        "content-signal": (
            f"disallowed by Content-Signal ai-train=no in robots.txt of {_origin(s, 'content-signal')}"
        ),
        "content-usage": (
            f"disallowed by Content-Usage train-ai=n in robots.txt of {_origin(s, 'content-usage')}"
            " (Content-Usage: train-ai=n)"
        ),
        "tdmrep": (
            f"disallowed by TDMRep tdm-reservation=1 in /.well-known/tdmrep.json of {_origin(s, 'tdmrep')}"
            f" (location '/img/'; policy: {TDM_POLICY})"
        ),
        "ai.txt": f"disallowed by ai.txt of {_origin(s, 'ai.txt')} (Disallow: *.jpg)",
        "img2dataset": f"disallowed by robots.txt of {_origin(s, 'img2dataset')} (Disallow: /)",
        "top-level-signal": (
            f"disallowed by Content-Signal ai-train=no in robots.txt of {_origin(s, 'top-level-signal')}"
        ),
        "tdmrep-503": (
            f"/.well-known/tdmrep.json of {_origin(s, 'tdmrep-503')} unavailable (HTTP 503); "
            "not fetched, retry later"
        ),
        "ai.txt-429": (
            f"ai.txt of {_origin(s, 'ai.txt-429')} unavailable (HTTP 429); not fetched, retry later"
        ),
    }
    look_alikes = ("content-signal-yes", "tdmrep-other-path", "ai.txt-png-only")
    expected: dict[str, tuple[str, str | None]] = {}
    for site, message in refused.items():
        expected |= {url: ("failed_to_download", message) for url in _site_urls(s, site)}
    for site in look_alikes:
        expected |= {url: ("success", None) for url in _site_urls(s, site)}
    # a path-scoped Content-Usage: the longest matching path allows it
    expected |= {url: ("success", None) for url in _site_urls(s, "content-usage", "ok.jpg")}
    origin = s.base_url
    header_refusals = {
        (
            "Content-Usage",
            "train-ai=n",
        ): f"disallowed by Content-Usage train-ai=n response header of {origin}",
        ("tdm-reservation", "1"): f"disallowed by TDMRep tdm-reservation=1 response header of {origin}",
    }
    for (field, value), message in header_refusals.items():
        expected |= {url: ("failed_to_download", message) for url in _header_urls(s, field, value)}
    for field, value in (("Content-Usage", "train-ai=y"), ("tdm-reservation", "0")):
        expected |= {url: ("success", None) for url in _header_urls(s, field, value)}
    policy_header = s.url("pol.jpg")
    expected[policy_header] = (
        "failed_to_download",
        f"disallowed by TDMRep tdm-reservation=1 response header of {origin} (policy: {TDM_POLICY})",
    )

    options = local_options(processes_count=2, thread_count=8, output_format="parquet")
    stats = download_shard(rows(list(expected)), str(tmp_path), options, shard_id=0)

    assert _outcomes(tmp_path) == expected
    n = ROWS_PER_HOST
    assert stats.opt_outs == {
        "content-signal": 2 * n,  # in the * group, and at top level
        "content-usage": n + 2,  # the robots.txt rule, and the header
        "tdmrep": n + 2 + 1,  # tdmrep.json, the header, the header with a policy
        "ai.txt": n,
        "robots.txt": n,  # the img2dataset group, although dataset-assets is allowed
    }  # outages (503, 429) are not opt-outs
    seen = s.stats
    for policy_file in POLICY_FILES:  # once per origin, with two workers and four rows each
        assert seen.paths.count(policy_file) == len(s.hosts), policy_file
    for site in refused:  # known from a policy file: only the policy files were asked for
        assert not [p for p in seen.paths if p.startswith(f"/img/a.jpg?site={site}&")], site
        allowed_rows = ROWS_PER_HOST if site == "content-usage" else 0  # its ok.jpg rows
        assert seen.host(s.hosts[SITES[site][0]]).requests == len(POLICY_FILES) + allowed_rows, site


@pytest.mark.parametrize(
    ("option", "site"),
    [
        ("respect_content_signal", "content-signal"),
        ("respect_content_usage", "content-usage"),
        ("respect_tdmrep", "tdmrep"),
        ("respect_ai_txt", "ai.txt"),
        ("respect_robots_txt", "img2dataset"),
    ],
)
def test_each_signal_has_its_own_off_switch(
    option: str, site: str, consent_web: ImageServer, tmp_path
) -> None:
    s = consent_web
    s.reset_stats()
    urls = _site_urls(s, site)
    if option == "respect_content_usage":
        urls += _header_urls(s, "Content-Usage", "train-ai=n")
    if option == "respect_tdmrep":
        urls += _header_urls(s, "tdm-reservation", "1")
    stats = download_shard(rows(urls), str(tmp_path), local_options(**{option: False}), shard_id=0)
    assert stats.successes == len(urls), _outcomes(tmp_path)
    assert stats.opt_outs == {}
    # a file whose only reader is off is not asked for
    unasked = {"respect_tdmrep": "/.well-known/tdmrep.json", "respect_ai_txt": "/ai.txt"}.get(option)
    if unasked:
        assert unasked not in s.stats.paths


def test_no_policy_file_is_asked_for_when_every_signal_is_off(consent_web: ImageServer, tmp_path) -> None:
    s = consent_web
    s.reset_stats()
    off = {name: False for name in ("respect_robots_txt", "respect_content_signal", "respect_content_usage")}
    off |= {"respect_tdmrep": False, "respect_ai_txt": False}
    urls = _site_urls(s, "tdmrep-503")
    stats = download_shard(rows(urls), str(tmp_path), local_options(**off), shard_id=0)
    assert stats.successes == len(urls)
    assert not set(POLICY_FILES) & set(s.stats.paths)


def test_an_origins_policy_files_and_first_image_share_one_connection(tmp_path) -> None:
    # Asked at once, the three files opened three connections: on a long tail (one image per
    # origin) that was three connections per image.
    config = ServerConfig(latency_s=(0.05, 0.05), max_lifetime_s=60)
    with ImageServer(images={"a.jpg": make_image(1, 40, 30)}, config=config) as server:
        stats = download_shard(rows([server.url("a.jpg")]), str(tmp_path), local_options(), shard_id=0)
        assert stats.successes == 1
        seen = server.stats
        assert seen.paths == [*POLICY_FILES, "/img/a.jpg"]
        assert seen.host().total_connections == 1
        assert seen.host().peak_in_flight == 1


def test_an_unreachable_origin_costs_one_policy_request(tmp_path) -> None:
    # A host that hangs up on every connection: robots.txt fails, and the origin's other files
    # are not tried (each would cost another failed connection, or another timeout).
    accepted = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listener.settimeout(0.2)
        port = listener.getsockname()[1]
        done = threading.Event()

        def hang_up() -> None:
            deadline = time.monotonic() + 30
            while not done.is_set() and time.monotonic() < deadline:
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                accepted.append(conn.recv(4096).split(b"\r\n", 1)[0])
                conn.close()

        thread = threading.Thread(target=hang_up, daemon=True)
        thread.start()
        try:
            urls = [f"http://127.0.0.1:{port}/img/{k}.jpg" for k in range(3)]
            stats = download_shard(rows(urls), str(tmp_path), local_options(), shard_id=0)
        finally:
            done.set()
            thread.join(5)
    assert stats.successes == 0
    # (aiohttp itself sends a GET again once when the server hangs up on it)
    assert accepted and set(accepted) == {b"GET /robots.txt HTTP/1.1"}
    (message,) = {message for _, message in _outcomes(tmp_path).values()}
    assert message.startswith(f"robots.txt of http://127.0.0.1:{port} unavailable (connection closed early")
    assert stats.opt_outs == {}


@pytest.mark.parametrize(
    ("text", "path", "blocked"),
    [
        # every group naming one of our tokens is judged on its own: one Disallow is enough
        ("User-agent: img2dataset\nDisallow: /\n\nUser-agent: dataset-assets\nAllow: /", "/a", "Disallow: /"),
        ("User-agent: mytoken\nDisallow: /x\n\nUser-agent: *\nDisallow: /", "/a", None),  # * yields
        ("User-agent: otherbot\nDisallow: /", "/a", None),
        ("User-Agent: *\nDisallow: *.jpg", "/photos/a.jpg", "Disallow: *.jpg"),  # ai.txt's form
        ("User-Agent: *\nDisallow: *.png", "/photos/a.jpg", None),
    ],
)
def test_groups_for_any_of_our_tokens_apply(text: str, path: str, blocked: str | None) -> None:
    tokens = ("mytoken", "dataset-assets", "img2dataset")
    assert parse_robots(text, tokens).blocking_rule(path) == blocked


@pytest.mark.parametrize(
    ("text", "path", "refusing"),
    [
        ("User-agent: *\nContent-Usage: train-ai=n", "/a", "train-ai=n"),
        ("User-agent: *\nContent-Usage: /img/ train-ai=n", "/a", None),  # another path
        ("User-agent: *\nContent-Usage: train-ai=n\nContent-Usage: /ok/ train-ai=y", "/ok/a", None),
        ("User-agent: *\nContent-Usage: /x/ train-ai=y\nContent-Usage: /x/ train-ai=n", "/x/a", "train-ai=n"),
        ("User-agent: *\nContent-Usage: /x/\ttrain-ai=n", "/x/a", "train-ai=n"),  # HTAB separates
        ("User-agent: otherbot\nContent-Usage: train-ai=n\n\nUser-agent: *\nAllow: /", "/a", None),
        ("Content-Usage: train-ai=n\n\nUser-agent: dataset-assets\nAllow: /", "/a", "train-ai=n"),
    ],
)
def test_content_usage_rules_use_the_longest_matching_path(
    text: str, path: str, refusing: str | None
) -> None:
    rules = parse_robots(text, ("dataset-assets", "img2dataset")).usage_rules(path)
    refusals = [r for rule in rules if (r := content_usage_refusal(rule.preference))]
    assert (refusals[0] if refusals else None) == refusing


@pytest.mark.parametrize(
    ("value", "refusing"),
    [
        ("train-ai=n", "train-ai=n"),
        ("train-ai=y, search=n", None),
        ("search=n", None),
        ("Train-AI=n", "train-ai=n"),  # a mis-cased refusal is still a refusal
        ('train-ai=n;reason="a, b", search=y', "train-ai=n"),
        ('train-ai="n"', None),  # not a token: unknown (draft-ietf-aipref-vocab §6.4)
        ("train-ai=y, train-ai=n", "train-ai=n"),  # the last of a repeated key wins
        ("train-ai=n, train-ai=y", None),
        ("all=n", "all=n"),  # a broader category refuses training too
        ("all=n, train-ai=y", None),  # unless training is explicitly allowed
        ("train-genai=n", "train-genai=n"),
        ("ai=n", "ai=n"),  # an earlier draft's label
        ("", None),
    ],
)
def test_content_usage_vocabulary(value: str, refusing: str | None) -> None:
    assert content_usage_refusal(value) == refusing


@pytest.mark.parametrize(
    ("value", "refusing"),
    [
        ("search=yes, ai-train=no", "ai-train=no"),
        ("ai-train=No", "ai-train=no"),
        ("search=yes, ai-train=yes", None),
        ("search=no, ai-input=no", None),  # not about training
    ],
)
def test_content_signal_values(value: str, refusing: str | None) -> None:
    assert content_signal_refusal(value) == refusing


@pytest.mark.parametrize(
    ("document", "path", "reserved"),
    [
        ('[{"location": "/", "tdm-reservation": 1}]', "/a.jpg", "/"),
        (
            '[{"location": "/", "tdm-reservation": 1}, {"location": "/img/", "tdm-reservation": 0}]',
            "/img/a",
            None,
        ),
        ('[{"location": "/img/", "tdm-reservation": 0}, {"location": "/", "tdm-reservation": 1}]', "/b", "/"),
        ('[{"location": "/b/*.jpg", "tdm-reservation": 1}]', "/b/x/y.jpg", "/b/*.jpg"),
        ('[{"location": "/b/*.jpg", "tdm-reservation": 1}]', "/b/y.png", None),
        ('[{"location": "/IMG/", "tdm-reservation": 1}]', "/img/a", None),  # case sensitive
        ('[{"location": "/", "tdm-reservation": "1"}]', "/a", "/"),
        ('[{"location": "/", "tdm-reservation": 7}]', "/a", None),  # a protocol error: unset
        ('{"location": "/", "tdm-reservation": 1}', "/a", "/"),  # a lone rule, not an array
        ("<html>not found</html>", "/a", None),  # a soft 404: no policy
        ("[1, null, {}]", "/a", None),
    ],
)
def test_tdmrep_most_specific_location_wins(document: str, path: str, reserved: str | None) -> None:
    rule = parse_tdmrep(document.encode()).reservation(path)
    assert (rule.location if rule else None) == reserved
