"""Each part provides the interface it is used through (zope.interface.verify)."""

import pytest
from twisted.internet import task
from zope.interface.verify import verifyClass, verifyObject

from s2sgate import features
from s2sgate.features.dialback import DialbackVerify
from s2sgate.gateway.component import ComponentLink
from s2sgate.gateway.router import NoFederation
from s2sgate.gateway.service import TimedResolver
from s2sgate.interfaces import (
    IComponentLink,
    IConnector,
    INegotiationObserver,
    IOffer,
    IOutbound,
    IOutcome,
    IResolver,
    ISessionTable,
    IStep,
)
from s2sgate.net.connector import Connector
from s2sgate.net.resolver import S2SResolver
from s2sgate.s2s.negotiation import Authenticated, Failed, Finished, NullObserver, Restart, Skip
from s2sgate.s2s.outbound import OutboundPool
from s2sgate.s2s.sessions import SessionTable
from tests.s2sfakes import makeGateway


@pytest.mark.parametrize("step", features.STEPS + features.VERIFY_STEPS + (DialbackVerify,))
def test_every_registered_step_is_an_IStep(step):
    assert verifyClass(IStep, step)


@pytest.mark.parametrize("offer", features.OFFERS)
def test_every_registered_offer_is_an_IOffer(offer):
    assert verifyClass(IOffer, offer)


@pytest.mark.parametrize("outcome", [Skip(), Restart(), Authenticated("dialback"), Finished(),
                                     Failed("remote-server-not-found", "no")])
def test_every_outcome_is_an_IOutcome(outcome):
    assert verifyObject(IOutcome, outcome)


def test_the_seams():
    gw = makeGateway()
    assert verifyObject(INegotiationObserver, NullObserver())
    assert verifyObject(ISessionTable, SessionTable())
    assert verifyClass(IResolver, S2SResolver)
    assert verifyClass(IResolver, TimedResolver)
    assert verifyObject(IConnector, Connector(task.Clock(), None))
    assert verifyObject(IOutbound, OutboundPool(gw.clock, gw.current, None, gw.sessions, None, None))
    assert verifyObject(IOutbound, NoFederation(None, None))
    assert verifyClass(IComponentLink, ComponentLink)
