{{/* Names: the release-scoped name every object of this chart carries. */}}
{{- define "triton.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "triton.fullname" -}}
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

{{- define "triton.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "triton.selectorLabels" -}}
app.kubernetes.io/name: {{ include "triton.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "triton.labels" -}}
helm.sh/chart: {{ include "triton.chart" . }}
{{ include "triton.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: recsys
{{- end -}}

{{- define "triton.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "triton.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name must name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "triton.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/*
The --model-repository argument: an S3 URI read directly by Triton (credentials from the IRSA service
account), or the mount path of an existing volume claim. Exactly one of the two must be set.
*/}}
{{- define "triton.modelRepository" -}}
{{- $repo := .Values.modelRepository -}}
{{- if and $repo.uri $repo.existingClaim -}}
{{- fail "modelRepository: set either uri (s3://...) or existingClaim, not both" -}}
{{- else if $repo.uri -}}
{{- if not (hasPrefix "s3://" $repo.uri) -}}
{{- fail (printf "modelRepository.uri=%q: expected s3://bucket/prefix (or use existingClaim for a volume)" $repo.uri) -}}
{{- end -}}
{{- $repo.uri -}}
{{- else if $repo.existingClaim -}}
{{- $repo.mountPath -}}
{{- else -}}
{{- fail "modelRepository: set uri (s3://bucket/prefix/...) or existingClaim (a PersistentVolumeClaim holding the repository)" -}}
{{- end -}}
{{- end -}}

{{/* The smallest number of replicas the release can run with (HPA minimum, or the fixed count). */}}
{{- define "triton.minReplicas" -}}
{{- if .Values.autoscaling.enabled -}}{{ .Values.autoscaling.minReplicas }}{{- else -}}{{ .Values.replicaCount }}{{- end -}}
{{- end -}}
