"""The emulated network of a run: Mininet hosts, the links between them (HTB or the
userspace element, trace playing, impairments), competing traffic, packet capture and
the teardown of all of it."""
