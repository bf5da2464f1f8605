"""The ``url_blocklist``: rows whose owners asked to be left out, refused before any request.

A removal list is a file, or a folder of files (local or any fsspec URL), with one entry a line;
blank lines and lines starting with ``#`` are skipped, as is a `` # comment`` after an entry:

- a URL (``scheme://...``): matched in normal form (:mod:`.url_form`), so
  ``HTTP://Example.COM/a.jpg#x`` and ``http://example.com/a.jpg`` are one entry;
- a sha256 hex digest (64 hex digits) of a URL: matched against the digest of the row's URL as
  given (the input's text, byte for byte in UTF-8) and of its normal form, so a list published
  as digests of either spelling works;
- a domain (a bare host name, ``*.`` or a leading dot allowed): the host and every subdomain of
  it (``example.com`` covers ``img.example.com``), the safer reading for removal requests. An IP
  address matches only itself. A port is not part of a domain entry.

A line that is none of these is an error naming the file and line: a removal entry that is
silently ignored is worse than a run that does not start. The whole list is loaded into sets
once per run (millions of entries are fine); each row then costs a few set look-ups.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from dataset_assets.engine.url_form import host_of, normalize_url
from dataset_assets.io.sources import InputError
from dataset_assets.io.storage import StorageOptions, iter_text_lines, text_files

SIGNAL = "blocklist"  # the key of consent.SIGNALS the refused rows count under
_DIGEST = re.compile(r"[0-9A-Fa-f]{64}")
_DOMAIN = re.compile(r"\[[0-9a-f:.]+\]|[^\s/?#@:\[\]<>\"\\^`{|}%]+")
_IP_HOST = re.compile(r"[0-9.]+|\[.*\]")
_TRAILING_COMMENT = re.compile(r"\s+#.*$")


class BlocklistError(InputError):
    """The url_blocklist cannot be read, or holds a line that is not an entry."""


@dataclass
class Blocklist:
    """Normal-form URLs, lower-case URL sha256 digests and lower-case domains."""

    urls: set[str] = field(default_factory=set)
    digests: set[str] = field(default_factory=set)
    domains: set[str] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self.urls) + len(self.digests) + len(self.domains)

    def add_line(self, line: str, where: str) -> None:
        """Add one line of a list (``where``: "file:line", for the error message)."""
        entry = _TRAILING_COMMENT.sub("", line).strip()
        if not entry or entry.startswith("#"):
            return
        if _DIGEST.fullmatch(entry):
            self.digests.add(entry.lower())
        elif "://" in entry:
            normal = normalize_url(entry)
            if normal is None:
                raise BlocklistError(f"url_blocklist {where}: not an http(s) URL: {entry[:200]!r}")
            self.urls.add(normal)
        else:
            domain = entry.lower().removeprefix("*.").strip(".")
            if not domain or not _DOMAIN.fullmatch(domain):
                raise BlocklistError(
                    f"url_blocklist {where}: not a URL, URL sha256 or domain: {entry[:200]!r}"
                )
            self.domains.add(domain)

    def refusal(self, url: str | None, fetch_url: str | None = None) -> str | None:
        """Why this row is blocked (the message its row records), or None.

        ``url`` is the row's URL as given; ``fetch_url`` its normal form if already known.
        """
        normal = normalize_url(fetch_url if fetch_url is not None else url)
        if normal is not None and normal in self.urls:
            return "blocked by url_blocklist (URL)"
        if self.digests:
            for text in (url, normal):
                if text is not None and hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest() in (
                    self.digests
                ):
                    return "blocked by url_blocklist (URL sha256)"
        if self.domains and normal is not None:
            domain = self.matching_domain(host_of(normal))
            if domain is not None:
                return f"blocked by url_blocklist (domain {domain})"
        return None

    def matching_domain(self, host: str) -> str | None:
        """The entry covering ``host`` (itself or a parent domain); an IP only matches itself."""
        if _IP_HOST.fullmatch(host):
            return host if host in self.domains else None
        labels = host.split(".")
        for start in range(len(labels)):
            candidate = ".".join(labels[start:])
            if candidate in self.domains:
                return candidate
        return None


def load_blocklist(url: str, storage_options: StorageOptions | None = None) -> Blocklist:
    """Read every entry of the list at ``url`` (a file or a folder of files)."""
    blocklist = Blocklist()
    current = url
    try:
        for current in text_files(url, storage_options):
            for number, line in enumerate(iter_text_lines(current, storage_options), start=1):
                blocklist.add_line(line, f"{current}:{number}")
    except FileNotFoundError:
        raise BlocklistError(f"url_blocklist {url} not found") from None
    except UnicodeDecodeError as error:
        raise BlocklistError(f"url_blocklist {current} is not UTF-8 text: {error.reason}") from None
    except OSError as error:
        raise BlocklistError(f"url_blocklist {current} cannot be read: {error}") from None
    return blocklist
