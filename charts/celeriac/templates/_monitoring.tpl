{{/*
Relabelings shared by ServiceMonitors and PodMonitors: a fixed job label per component (the
PrometheusRule and the dashboard select on it) and the worker group of each target.
Args: (dict "root" $ "component" "exporter")
*/}}
{{- define "celeriac.monitorRelabelings" -}}
- action: replace
  targetLabel: job
  replacement: {{ include "celeriac.componentName" (dict "root" .root "suffix" .component) }}
{{- if eq .component "worker" }}
- action: replace
  sourceLabels: [__meta_kubernetes_pod_label_celeriac_io_worker_group]
  targetLabel: worker_group
{{- end }}
{{- end -}}

{{/* Args: (dict "root" $ "component" "exporter" "kind" "ServiceMonitor") */}}
{{- define "celeriac.monitor" -}}
{{- $settings := ternary .root.Values.monitoring.serviceMonitor .root.Values.monitoring.podMonitor (eq .kind "ServiceMonitor") -}}
apiVersion: monitoring.coreos.com/v1
kind: {{ .kind }}
metadata:
  name: {{ include "celeriac.componentName" (dict "root" .root "suffix" .component) }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "celeriac.labels" (dict "root" .root "component" .component) | nindent 4 }}
    {{- with $settings.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  namespaceSelector:
    matchNames:
      - {{ .root.Release.Namespace }}
  selector:
    matchLabels:
      {{- include "celeriac.selectorLabels" (dict "root" .root "component" .component) | nindent 6 }}
  {{ ternary "endpoints" "podMetricsEndpoints" (eq .kind "ServiceMonitor") }}:
    - port: metrics
      path: /metrics
      interval: {{ $settings.interval }}
      scrapeTimeout: {{ $settings.scrapeTimeout }}
      relabelings:
        {{- include "celeriac.monitorRelabelings" . | nindent 8 }}
{{- end -}}
