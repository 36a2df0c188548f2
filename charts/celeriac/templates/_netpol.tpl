{{/* The Prometheus peer of NetworkPolicies (namespace and pod selectors from values). */}}
{{- define "celeriac.prometheusPeer" -}}
- namespaceSelector:
    {{- toYaml (default dict .Values.networkPolicy.prometheus.namespaceSelector) | nindent 4 }}
  podSelector:
    {{- toYaml (default dict .Values.networkPolicy.prometheus.podSelector) | nindent 4 }}
{{- end -}}
