{{/* Name of the release's objects. */}}
{{- define "showoff.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "showoff.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Labels that select the server pods. */}}
{{- define "showoff.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The Secret holding tokens. */}}
{{- define "showoff.secretName" -}}
{{- default (include "showoff.fullname" .) .Values.existingSecret -}}
{{- end -}}

{{/* Whether the HTTPS listener is on. */}}
{{- define "showoff.https" -}}
{{- if or .Values.tls.secretName .Values.acme.enabled -}}true{{- end -}}
{{- end -}}

{{/* The cluster's Redis URL: cluster.redisUrl, or the chart's own Redis. */}}
{{- define "showoff.redisUrl" -}}
{{- if .Values.cluster.redisUrl -}}
{{- .Values.cluster.redisUrl -}}
{{- else if .Values.cluster.redis.deploy -}}
redis://{{ include "showoff.fullname" . }}-redis:6379
{{- else -}}
{{- fail "cluster.enabled needs cluster.redisUrl or cluster.redis.deploy" -}}
{{- end -}}
{{- end -}}
