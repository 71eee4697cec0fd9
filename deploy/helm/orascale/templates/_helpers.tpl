{{/*
Names. With the release called "orascale" (the documented install) every object has the name
the kustomize base gives it, so both install paths lead to the same cluster state.
*/}}
{{- define "orascale.fullname" -}}
{{- if contains "orascale" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-orascale" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "orascale.selectorLabels" -}}
app.kubernetes.io/name: orascale
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: scaler
{{- end -}}

{{- define "orascale.labels" -}}
{{ include "orascale.selectorLabels" . }}
app.kubernetes.io/part-of: orascale
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "orascale.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "orascale.credentialsSecret" -}}
{{- if .Values.credentials.existingSecret -}}
{{- .Values.credentials.existingSecret -}}
{{- else -}}
{{- printf "%s-db-credentials" (include "orascale.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "orascale.tlsSecret" -}}
{{- if .Values.tls.certManager.enabled -}}
{{- printf "%s-tls" (include "orascale.fullname" .) -}}
{{- else -}}
{{- required "tls.existingSecret: name the Secret with tls.crt, tls.key and ca.crt, or set tls.certManager.enabled" .Values.tls.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* The Service's in-cluster names: KEDA checks the server certificate against scalerAddress. */}}
{{- define "orascale.host" -}}
{{- printf "%s.%s.svc.cluster.local" (include "orascale.fullname" .) .Release.Namespace -}}
{{- end -}}

{{/* The container's arguments: the image's CMD, plus the TLS files when TLS is on. */}}
{{- define "orascale.args" -}}
- serve
- --config
- /etc/orascale/config/orascale.toml
{{- if .Values.tls.enabled }}
- --tls-cert
- /etc/orascale/tls/tls.crt
- --tls-key
- /etc/orascale/tls/tls.key
{{- if .Values.tls.mtls }}
- --tls-client-ca
- /etc/orascale/tls/ca.crt
{{- end }}
{{- if .Values.tls.reloadInterval }}
- --tls-reload-interval
- {{ .Values.tls.reloadInterval | quote }}
{{- end }}
{{- end }}
{{- end -}}
