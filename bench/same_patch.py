"""
A "before" gateway that changes nothing (``--before-patch same_patch``): an A/A run.  Two
identical gateways in one run show the bench's own bias between its two slots (the order of
the runs, the addresses), against which a real before → now ratio is read.
"""
