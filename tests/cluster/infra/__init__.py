"""The local cluster the tests in tests/cluster run on: builds, the network, the control plane,
the real node, the registry, and the helpers its tests share (tests/cluster/README.md)."""
