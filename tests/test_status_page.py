"""
The status page at a glance, in a real browser: headless Chromium loads the page
from the real admin Site (a fake gateway with canned links, certificates and
failures, on 127.0.9.10) at a desktop and a phone width; the test reads the DOM
Chromium dumps.  It fails when a row's text is missing, when a row or cell does
not fit (the page's own layout check writes what overflows into
<body data-overflow>), or when a state is told by an emoji or colour alone.
"""

import datetime as _dt
import os
import re

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread

from s2sgate.auth.tls import LocalCertificate
from s2sgate.ops.admin import AdminSite
from s2sgate.ops.admin.api import certificateReport, expiryLevel
from tests.lab import browser
from tests.lab.certs import TestCA
from tests.test_admin import FAILURE, FakeGateway

PAGE_IP = "127.0.9.10"
DAY = 86400
LONG = "a-rather-long-subdomain-name-for-the-phone-layout.conference.example.test"


def sessions(now):
    return [
        {"direction": "out", "local": "home.test", "remote": "secure.test",
         # Two of our domains share this stream (XEP-0220 multiplexing).
         "pairs": [["conference.home.test", "secure.test"], ["home.test", "secure.test"]],
         "stream_id": "s1", "peer": "192.0.2.7:5269",
         "tls": {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"}, "direct_tls": False,
         "certificate": {"status": "valid", "reason": "certificate is valid for secure.test",
                         "names": "DNS:secure.test", "not_after": now + 60 * DAY + 100},
         "auth": "sasl-external", "since": now - 3 * 3600, "stanzas_in": 0, "stanzas_out": 4711,
         "bytes_in": 1200, "bytes_out": 3_400_000, "queue": 0, "sm": True, "unacked": 3},
        {"direction": "in", "local": "home.test", "remote": "plain.test",
         "pairs": [["plain.test", "home.test"]], "stream_id": "s2", "peer": "192.0.2.8:40000",
         "tls": None, "direct_tls": False, "certificate": None, "auth": "dialback",
         "since": now - 50, "stanzas_in": 7, "stanzas_out": 0, "bytes_in": 900,
         "bytes_out": 300, "queue": 0},
        {"direction": "in", "local": "home.test", "remote": LONG,
         "pairs": [[LONG, "home.test"], [LONG, "conference.home.test"]], "stream_id": "s3",
         "peer": "[2001:db8:1234:5678:9abc:def0:1234:5678]:52344",
         "tls": {"version": "TLSv1.2", "cipher": "ECDHE-ECDSA-AES256-GCM-SHA384"},
         "direct_tls": True,
         "certificate": {"status": "valid", "reason": "certificate is valid", "names":
                         f"DNS:{LONG}, SRV:_xmpp-server.{LONG}", "not_after": now + 2 * DAY,
                         "dane": "dane-ee"},
         "auth": "dialback-without-dialback", "since": now - 9 * DAY, "stanzas_in": 12,
         "stanzas_out": 0, "bytes_in": 5000, "bytes_out": 700, "queue": 0},
        {"direction": "out", "local": "home.test", "remote": "soon.test",
         "pairs": [["home.test", "soon.test"]], "stream_id": "s4", "peer": "192.0.2.9:5269",
         "tls": {"version": "TLSv1.3", "cipher": "TLS_AES_128_GCM_SHA256"}, "direct_tls": False,
         "certificate": {"status": "name-mismatch", "reason": "certificate names other.test",
                         "names": "DNS:other.test", "not_after": now + 10 * DAY},
         "auth": "dialback", "since": now - 70, "stanzas_in": 0, "stanzas_out": 2,
         "bytes_in": 100, "bytes_out": 200, "queue": 5},
    ]


@pytest.fixture(scope="module")
def ourCerts(tmp_path_factory):
    ca = TestCA(tmp_path_factory.mktemp("page-certs"))
    good = LocalCertificate.load(ca.issue("home.test", dns=["home.test"], days=90)[0],
                                 "s2s.certfile")
    soon = LocalCertificate.load(ca.issue("conference.home.test",
                                          dns=["conference.home.test"], days=10)[0],
                                 "s2s.domain_certfile[0].certfile")
    return [("home.test", good), ("conference.home.test", soon), ("muc.home.test", good)]


class PageGateway(FakeGateway):
    def __init__(self, ourCerts):
        FakeGateway.__init__(self)
        self.clock.advance(_dt.datetime.now(_dt.timezone.utc).timestamp() - self.clock.seconds())
        self._ours = ourCerts

    def sessions(self):
        return sessions(self.clock.seconds())

    def ourCertificates(self):
        return self._ours


@pytest.fixture(scope="module")
def pageURL(ourCerts):
    port = reactor.listenTCP(0, AdminSite(PageGateway(ourCerts)), interface=PAGE_IP)
    yield f"http://{PAGE_IP}:{port.getHost().port}/"
    pytest_twisted.blockon(port.stopListening())


async def render(url, width, height):
    """The page's DOM after its first redraw, in a width x height viewport."""
    shot = os.environ.get("S2SGATE_SCREENSHOT")   # e.g. /tmp/page.png to look at it
    if shot:
        base, ext = os.path.splitext(os.path.abspath(shot))
        shot = f"{base}-{width}{ext or '.png'}"
    return await deferToThread(browser.render, url, width, height, mobile=width < 700,
                               screenshot=shot)


def text(html):
    """The visible text of an HTML fragment: blocks and cells apart, whitespace squeezed."""
    html = re.sub(r"</?(td|th|tr|div|li|ol|p|h\d)\b[^>]*>", " ", html)
    return " ".join(re.sub(r"<[^>]+>", "", html).split()).replace("&amp;", "&")


def rows(dom, kind):
    return [text(m) for m in re.findall(
        rf'<tr [^>]*data-row="{kind}"[^>]*>(.*?)</tr>', dom, re.S)]


def bodyAttribute(dom, name):
    m = re.search(rf'<body[^>]* {name}="([^"]*)"', dom)
    assert m, dom[:3000]
    return m.group(1)


WIDTHS = {"desktop": (1400, 900), "phone": (390, 844)}


@pytest.fixture(scope="module", params=sorted(WIDTHS))
def dom(request, pageURL):
    browser.chromium()
    width, height = WIDTHS[request.param]
    page = pytest_twisted.blockon(defer.ensureDeferred(render(pageURL, width, height)))
    assert bodyAttribute(page, "data-rendered") == "1"
    assert bodyAttribute(page, "data-width") == str(width)
    return page


def test_every_link_row_shows_direction_pairs_tls_certificate_auth_age_and_counters(dom):
    links = rows(dom, "link")
    assert len(links) == 4, links
    secure = next(r for r in links if "secure.test" in r)
    for part in ("out", "home.test → secure.test", "conference.home.test → secure.test",
                 "TLSv1.3 STARTTLS", "valid, 60 d left",
                 "DNS:secure.test", "sasl-external", "by certificate",
                 "stream management, 3 unacked", "3 h 0 min", "0 / 4711", "1.2 KiB / 3.2 MiB"):
        assert part in secure, (part, secure)
    plain = next(r for r in links if "plain.test" in r)
    for part in ("in", "plain.test → home.test", "plain, not encrypted", "none", "dialback",
                 "by dialback", "50 s", "7 / 0"):
        assert part in plain, (part, plain)
    long = next(r for r in links if LONG in r)
    for part in (f"{LONG} → home.test", f"{LONG} → conference.home.test", "TLSv1.2 direct",
                 "valid, 2 d left", "dialback-without-dialback", "DANE dane-ee", "9 d 0 h"):
        assert part in long, (part, long)
    soon = next(r for r in links if "soon.test" in r)
    assert "name-mismatch, 10 d left" in soon and "certificate names other.test" in soon


def test_our_certificates_show_names_domains_and_days_left_with_a_level(dom):
    ours = rows(dom, "our-certificate")
    assert len(ours) == 2, ours
    # One file presented for two domains, and it does not name the second one.
    good = next(r for r in ours if "home.test, muc.home.test" in r)
    assert good.startswith("does not name muc.home.test ") and "DNS:home.test" in good
    assert re.search(r"\b(89|90) d left", good), good
    soon = next(r for r in ours if "conference.home.test" in r.split(" DNS:")[0])
    assert soon.startswith("renew soon") and re.search(r"\b(9|10) d left", soon), soon


def test_peer_certificates_on_live_links_have_levels(dom):
    peers = {r.split(" Names ")[0]: r for r in rows(dom, "peer-certificate")}
    joined = " || ".join(rows(dom, "peer-certificate"))
    assert len(rows(dom, "peer-certificate")) == 3, joined
    assert re.search(r"ok secure\.test on our link to it DNS:secure\.test \S+ 60 d left", joined)
    assert re.search(rf"problem {re.escape(LONG)} on its link to us .* 2 d left", joined)
    assert re.search(r"name-mismatch soon\.test on our link to it DNS:other\.test", joined)
    assert peers


def test_failed_attempts_show_their_steps(dom):
    failures = re.findall(r'<div class="failure"[^>]*data-row="failure"[^>]*>(.*?)</ol>', dom, re.S)
    assert len(failures) == 1
    t = text(failures[0])
    assert "home.test → unreach.test" in t and FAILURE["condition"] in t
    assert "failed connect 192.0.2.9:5269 (unreach.test): connection refused" in t


def test_nothing_overflows_at_this_width(dom):
    assert bodyAttribute(dom, "data-overflow") == ""


def test_states_are_words_and_shapes_not_emoji(dom):
    assert not re.search("[\U0001F000-\U0001FAFF\u2600-\u27BF\u2B00-\u2BFF]", dom)
    assert 'class="mark ok"' in dom and 'class="mark bad"' in dom and 'class="mark warn"' in dom


@pytest_twisted.ensureDeferred
async def test_layout_check_reports_a_cell_that_does_not_fit(ourCerts):
    """The check itself: a counter 400 digits wide (counters never wrap) at desktop width."""
    browser.chromium()

    class Wide(PageGateway):
        def sessions(self):
            return [dict(sessions(self.clock.seconds())[0], queue="9" * 400)]

    port = reactor.listenTCP(0, AdminSite(Wide(ourCerts)), interface=PAGE_IP)
    try:
        page = await render(f"http://{PAGE_IP}:{port.getHost().port}/", 1400, 900)
    finally:
        await port.stopListening()
    overflow = bodyAttribute(page, "data-overflow")
    assert "Queue '999" in overflow, overflow


def test_expiry_levels():
    assert [expiryLevel(d) for d in (60, 14, 13, 3, 2, -1, None)] == \
        ["ok", "ok", "warn", "warn", "error", "error", "error"]
    assert expiryLevel(60, "expired") == "error"


def test_certificate_report_groups_one_file_presented_for_several_domains(ourCerts):
    report = certificateReport(ourCerts, [], _dt.datetime.now(_dt.timezone.utc).timestamp())
    [good, soon] = report["ours"]
    assert good["domains"] == ["home.test", "muc.home.test"]
    assert good["uncovered"] == ["muc.home.test"] and good["level"] == "error"
    assert soon["level"] == "warn" and soon["days_left"] in (9, 10)
