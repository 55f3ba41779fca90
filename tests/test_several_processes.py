"""
Two gateway processes, one federation (issue 14, part 1), with real servers:

  alice@home.test ─ Prosody 0.12 (127.0.10.2), mod_s2sgate with
      s2sgate_components = { s2s1.home.test, s2s2.home.test }
      ─ XEP-0114 ─ twistd s2sgate #1 (127.0.10.3) and #2 (127.0.10.4), same dialback secret
      ─ s2s, dialback ─ Prosody peers peer1.test (127.0.10.5, bob), peer2.test (127.0.10.6, carol)

Inbound, _xmpp-server._tcp.home.test has both gateways as SRV targets.  Traffic flows
all the time (alice to bob and carol, bob and carol to alice, three messages each
every 20 ms); each case stops or kills a gateway in the middle of it and counts, per
direction, what was delivered, bounced and lost (sent − delivered − bounced).  The
figures are printed (pytest -s) and asserted: a rolling restart (SIGTERM, start, then
the other) bounces and loses nothing; a SIGKILL loses only what the killed process had
in flight, and its remote domains are carried by the other process within 1 s.
"""

import signal
import time

import pytest
import pytest_twisted
from twisted.internet import threads

from s2sgate import cli
from tests.lab import several
from tests.lab.prosody import Prosody
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
    "127.0.10.1", "127.0.10.2", "127.0.10.3", "127.0.10.4", "127.0.10.5", "127.0.10.6")
COMPONENTS, SECRET = several.COMPONENTS, several.SECRET
IPS = {"dns": DNS_IP, "home": HOME_IP, "gw1": GW1_IP, "gw2": GW2_IP,
       "peer1": PEER1_IP, "peer2": PEER2_IP}
INTERVAL = 0.02
BURST = 3           # messages per direction per tick: 150/s each way, 600/s in all


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    base = tmp_path_factory.mktemp("several")
    with several.federation(base, IPS, lambda: Prosody(
            base, "home", HOME_IP, hosts=["home.test"], users=[("alice@home.test", "alicepw")],
            components={c: SECRET for c in COMPONENTS}, route_to=COMPONENTS)) as lab:
        yield lab


PEERS = {"bob@peer1.test": ("bobpw", PEER1_IP), "carol@peer2.test": ("carolpw", PEER2_IP)}


def Traffic(case):
    """Messages both ways between alice and each peer user, BURST per direction every 20 ms."""
    return several.Traffic(case, ("alice@home.test", "alicepw", HOME_IP), PEERS,
                           interval=INTERVAL, burst=BURST)


@pytest_twisted.ensureDeferred
async def test_the_routing_module_spreads_remote_domains_by_rendezvous_hash(lab):
    gateways = lab["gateways"]
    traffic = Traffic("spread")
    await traffic.start()
    await sleep(1)
    await traffic.stop()
    traffic.report("both processes up, 1 s of traffic")
    for domain in ("peer1.test", "peer2.test"):
        owner = rendezvous(COMPONENTS, domain)[0]
        assert domain in carriedBy(gateways[owner]), (domain, owner)
        other = next(c for c in COMPONENTS if c != owner)
        assert domain not in carriedBy(gateways[other]), (domain, other)
    assert all(lost == 0 and b == 0 for _, _, b, lost in traffic.counts().values())


@pytest_twisted.ensureDeferred
async def test_sessions_all_lists_the_links_of_both_processes(lab, capsys):
    gateways = lab["gateways"]
    traffic = Traffic("all")
    await traffic.start()
    await sleep(0.5)
    capsys.readouterr()
    code = await threads.deferToThread(
        cli.main, ["sessions", "--all", "--config", str(gateways[COMPONENTS[0]].configfile)])
    out = capsys.readouterr().out
    await traffic.stop()
    assert code == 0, out
    print(out)
    rows = {tuple(line.split()[:4]) for line in out.splitlines() if line.startswith("s2s")
            and " at " not in line}
    for domain in ("peer1.test", "peer2.test"):
        owner = rendezvous(COMPONENTS, domain)[0]
        assert (owner, "out", "home.test", domain) in rows, rows
    assert {jid for jid, _, _, _ in rows} <= set(COMPONENTS)


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
    traffic.report(f"rolling restart (SIGTERM s2s1, start it, then s2s2), {BURST} messages/20 ms "
                   "per direction")
    for jid in COMPONENTS:
        print(f"  {jid}: {stopLines(gateways[jid])[-1].split(' [')[-1]}")
    counts = traffic.counts()
    assert all(s > 100 for s, _, _, _ in counts.values()), counts
    assert traffic.bounced == {}, counts
    assert all(lost == 0 for _, _, _, lost in counts.values()), counts


@pytest.mark.parametrize("victim", COMPONENTS)
@pytest_twisted.ensureDeferred
async def test_a_sigkill_loses_only_what_was_in_flight_and_its_domains_move_within_1s(lab, victim):
    gateways = lab["gateways"]
    survivor = next(c for c in COMPONENTS if c != victim)
    moved = [d for d in ("peer1.test", "peer2.test") if rendezvous(COMPONENTS, d)[0] == victim]
    traffic = Traffic(f"kill-{victim}")
    await traffic.start()
    await sleep(1.5)
    inbound = carriedBy(gateways[victim], "in")
    killedAt = time.monotonic()
    gateways[victim].signal(signal.SIGKILL)
    await until(gateways[victim].exited, "the killed process gone")
    await sleep(2)
    await traffic.stop()
    traffic.report(f"SIGKILL of {victim} (outbound to {', '.join(moved) or 'none'}, inbound "
                   f"from {', '.join(sorted(inbound)) or 'none'}), all traffic")
    traffic.report("  of which sent within 1 s around the kill",
                   since=killedAt - 0.5, until=killedAt + 0.5)
    try:
        for domain in moved:
            first = traffic.firstDeliveredAfter(f"out:{domain}", killedAt)
            assert first is not None, domain
            print(f"  out:{domain}: first message sent after the kill delivered "
                  f"{first - killedAt:.3f} s after it")
            assert first - killedAt < 1.0
            assert domain in carriedBy(gateways[survivor])
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
