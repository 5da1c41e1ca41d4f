"""Link emulation on the path between hosts: rate and queue by a kernel qdisc (HTB
with a pfifo) on the forwarding hop, per-packet serialization and propagation delay
by a userspace element at the receiver's ingress (the kernel here has no netem)."""
