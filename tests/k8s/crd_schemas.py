"""JSON Schemas for the custom resources we render or ship, written from reading their API types.

Not the vendors' CRDs (not vendored here): hand-derived from ray-project/kuberay's
ray-operator/apis/ray/v1 (rayjob_types.go, raycluster_types.go), Karpenter's karpenter.sh/v1
NodePool and Config Connector's ContainerNodePool docs. They are closed (additionalProperties:
false) at every level we set, so a misspelt field fails. Pod templates inside a RayJob are
validated separately against the real Kubernetes schema (PodTemplateSpec via kubernetes-validate).
"""

from __future__ import annotations

from typing import Any

_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_META = {"type": "object", "required": ["name"],
         "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
                        "namespace": {"type": "string"}, "labels": _STR_MAP, "annotations": _STR_MAP},
         "additionalProperties": False}
_INT32 = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
_TEMPLATE = {"type": "object", "required": ["spec"]}  # contents checked as a PodTemplateSpec

_HEAD_GROUP = {"type": "object", "required": ["rayStartParams", "template"], "additionalProperties": False,
               "properties": {"serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                              "enableIngress": {"type": "boolean"}, "rayStartParams": _STR_MAP,
                              "template": _TEMPLATE}}
_WORKER_GROUP = {"type": "object", "required": ["groupName", "rayStartParams", "template"],
                 "additionalProperties": False,
                 "properties": {"groupName": {"type": "string", "minLength": 1}, "replicas": _INT32,
                                "minReplicas": _INT32, "maxReplicas": _INT32,
                                "numOfHosts": {"type": "integer", "minimum": 1},
                                "rayStartParams": _STR_MAP, "template": _TEMPLATE,
                                "idleTimeoutSeconds": _INT32, "suspend": {"type": "boolean"}}}
_CLUSTER = {"type": "object", "required": ["headGroupSpec"], "additionalProperties": False,
            "properties": {"headGroupSpec": _HEAD_GROUP, "workerGroupSpecs": {"type": "array", "items": _WORKER_GROUP},
                           "rayVersion": {"type": "string"}, "enableInTreeAutoscaling": {"type": "boolean"},
                           "autoscalerOptions": {"type": "object"}, "headServiceAnnotations": _STR_MAP,
                           "suspend": {"type": "boolean"}}}
RAYJOB: dict[str, Any] = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayJob"},
        # KubeRay's validation: a DNS-1035 label of at most 47 characters (53 minus its suffix).
        "metadata": {**_META, "properties": {**_META["properties"], "name": {
            "type": "string", "pattern": r"^[a-z]([-a-z0-9]*[a-z0-9])?$", "maxLength": 47}}},
        "spec": {"type": "object", "additionalProperties": False, "properties": {
            "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
            "backoffLimit": _INT32, "rayClusterSpec": _CLUSTER, "submitterPodTemplate": _TEMPLATE,
            "metadata": _STR_MAP, "clusterSelector": _STR_MAP,
            "submitterConfig": {"type": "object", "properties": {"backoffLimit": _INT32}, "additionalProperties": False},
            "managedBy": {"enum": ["ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue"]},
            "entrypoint": {"type": "string"}, "runtimeEnvYAML": {"type": "string"}, "jobId": {"type": "string"},
            "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
            "entrypointResources": {"type": "string"}, "entrypointNumCpus": {"type": "number"},
            "entrypointNumGpus": {"type": "number"}, "ttlSecondsAfterFinished": _INT32,
            "shutdownAfterJobFinishes": {"type": "boolean"}, "suspend": {"type": "boolean"}}},
    },
}

_REQ = {"type": "object", "required": ["key", "operator"], "additionalProperties": False,
        "properties": {"key": {"type": "string"}, "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]},
                       "values": {"type": "array", "items": {"type": "string"}}, "minValues": {"type": "integer"}}}
_TAINT = {"type": "object", "required": ["key", "effect"], "additionalProperties": False,
          "properties": {"key": {"type": "string"}, "value": {"type": "string"},
                         "effect": {"enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"]}}}
NODEPOOL: dict[str, Any] = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "karpenter.sh/v1"}, "kind": {"const": "NodePool"}, "metadata": _META,
        "spec": {"type": "object", "required": ["template"], "additionalProperties": False, "properties": {
            "template": {"type": "object", "required": ["spec"], "additionalProperties": False, "properties": {
                "metadata": {"type": "object", "properties": {"labels": _STR_MAP, "annotations": _STR_MAP},
                             "additionalProperties": False},
                "spec": {"type": "object", "required": ["nodeClassRef", "requirements"], "additionalProperties": False,
                         "properties": {
                             "nodeClassRef": {"type": "object", "required": ["group", "kind", "name"],
                                              "additionalProperties": False,
                                              "properties": {"group": {"type": "string"}, "kind": {"type": "string"},
                                                             "name": {"type": "string"}}},
                             "requirements": {"type": "array", "items": _REQ},
                             "taints": {"type": "array", "items": _TAINT},
                             "startupTaints": {"type": "array", "items": _TAINT},
                             "expireAfter": {"type": "string", "pattern": r"^(([0-9]+(s|m|h))+|Never)$"},
                             "terminationGracePeriod": {"type": "string"}}}}},
            "disruption": {"type": "object", "additionalProperties": False, "properties": {
                "consolidationPolicy": {"enum": ["WhenEmpty", "WhenEmptyOrUnderutilized"]},
                "consolidateAfter": {"type": "string", "pattern": r"^(([0-9]+(s|m|h))+|Never)$"},
                "budgets": {"type": "array"}}},
            "limits": _STR_MAP, "weight": {"type": "integer", "minimum": 1, "maximum": 100}}},
    },
}

CONTAINER_NODE_POOL: dict[str, Any] = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "container.cnrm.cloud.google.com/v1beta1"}, "kind": {"const": "ContainerNodePool"},
        "metadata": {**_META, "required": ["name", "namespace"]},
        "spec": {"type": "object", "required": ["location", "clusterRef"], "additionalProperties": False, "properties": {
            "location": {"type": "string"},
            "clusterRef": {"type": "object", "properties": {"name": {"type": "string"}, "external": {"type": "string"}},
                           "additionalProperties": False},
            "autoscaling": {"type": "object", "additionalProperties": False, "properties": {
                "minNodeCount": {"type": "integer", "minimum": 0}, "maxNodeCount": {"type": "integer", "minimum": 1}}},
            "initialNodeCount": {"type": "integer"},
            "management": {"type": "object", "additionalProperties": False, "properties": {
                "autoRepair": {"type": "boolean"}, "autoUpgrade": {"type": "boolean"}}},
            "nodeConfig": {"type": "object", "additionalProperties": False, "properties": {
                "machineType": {"type": "string"}, "spot": {"type": "boolean"}, "preemptible": {"type": "boolean"},
                "labels": _STR_MAP,
                "guestAccelerator": {"type": "array", "items": {
                    "type": "object", "required": ["type", "count"], "additionalProperties": False,
                    "properties": {"type": {"type": "string"}, "count": {"type": "integer", "minimum": 1},
                                   "gpuDriverInstallationConfig": {"type": "object", "properties": {
                                       "gpuDriverVersion": {"enum": ["GPU_DRIVER_VERSION_UNSPECIFIED", "INSTALLATION_DISABLED",
                                                                     "DEFAULT", "LATEST"]}}}}}},
                "taint": {"type": "array", "items": {
                    "type": "object", "required": ["key", "value", "effect"], "additionalProperties": False,
                    "properties": {"key": {"type": "string"}, "value": {"type": "string"},
                                   "effect": {"enum": ["NO_SCHEDULE", "PREFER_NO_SCHEDULE", "NO_EXECUTE"]}}}},
                "workloadMetadataConfig": {"type": "object", "properties": {
                    "mode": {"enum": ["GCE_METADATA", "GKE_METADATA", "MODE_UNSPECIFIED"]}}}}}}},
    },
}

# Prometheus Operator's ServiceMonitor (monitoring.coreos.com/v1), the fields k8s/monitoring uses.
_SECRET_KEY = {"type": "object", "required": ["name", "key"], "additionalProperties": False,
               "properties": {"name": {"type": "string", "minLength": 1}, "key": {"type": "string", "minLength": 1},
                              "optional": {"type": "boolean"}}}
_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
_LABEL_SELECTOR = {"type": "object", "additionalProperties": False,
                   "properties": {"matchLabels": _STR_MAP, "matchExpressions": {"type": "array"}}}
_SM_ENDPOINT = {"type": "object", "additionalProperties": False,
                "properties": {"port": {"type": "string"}, "targetPort": {}, "path": {"type": "string"},
                               "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                               "interval": _DURATION, "scrapeTimeout": _DURATION, "honorLabels": {"type": "boolean"},
                               "honorTimestamps": {"type": "boolean"},
                               "authorization": {"type": "object", "additionalProperties": False,
                                                 "properties": {"type": {"type": "string"},
                                                                "credentials": _SECRET_KEY}},
                               "tlsConfig": {"type": "object"}, "relabelings": {"type": "array"},
                               "metricRelabelings": {"type": "array"}, "params": {"type": "object"}}}
SERVICEMONITOR: dict[str, Any] = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"}, "metadata": _META,
        "spec": {"type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
                 "properties": {"selector": _LABEL_SELECTOR, "jobLabel": {"type": "string"},
                                "namespaceSelector": {"type": "object", "additionalProperties": False,
                                                      "properties": {"any": {"type": "boolean"},
                                                                     "matchNames": {"type": "array",
                                                                                    "items": {"type": "string"}}}},
                                "endpoints": {"type": "array", "minItems": 1, "items": _SM_ENDPOINT}}},
    },
}

CUSTOM = {("ray.io/v1", "RayJob"): RAYJOB, ("karpenter.sh/v1", "NodePool"): NODEPOOL,
          ("container.cnrm.cloud.google.com/v1beta1", "ContainerNodePool"): CONTAINER_NODE_POOL,
          ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICEMONITOR}
