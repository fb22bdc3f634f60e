{{- define "aoai.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "aoai.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "aoai.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aoai.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "aoai.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "aoai.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "aoai.annotations" -}}
{{- with .Values.commonAnnotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "aoai.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "aoai.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "aoai.webhookService" -}}
{{- printf "%s-webhook" (include "aoai.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "aoai.webhookSecret" -}}
{{- if eq .Values.webhook.certificates.mode "secret" }}
{{- required "webhook.certificates.secretName is required with mode: secret" .Values.webhook.certificates.secretName }}
{{- else }}
{{- printf "%s-webhook-tls" (include "aoai.fullname" .) }}
{{- end }}
{{- end }}

{{- define "aoai.proxyImage" -}}
{{ .Values.proxyImage.repository }}:{{ .Values.proxyImage.tag | default .Chart.AppVersion }}
{{- end }}

{{- /* Non-empty when the MutatingAdmissionPolicy is installed (injection.engine). */}}
{{- define "aoai.policyEngine" -}}
{{- $engine := .Values.injection.engine }}
{{- if or (eq $engine "policy") (and (eq $engine "auto") (.Capabilities.APIVersions.Has "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy")) -}}
true
{{- end }}
{{- end }}

{{- /*
  The namespaces injection acts in, for the webhook and every admission policy binding: never
  kube-system, the release's own namespace or namespaces labelled aoai-proxy.io/injection=disabled.
*/}}
{{- define "aoai.injectionNamespaces" -}}
namespaceSelector:
  matchExpressions:
    - key: kubernetes.io/metadata.name
      operator: NotIn
      values: ["kube-system", {{ .Release.Namespace | quote }}]
    - key: aoai-proxy.io/injection
      operator: NotIn
      values: ["disabled"]
    {{- with .Values.webhook.namespaceSelector.matchExpressions }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- with .Values.webhook.objectSelector }}
objectSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
