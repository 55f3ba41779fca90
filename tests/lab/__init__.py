"""Test lab: real Prosody / ejabberd / dnsmasq processes on loopback addresses.

See /work/shared/TESTLAB.md for the facts these fixtures are built on.
"""
