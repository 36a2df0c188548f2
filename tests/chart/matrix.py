"""The values matrix every chart test renders: each entry switches on one family of features."""

from __future__ import annotations

from typing import Any

MULTIPLE_GROUPS: dict[str, Any] = {
    "celery": {"visibilityTimeoutSeconds": 7200, "brokerKeyPrefix": "billing:"},
    "workers": {
        # CPU-bound reports: two full CPUs, one process each.
        "cpu": {
            "queues": ["cpu", "reports"],
            "resources": {
                "requests": {"cpu": "2", "memory": "1Gi"},
                "limits": {"cpu": "2", "memory": "2Gi"},
            },
            "terminationGracePeriodSeconds": 900,
            "autoscaling": {"maxReplicas": 4, "keda": {"cooldownPeriodSeconds": 900}},
            "nodeSelector": {"workload": "cpu"},
            "tolerations": [
                {"key": "workload", "operator": "Equal", "value": "cpu", "effect": "NoSchedule"}
            ],
        },
        # I/O-bound calls: half a CPU (rounded up to 1), four processes per CPU, scale to zero.
        "io": {
            "queues": ["io"],
            "concurrencyPerCpu": 4,
            "resources": {
                "requests": {"cpu": "250m", "memory": "256Mi"},
                "limits": {"cpu": "500m", "memory": "512Mi"},
            },
            "autoscaling": {
                "minReplicas": 0,
                "maxReplicas": 30,
                "keda": {
                    "targetTasksPerProcess": 2,
                    "pollingIntervalSeconds": 5,
                    "oldestAge": {"enabled": True, "targetSeconds": 30},
                },
            },
            "topologySpreadConstraints": [
                {
                    "maxSkew": 1,
                    "topologyKey": "topology.kubernetes.io/zone",
                    "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": {"matchLabels": {"celeriac.io/worker-group": "io"}},
                }
            ],
        },
        # A fixed pool (no autoscaler) with 1.5 CPUs: Kubernetes rounds the limit up to 2.
        "fixed": {
            "queues": ["fixed"],
            "resources": {"limits": {"cpu": 1.5, "memory": "1Gi"}},
            "autoscaling": {"engine": "none", "replicas": 2},
            "metrics": {"enabled": False},
            "pdb": {"maxUnavailable": "50%"},
        },
    },
    "beat": {
        "schedule": {
            "report": {"task": "celeriac.demo.add", "every": 30, "args": [1, 2]},
            "nightly": {
                "task": "celeriac.demo.sleep",
                "cron": "0 3 * * *",
                "kwargs": {"seconds": 1},
                "queue": "io",
                "priority": 3,
                "expires": 600,
            },
        }
    },
}

MATRIX: dict[str, dict[str, Any]] = {
    "defaults": {},
    "external-redis": {
        "redis": {"enabled": False},
        "externalRedis": {
            "url": "rediss://redis.example.com:6380/0",
            "existingSecret": "broker",
            "existingSecretKey": "password",
        },
    },
    "external-redis-no-password": {
        "redis": {"enabled": False},
        "externalRedis": {"url": "redis://redis.infra.svc:6379/2"},
    },
    "persistence-off": {"redis": {"persistence": {"enabled": False}}},
    "sentinel": {"redis": {"sentinel": {"enabled": True}}},
    "scale-to-zero": {"workers": {"default": {"autoscaling": {"minReplicas": 0}}}},
    "hpa-engine": {"workers": {"default": {"autoscaling": {"engine": "hpa", "minReplicas": 2}}}},
    "none-engine": {"workers": {"default": {"autoscaling": {"engine": "none", "replicas": 3}}}},
    "api-ingress-hpa": {
        "api": {
            "ingress": {
                "enabled": True,
                "className": "nginx",
                "tls": [{"secretName": "celeriac-tls", "hosts": ["celeriac.example.com"]}],
            },
            "autoscaling": {"enabled": True},
        },
        "networkPolicy": {
            "api": {"from": [{"namespaceSelector": {"matchLabels": {"ingress": "true"}}}]}
        },
    },
    "servicemonitor-rule-dashboard": {
        "monitoring": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
            "prometheusRule": {"enabled": True},
            "grafanaDashboard": {"enabled": True},
        }
    },
    "podmonitor": {"monitoring": {"podMonitor": {"enabled": True}}},
    "multiple-groups": MULTIPLE_GROUPS,
    "networkpolicy-off": {"networkPolicy": {"enabled": False}},
    "existing-secrets-digest": {
        "image": {"digest": "sha256:" + "ab" * 32},
        "imagePullSecrets": [{"name": "regcred"}],
        "serviceAccount": {"create": False, "name": "tasks"},
        "redis": {"auth": {"existingSecret": "redis-auth", "existingSecretKey": "pw"}},
        "api": {"auth": {"existingSecret": "api-auth", "existingSecretKey": "list"}},
        "extraEnv": [{"name": "TZ", "value": "UTC"}],
        "commonLabels": {"team": "data"},
    },
    "beat-api-tests-off": {
        "beat": {"enabled": False},
        "api": {"enabled": False},
        "tests": {"enabled": False},
    },
}
