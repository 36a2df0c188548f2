{{/*
Names and labels. Templates never type labels by hand: they use these.
*/}}

{{- define "celeriac.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The prefix of every object name, at most 63 characters (a DNS label). */}}
{{- define "celeriac.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Facts the Python code owns, written once for the templates; tests/chart/test_facts.py compares
each with its constant: the components' DEFAULT_*PORT (celeriac.<component>.settings) and the
metric KEDA scales on (celeriac.exporter.collector.GROUP_BACKLOG).
*/}}
{{- define "celeriac.apiPort" -}}8000{{- end -}}
{{- define "celeriac.exporterPort" -}}9540{{- end -}}
{{- define "celeriac.workerMetricsPort" -}}9541{{- end -}}
{{- define "celeriac.groupBacklogMetric" -}}celeriac_group_backlog_messages{{- end -}}
{{- define "celeriac.groupOldestAgeMetric" -}}celeriac_group_oldest_age_seconds{{- end -}}

{{- define "celeriac.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
"<fullname>-<suffix>". Cutting it to 63 characters could make two objects share a name, so a
name that does not fit fails instead. Args: (dict "root" $ "suffix" "api")
*/}}
{{- define "celeriac.componentName" -}}
{{- $fullname := include "celeriac.fullname" .root -}}
{{- $name := printf "%s-%s" $fullname .suffix -}}
{{- if gt (len $name) 63 -}}
{{- fail (printf "object name %q is longer than 63 characters: shorten the release name or set fullnameOverride to at most %d characters (or shorten the worker group name)" $name (sub 62 (len .suffix))) -}}
{{- end -}}
{{- $name -}}
{{- end -}}

{{/* Selector labels: name, instance, component; never the version. Args: (dict "root" $ "component" "api") */}}
{{- define "celeriac.selectorLabels" -}}
app.kubernetes.io/name: {{ include "celeriac.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- with .group }}
celeriac.io/worker-group: {{ . }}
{{- end }}
{{- end -}}

{{/* The release's pods, whatever their component (NetworkPolicies). */}}
{{- define "celeriac.releaseSelectorLabels" -}}
app.kubernetes.io/name: {{ include "celeriac.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Every object's labels. Args: (dict "root" $ "component" "api" ["group" "default"]) */}}
{{- define "celeriac.labels" -}}
helm.sh/chart: {{ include "celeriac.chart" .root }}
{{ include "celeriac.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: celeriac
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Images. Args: (dict "root" $ "image" .Values.api.image); the component's image is merged over
the top-level one. A digest pins the image and wins over the tag.
*/}}
{{- define "celeriac.image" -}}
{{- $image := mergeOverwrite (deepCopy .root.Values.image) (deepCopy (default dict .image)) -}}
{{- include "celeriac.imageRef" (dict "image" $image "tag" .root.Chart.AppVersion) -}}
{{- end -}}

{{/* "repository:tag" or "repository@digest". Args: (dict "image" <dict> "tag" <default tag>) */}}
{{- define "celeriac.imageRef" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (toString (default .tag .image.tag)) -}}
{{- end -}}
{{- end -}}

{{- define "celeriac.imagePullPolicy" -}}
{{- $image := mergeOverwrite (deepCopy .root.Values.image) (deepCopy (default dict .image)) -}}
{{- $image.pullPolicy -}}
{{- end -}}

{{- define "celeriac.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "celeriac.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false: name an existing ServiceAccount" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
Checkov suppressions shared by every workload, each with its reason (checkov reads
`checkov.io/skip<N>: <check>=<reason>`; a reason must not contain "=").
*/}}
{{- define "celeriac.checkovSkips" -}}
checkov.io/skip1: CKV_K8S_43=Images are referenced by release tag so kind and skaffold can load local builds; set image.digest to pin a digest
checkov.io/skip2: CKV_K8S_15=Release tags are immutable; IfNotPresent lets kind and skaffold use locally loaded images and Always is one value away
{{- if not .Values.networkPolicy.enabled }}
checkov.io/skip9: CKV2_K8S_6=networkPolicy.enabled is false so the cluster operator owns the NetworkPolicies of these pods
{{- end }}
{{- end -}}

{{/*
The ServiceAccount of worker groups with deletionCost on: its own (token mounted in those pods
only, bound to the deletion-cost Role), or the release's named one when the chart creates none.
*/}}
{{- define "celeriac.worker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- include "celeriac.componentName" (dict "root" . "suffix" "worker") -}}
{{- else -}}
{{- include "celeriac.serviceAccountName" . -}}
{{- end -}}
{{- end -}}

{{/*
Pod-level fields every workload shares. Args: (dict "root" $ "values" <component block> "grace" <seconds>
["serviceAccount" <name> "token" true]): only worker pods with deletionCost pass a token.
*/}}
{{- define "celeriac.podCommon" -}}
serviceAccountName: {{ default (include "celeriac.serviceAccountName" .root) .serviceAccount }}
automountServiceAccountToken: {{ if .token }}true{{ else }}false{{ end }}
# Service links would inject variables such as CELERIAC_API_PORT (from a Service named
# celeriac-api) into every container and collide with celeriac's own configuration.
enableServiceLinks: false
terminationGracePeriodSeconds: {{ int .grace }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml (mergeOverwrite (deepCopy .root.Values.podSecurityContext) (deepCopy (default dict .values.podSecurityContext))) | nindent 2 }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Container security context. Args: (dict "root" $ "values" <component block>) */}}
{{- define "celeriac.containerSecurityContext" -}}
{{- toYaml (mergeOverwrite (deepCopy .root.Values.containerSecurityContext) (deepCopy (default dict .values.containerSecurityContext))) -}}
{{- end -}}

{{/*
A probe: the handler comes from the chart, the timing from values; `enabled: false` drops it.
Emits a leading newline and the given indentation, or nothing.
Args: (dict "name" "livenessProbe" "probe" <values block> "handler" <dict> "indent" 10)
*/}}
{{- define "celeriac.probe" -}}
{{- if .probe.enabled -}}
{{- $probe := deepCopy .handler -}}
{{- range $key := list "initialDelaySeconds" "periodSeconds" "timeoutSeconds" "failureThreshold" "successThreshold" -}}
{{- if hasKey $.probe $key -}}
{{- $_ := set $probe $key (int (index $.probe $key)) -}}
{{- end -}}
{{- end -}}
{{- dict .name $probe | toYaml | nindent .indent -}}
{{- end -}}
{{- end -}}

{{/*
A generated Secret value (base64): the one the Secret already holds in the cluster (kept across
upgrades), else random. Drawn once per render and remembered on the root context, so that a
pod's checksum of the Secret's template (celeriac.checksum renders it again) hashes the value the
Secret gets: a second random draw would make the first upgrade roll every pod.
Args: root, name (the Secret), key, length.
*/}}
{{- define "celeriac.generatedSecretValue" -}}
{{- $memo := get .root "celeriacGeneratedSecretValues" -}}
{{- if not $memo -}}
{{- $memo = dict -}}
{{- $_ := set .root "celeriacGeneratedSecretValues" $memo -}}
{{- end -}}
{{- $id := printf "%s/%s" .name .key -}}
{{- if not (hasKey $memo $id) -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .name -}}
{{- $current := dig "data" .key "" (default dict $existing) -}}
{{- $_ := set $memo $id (default (randAlphaNum .length | b64enc) $current) -}}
{{- end -}}
{{- get $memo $id -}}
{{- end -}}

{{/* A pod annotation that changes, and so rolls the pods, when the named template's output changes. */}}
{{- define "celeriac.checksum" -}}
{{- include (print .root.Template.BasePath "/" .template) .root | sha256sum -}}
{{- end -}}

{{/*
Redis: where the broker is and where its password lives.
*/}}
{{- define "celeriac.redis.fullname" -}}
{{- include "celeriac.componentName" (dict "root" . "suffix" "redis") -}}
{{- end -}}

{{- define "celeriac.redis.headless" -}}
{{- include "celeriac.componentName" (dict "root" . "suffix" "redis-headless") -}}
{{- end -}}

{{/* "true" when the bundled Redis runs with replicas and Sentinel, else empty. */}}
{{- define "celeriac.redis.sentinel" -}}
{{- if and .Values.redis.enabled .Values.redis.sentinel.enabled }}true{{ end -}}
{{- end -}}

{{/* Redis pods: redis.replicas, else 1 (3 with Sentinel). check-values.yaml checks the range. */}}
{{- define "celeriac.redis.replicas" -}}
{{- if not (kindIs "invalid" .Values.redis.replicas) -}}
{{- int .Values.redis.replicas -}}
{{- else if include "celeriac.redis.sentinel" . -}}
3
{{- else -}}
1
{{- end -}}
{{- end -}}

{{/* Sentinel's quorum: redis.sentinel.quorum, else a majority of the pods. */}}
{{- define "celeriac.redis.quorum" -}}
{{- if not (kindIs "invalid" .Values.redis.sentinel.quorum) -}}
{{- int .Values.redis.sentinel.quorum -}}
{{- else -}}
{{- add (div (int (include "celeriac.redis.replicas" .)) 2) 1 -}}
{{- end -}}
{{- end -}}

{{/*
The stable DNS name of each Redis pod (through the headless Service), space-separated, in
ordinal order: what Redis and Sentinel announce and what clients are told by the sentinels.
*/}}
{{- define "celeriac.redis.hosts" -}}
{{- $root := . -}}
{{- $hosts := list -}}
{{- range $i := until (int (include "celeriac.redis.replicas" .)) -}}
{{- $hosts = append $hosts (printf "%s-%d.%s.%s.svc.%s" (include "celeriac.redis.fullname" $root) $i (include "celeriac.redis.headless" $root) $root.Release.Namespace $root.Values.clusterDomain) -}}
{{- end -}}
{{- join " " $hosts -}}
{{- end -}}

{{- define "celeriac.brokerUrl" -}}
{{- if include "celeriac.redis.sentinel" . -}}
{{- $urls := list -}}
{{- range $host := splitList " " (include "celeriac.redis.hosts" .) -}}
{{- $urls = append $urls (printf "sentinel://%s:26379" $host) -}}
{{- end -}}
{{- join ";" $urls -}}
{{- else if .Values.redis.enabled -}}
{{- printf "redis://%s:6379/0" (include "celeriac.redis.fullname" .) -}}
{{- else -}}
{{- .Values.externalRedis.url -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the Redis password; empty when an external Redis needs none. */}}
{{- define "celeriac.redis.secretName" -}}
{{- if .Values.redis.enabled -}}
{{- default (include "celeriac.redis.fullname" .) .Values.redis.auth.existingSecret -}}
{{- else -}}
{{- .Values.externalRedis.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "celeriac.redis.secretKey" -}}
{{- if .Values.redis.enabled -}}
{{- if .Values.redis.auth.existingSecret }}{{ .Values.redis.auth.existingSecretKey }}{{ else }}redis-password{{ end -}}
{{- else -}}
{{- .Values.externalRedis.existingSecretKey -}}
{{- end -}}
{{- end -}}

{{- define "celeriac.api.secretName" -}}
{{- default (include "celeriac.componentName" (dict "root" . "suffix" "api")) .Values.api.auth.existingSecret -}}
{{- end -}}

{{- define "celeriac.api.secretKey" -}}
{{- if .Values.api.auth.existingSecret }}{{ .Values.api.auth.existingSecretKey }}{{ else }}tokens{{ end -}}
{{- end -}}

{{/*
Worker groups. "celeriac.worker.groups" returns YAML: group name -> workerDefaults deep-merged
with the group's keys, plus computed fields: name, objectName, queues (default [name]),
poolSize, targetValue and shutdownTimeoutSeconds. Every per-group rule is checked here, so a
bad group fails with the same message whichever template renders first.
*/}}
{{- define "celeriac.worker.groups" -}}
{{- $root := . -}}
{{- $groups := dict -}}
{{- range $name, $raw := .Values.workers -}}
{{- if not (kindIs "map" $raw) -}}
{{- fail (printf "workers.%s must be a map of group settings (or null to drop the group)" $name) -}}
{{- end -}}
{{- /* celeriac.groups.GROUP_NAME (tests/chart/test_facts.py compares) */ -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$" $name) -}}
{{- fail (printf "workers.%s: a group name must be a DNS label (lower-case letters, digits and '-'); rename the group" $name) -}}
{{- end -}}
{{- $g := mergeOverwrite (deepCopy $root.Values.workerDefaults) (deepCopy $raw) -}}
{{- $_ := set $g "name" $name -}}
{{- $_ := set $g "objectName" (include "celeriac.componentName" (dict "root" $root "suffix" (printf "worker-%s" $name))) -}}
{{- if not $g.queues -}}
{{- $_ := set $g "queues" (list $name) -}}
{{- end -}}
{{- $limits := dig "resources" "limits" dict $g -}}
{{- if not (hasKey $limits "cpu") -}}
{{- fail (printf "workers.%s.resources.limits.cpu is required: the group's pool size comes from its CPU limit. Set it, e.g. workers.%s.resources.limits.cpu: \"1\"" $name $name) -}}
{{- end -}}
{{- $cpu := toString $limits.cpu -}}
{{- $cores := 0.0 -}}
{{- if hasSuffix "m" $cpu -}}
{{- $cores = divf (float64 (trimSuffix "m" $cpu)) 1000 -}}
{{- else -}}
{{- $cores = float64 $cpu -}}
{{- end -}}
{{- if le $cores 0.0 -}}
{{- fail (printf "workers.%s.resources.limits.cpu %q must be a positive CPU quantity, e.g. \"1\" or \"500m\"" $name $cpu) -}}
{{- end -}}
{{- /* Kubernetes hands the limit to the pod rounded up (Downward API, divisor 1); the worker multiplies it. */ -}}
{{- $pool := max 1 (int64 (round (mulf (ceil $cores) $g.concurrencyPerCpu) 0)) -}}
{{- $_ := set $g "poolSize" $pool -}}
{{- $grace := int $g.terminationGracePeriodSeconds -}}
{{- $margin := int $g.shutdownMarginSeconds -}}
{{- if ge $margin $grace -}}
{{- fail (printf "workers.%s.shutdownMarginSeconds (%d) must be less than workers.%s.terminationGracePeriodSeconds (%d): running tasks get the difference" $name $margin $name $grace) -}}
{{- end -}}
{{- $_ := set $g "shutdownTimeoutSeconds" (sub $grace $margin) -}}
{{- /* Idle workers first on scale-in: only where something scales in (keda, hpa). */ -}}
{{- $_ := set $g "deletionCostOn" (and $g.deletionCost.enabled (ne $g.autoscaling.engine "none")) -}}
{{- $visibility := int $root.Values.celery.visibilityTimeoutSeconds -}}
{{- if le $visibility $grace -}}
{{- fail (printf "celery.visibilityTimeoutSeconds (%d) must exceed workers.%s.terminationGracePeriodSeconds (%d), or a task still finishing during shutdown is delivered again; raise celery.visibilityTimeoutSeconds" $visibility $name $grace) -}}
{{- end -}}
{{- $as := $g.autoscaling -}}
{{- $min := int $as.minReplicas -}}
{{- $max := int $as.maxReplicas -}}
{{- if ne $as.engine "none" -}}
{{- if gt $min $max -}}
{{- fail (printf "workers.%s.autoscaling.minReplicas (%d) must not exceed workers.%s.autoscaling.maxReplicas (%d)" $name $min $name $max) -}}
{{- end -}}
{{- if lt $max 1 -}}
{{- fail (printf "workers.%s.autoscaling.maxReplicas must be at least 1" $name) -}}
{{- end -}}
{{- end -}}
{{- if eq $as.engine "hpa" -}}
{{- if lt $min 1 -}}
{{- fail (printf "workers.%s.autoscaling.minReplicas must be at least 1 with engine hpa (only keda scales to zero); set it to 1 or use engine keda" $name) -}}
{{- end -}}
{{- if not (dig "requests" "cpu" "" (default dict $g.resources)) -}}
{{- fail (printf "workers.%s.resources.requests.cpu is required with engine hpa: CPU utilization is measured against it" $name) -}}
{{- end -}}
{{- end -}}
{{- if eq $as.engine "keda" -}}
{{- $cooldown := int $as.keda.cooldownPeriodSeconds -}}
{{- if lt $cooldown $grace -}}
{{- fail (printf "workers.%s.autoscaling.keda.cooldownPeriodSeconds (%d) must be at least workers.%s.terminationGracePeriodSeconds (%d); raise the cooldown or shorten the grace period" $name $cooldown $name $grace) -}}
{{- end -}}
{{- $_ := set $g "targetValue" (toString (round (mulf $pool $as.keda.targetTasksPerProcess) 3)) -}}
{{- end -}}
{{- $_ := set $groups $name $g -}}
{{- end -}}
{{- toYaml $groups -}}
{{- end -}}

{{/* Every queue of every group plus the default queue, sorted, comma-separated. */}}
{{- define "celeriac.allQueues" -}}
{{- $queues := list .Values.celery.defaultQueue -}}
{{- range $name, $g := (include "celeriac.worker.groups" . | fromYaml) -}}
{{- $queues = concat $queues $g.queues -}}
{{- end -}}
{{- $queues | uniq | sortAlpha | join "," -}}
{{- end -}}

{{/*
Environment shared by every celeriac container. The Redis password is never a value here: the
components read it from the mounted Secret (CELERIAC_REDIS_PASSWORD_FILE).
*/}}
{{- define "celeriac.env" -}}
- name: CELERIAC_APP
  value: {{ .Values.app | quote }}
- name: CELERIAC_BROKER_URL
  value: {{ include "celeriac.brokerUrl" . | quote }}
{{- with .Values.celery.resultBackendUrl }}
- name: CELERIAC_RESULT_BACKEND_URL
  value: {{ . | quote }}
{{- end }}
{{- if include "celeriac.redis.secretName" . }}
- name: CELERIAC_REDIS_PASSWORD_FILE
  value: /etc/celeriac/redis/password
{{- end }}
{{- if include "celeriac.redis.sentinel" . }}
- name: CELERIAC_REDIS_SENTINEL_MASTER
  value: {{ .Values.redis.sentinel.masterName | quote }}
- name: CELERIAC_REDIS_WAIT_REPLICAS
  value: {{ int .Values.redis.waitReplicas | quote }}
- name: CELERIAC_REDIS_WAIT_TIMEOUT_SECONDS
  value: {{ toString .Values.redis.waitTimeoutSeconds | quote }}
{{- end }}
{{- with .Values.celery.brokerKeyPrefix }}
- name: CELERIAC_BROKER_KEY_PREFIX
  value: {{ . | quote }}
{{- end }}
- name: CELERIAC_DEFAULT_QUEUE
  value: {{ .Values.celery.defaultQueue | quote }}
- name: CELERIAC_PRIORITY_STEPS
  value: {{ join "," .Values.celery.prioritySteps | quote }}
- name: CELERIAC_VISIBILITY_TIMEOUT_SECONDS
  value: {{ int .Values.celery.visibilityTimeoutSeconds | quote }}
- name: CELERIAC_RESULT_EXPIRES_SECONDS
  value: {{ int .Values.celery.resultExpiresSeconds | quote }}
- name: CELERIAC_REDIS_SOCKET_TIMEOUT_SECONDS
  value: {{ toString .Values.celery.redisSocketTimeoutSeconds | quote }}
- name: CELERIAC_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
{{- end -}}

{{/*
Extra environment: the top-level extraEnv, then the component's (later entries win).
Emits a leading newline and the given indentation, or nothing. Args: (dict "root" $ "values" <block> "indent" 12)
*/}}
{{- define "celeriac.extraEnv" -}}
{{- $env := concat (default list .root.Values.extraEnv) (default list .values.extraEnv) -}}
{{- with $env -}}
{{- toYaml . | nindent $.indent -}}
{{- end -}}
{{- end -}}

{{/* Volumes every celeriac pod mounts: /tmp (the root filesystem is read-only) and the Redis password. */}}
{{- define "celeriac.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpVolumeSizeLimit }}
{{- if include "celeriac.redis.secretName" . }}
- name: redis-password
  secret:
    secretName: {{ include "celeriac.redis.secretName" . }}
    defaultMode: 0440
    items:
      - key: {{ include "celeriac.redis.secretKey" . }}
        path: password
{{- end }}
{{- end -}}

{{- define "celeriac.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if include "celeriac.redis.secretName" . }}
- name: redis-password
  mountPath: /etc/celeriac/redis
  readOnly: true
{{- end }}
{{- end -}}

{{/* Pod annotations that roll pods when the Redis password Secret (rendered by this chart) changes. */}}
{{- define "celeriac.redisChecksum" -}}
{{- if and .Values.redis.enabled (not .Values.redis.auth.existingSecret) -}}
checksum/redis-secret: {{ include "celeriac.checksum" (dict "root" . "template" "redis/secret.yaml") }}
{{- end -}}
{{- end -}}
