{{/* The release's objects are named after it, less a repeated "lancet". */}}
{{- define "lancet.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* What selects the agent's pods; never changes across upgrades. */}}
{{- define "lancet.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end -}}

{{- define "lancet.labels" -}}
{{ include "lancet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "lancet.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/*
The probes' address, from `listen` (host:port or [v6]:port): the kubelet
probes from the node's network namespace, which hostNetwork shares.
*/}}
{{- define "lancet.listenPort" -}}
{{- regexFind "[0-9]+$" .Values.listen -}}
{{- end -}}

{{- define "lancet.listenHost" -}}
{{- $host := trimSuffix (printf ":%s" (include "lancet.listenPort" .)) .Values.listen -}}
{{- $host | trimPrefix "[" | trimSuffix "]" -}}
{{- end -}}

{{/*
GET /healthz: 200 while the agent's event loop goes round, 503 once it has
been silent for 10 s; answered off the loop, so a queue of API reads cannot
fail it and a stuck loop cannot pass it.
*/}}
{{- define "lancet.probe" -}}
httpGet:
  host: {{ include "lancet.listenHost" . | quote }}
  port: {{ include "lancet.listenPort" . | int }}
  path: /healthz
timeoutSeconds: 6
{{- end -}}
