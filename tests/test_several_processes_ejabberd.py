"""
Two gateway processes on one ejabberd (issue 14, part 1, the ejabberd module), with
real servers:

  alice@home.test ─ ejabberd 23.01 (127.0.14.2), own s2s off, mod_s2sgate with
      components: [s2s1.home.test, s2s2.home.test], both JIDs under one
      ejabberd_service listener with global_routes: false
      ─ XEP-0114 ─ twistd s2sgate #1 (127.0.14.3) and #2 (127.0.14.4), same dialback secret
      ─ s2s, dialback ─ Prosody peers peer1.test (127.0.14.5, bob), peer2.test (127.0.14.6, carol)

The same cases as tests/test_several_processes.py (Prosody's module), with the helpers
of tests/lab/several.py.  etc/ejabberd/mod_s2sgate.erl is compiled with erlc and loaded
with -pa, as docs/attach-ejabberd.md tells operators; ejabberd starts once for the
module.  Which component carries a remote domain is compared with the rendezvous hash
the Python side writes down (several.rendezvous).  Traffic: alice to bob and carol,
bob and carol to alice, three messages each every 20 ms; a case stops or kills a
gateway in the middle of it and counts, per direction, what was delivered, bounced and
lost (sent − delivered − bounced).  The figures are printed (pytest -s).

Without global_routes: false each gateway process gets the routes of both JIDs and the
hash is not followed (4 of the 16 unknown domains went to the other process in 23.01):
the module names such a listener in the log, shown with a second listener nothing uses.
"""

import signal
import time
from pathlib import Path

import pytest
import pytest_twisted

from tests.lab import several
from tests.lab.chat import login, message
from tests.lab.ejabberd import Ejabberd, build_module
from tests.lab.several import (
    carriedBy,
    rendezvous,
    sleep,
    startAgain,
    stopGracefully,
    stopLines,
    until,
)

pytestmark = pytest.mark.servers

DNS_IP, HOME_IP, GW1_IP, GW2_IP, PEER1_IP, PEER2_IP = (
    "127.0.14.1", "127.0.14.2", "127.0.14.3", "127.0.14.4", "127.0.14.5", "127.0.14.6")
COMPONENTS, SECRET = several.COMPONENTS, several.SECRET
IPS = {"dns": DNS_IP, "home": HOME_IP, "gw1": GW1_IP, "gw2": GW2_IP,
       "peer1": PEER1_IP, "peer2": PEER2_IP}
PEER_DOMAINS = ["peer1.test", "peer2.test"]
MODULE_SOURCE = Path(__file__).resolve().parents[1] / "etc" / "ejabberd" / "mod_s2sgate.erl"
PEERS = {"bob@peer1.test": ("bobpw", PEER1_IP), "carol@peer2.test": ("carolpw", PEER2_IP)}
# Domains without DNS records: each is tried, and bounced, by the process it is sent to.
NOWHERE = [f"far{i}.test" for i in range(16)]
# A second component listener as an operator might first write it: both JIDs under its
# hosts:, global_routes left at its default (true).  Nothing connects to it; the module
# names it in the log at start (the listener the gateways use has global_routes: false).
MISCONFIGURED_PORT = 5348
MISCONFIGURED = f"""  - port: {MISCONFIGURED_PORT}
    ip: "{HOME_IP}"
    module: ejabberd_service
    check_from: false
    hosts:
""" + "".join(f'      "{c}":\n        password: "{SECRET}"\n' for c in COMPONENTS)


def Traffic(case):
    """Messages both ways between alice and each peer user, three per direction every 20 ms."""
    return several.Traffic(case, ("alice@home.test", "alicepw", HOME_IP), PEERS,
                           interval=0.02, burst=3)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    base = tmp_path_factory.mktemp("several-ejabberd")
    beam = build_module(MODULE_SOURCE, base / "build")
    with several.federation(base, IPS, lambda: Ejabberd(
            base, "home", HOME_IP, host="home.test", users=[("alice@home.test", "alicepw")],
            s2s=False, components={c: SECRET for c in COMPONENTS},
            service_options={"global_routes": False}, extra_listen_yaml=MISCONFIGURED,
            modules={"mod_s2sgate": {"components": COMPONENTS}}, beams=[beam],
            dist_ip=HOME_IP, loglevel="info")) as lab:
        yield lab


def owner(domain):
    return rendezvous(COMPONENTS, domain)[0]


def otherThan(component):
    return next(c for c in COMPONENTS if c != component)


@pytest_twisted.ensureDeferred
async def test_the_peers_domains_are_carried_by_the_components_the_rendezvous_hash_picks(lab):
    gateways = lab["gateways"]
    assert {owner(d) for d in PEER_DOMAINS} == set(COMPONENTS)  # one domain each
    traffic = Traffic("spread")
    await traffic.start()
    await sleep(1)
    await traffic.stop()
    traffic.report("both processes up, 1 s of traffic")
    for domain in PEER_DOMAINS:
        assert domain in carriedBy(gateways[owner(domain)]), (domain, owner(domain))
        assert domain not in carriedBy(gateways[otherThan(owner(domain))]), domain
    assert all(lost == 0 and b == 0 for _, _, b, lost in traffic.counts().values())


@pytest_twisted.ensureDeferred
async def test_each_of_sixteen_domains_is_tried_by_the_component_the_rendezvous_hash_picks(lab):
    gateways = lab["gateways"]
    alice = await login("alice@home.test", "alicepw", HOME_IP)
    try:
        for domain in NOWHERE:
            alice.send(message(f"user@{domain}", f"nowhere-{domain}", "anyone?"))
        for domain in NOWHERE:
            bounce = await alice.wait_for(
                lambda e, d=domain: e.getAttribute("id") == f"nowhere-{d}", timeout=20)
            assert bounce.getAttribute("type") == "error"
    finally:
        await alice.disconnect()
    tried = {jid: {f["remote"] for f in gw.api("/api/failures")["failures"]} & set(NOWHERE)
             for jid, gw in gateways.items()}
    print(f"\n{'domain':<12} {'hash picks':<16} tried by")
    for domain in NOWHERE:
        print(f"{domain:<12} {owner(domain):<16} "
              f"{' '.join(jid for jid, domains in tried.items() if domain in domains)}")
    assert tried == {jid: {d for d in NOWHERE if owner(d) == jid} for jid in COMPONENTS}
    assert all(tried.values())  # both components got some


def test_the_module_names_a_listener_that_would_give_each_gateway_every_components_route(lab):
    log = (lab["home"].logs / "ejabberd.log").read_text(errors="replace")
    lines = [line for line in log.splitlines()
             if "mod_s2sgate (home.test): the ejabberd_service listener on port" in line]
    assert len(lines) == 1, lines
    [line] = lines
    assert "[error]" in line, line
    assert f"on port {MISCONFIGURED_PORT} lists the components {', '.join(COMPONENTS)} " \
           "with global_routes: true" in line, line
    assert "Set global_routes: false on that listener" in line, line


def movedWithin(traffic, domains, since, survivor, gateways):
    """How long after C{since} the first message to each domain sent after it arrived;
    the survivor carries each."""
    delays = {}
    for domain in domains:
        first = traffic.firstDeliveredAfter(f"out:{domain}", since)
        assert first is not None, domain
        delays[domain] = first - since
        print(f"  out:{domain}: first message sent after the signal delivered "
              f"{delays[domain]:.3f} s after it")
        assert domain in carriedBy(gateways[survivor])
    return delays


@pytest.mark.parametrize("victim", COMPONENTS)
@pytest_twisted.ensureDeferred
async def test_a_sigterm_under_traffic_moves_its_domains_within_1s_bouncing_and_losing_nothing(
        lab, victim):
    gateways = lab["gateways"]
    survivor = otherThan(victim)
    moved = [d for d in PEER_DOMAINS if owner(d) == victim]
    traffic = Traffic(f"term-{victim}")
    await traffic.start()
    await sleep(1.5)
    signalledAt = time.monotonic()
    try:
        await stopGracefully(gateways[victim])
        stoppedIn = time.monotonic() - signalledAt
        await sleep(1.5)
        await traffic.stop()
        traffic.report(f"SIGTERM of {victim} (outbound to {', '.join(moved)}), stopped in "
                       f"{stoppedIn:.2f} s, all traffic")
        delays = movedWithin(traffic, moved, signalledAt, survivor, gateways)
        assert all(delay < 1.0 for delay in delays.values()), delays
        counts = traffic.counts()
        assert all(s > 100 for s, _, _, _ in counts.values()), counts
        assert traffic.bounced == {}, counts
        assert all(lost == 0 for _, _, _, lost in counts.values()), counts
    finally:
        await startAgain(gateways[victim])


@pytest_twisted.ensureDeferred
async def test_a_rolling_restart_under_traffic_bounces_and_loses_nothing(lab):
    gateways = lab["gateways"]
    traffic = Traffic("rolling")
    await traffic.start()
    await sleep(1.5)
    for jid in COMPONENTS:
        await stopGracefully(gateways[jid])
        await sleep(1)
        await startAgain(gateways[jid])
        await sleep(1.5)
    await traffic.stop()
    traffic.report("rolling restart (SIGTERM s2s1, start it, then s2s2), 3 messages/20 ms "
                   "per direction")
    for jid in COMPONENTS:
        print(f"  {jid}: {stopLines(gateways[jid])[-1].split(' [')[-1]}")
    counts = traffic.counts()
    assert all(s > 100 for s, _, _, _ in counts.values()), counts
    assert traffic.bounced == {}, counts
    assert all(lost == 0 for _, _, _, lost in counts.values()), counts
    for domain in PEER_DOMAINS:  # back where the hash puts them
        assert domain in carriedBy(gateways[owner(domain)]), domain


@pytest.mark.parametrize("victim", COMPONENTS)
@pytest_twisted.ensureDeferred
async def test_a_sigkill_loses_only_what_was_in_flight_and_its_domains_move_within_1s(lab, victim):
    gateways = lab["gateways"]
    survivor = otherThan(victim)
    moved = [d for d in PEER_DOMAINS if owner(d) == victim]
    traffic = Traffic(f"kill-{victim}")
    await traffic.start()
    await sleep(1.5)
    inbound = carriedBy(gateways[victim], "in")
    killedAt = time.monotonic()
    gateways[victim].signal(signal.SIGKILL)
    try:
        await until(gateways[victim].exited, "the killed process gone")
        await sleep(2)
        await traffic.stop()
        traffic.report(f"SIGKILL of {victim} (outbound to {', '.join(moved)}, inbound "
                       f"from {', '.join(sorted(inbound)) or 'none'}), all traffic")
        traffic.report("  of which sent within 1 s around the kill",
                       since=killedAt - 0.5, until=killedAt + 0.5)
        delays = movedWithin(traffic, moved, killedAt, survivor, gateways)
        assert all(delay < 1.0 for delay in delays.values()), delays
        counts = traffic.counts()
        around = traffic.counts(since=killedAt - 0.5, until=killedAt + 0.5)
        none = (0, 0, 0, 0)
        for direction, (_, _, b, lost) in counts.items():
            # Lost or bounced: only messages sent around the kill...
            assert b + lost == sum(around.get(direction, none)[2:]), (direction, counts, around)
            # ... and only on what the killed process carried.
            carried = (direction[len("out:"):] in moved if direction.startswith("out:")
                       else direction[len("in:"):] in inbound)
            if not carried:
                assert b + lost == 0, (direction, counts)
    finally:
        await startAgain(gateways[victim])
