"""Scenarios both Kubernetes suites run: tests/e2e on kind and tests/cluster on the real node.

Each takes its cluster as an argument (a Kubectl, ScenarioCluster or RolloutCluster), so the
values, the steps and the assertions are written once.
"""
