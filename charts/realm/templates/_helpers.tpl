{{/* Names are at most 63 characters; fullnameOverride is capped at 40 by the schema, leaving room for suffixes. */}}
{{- define "realm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "realm.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "realm.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "realm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: realm
{{- end -}}

{{- define "realm.operatorSelector" -}}
app.kubernetes.io/name: {{ include "realm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "realm.operatorName" -}}
{{- printf "%s-operator" (include "realm.fullname" .) -}}
{{- end -}}

{{- define "realm.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "realm.operatorName" .) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "realm.peering" -}}
{{- default (include "realm.fullname" .) .Values.operator.peering -}}
{{- end -}}

{{/* registry/repository:tag, or registry/repository@digest when a digest is set. Args: (list image appVersion). */}}
{{- define "realm.image" -}}
{{- $img := index . 0 -}}
{{- $ref := $img.repository -}}
{{- if $img.registry -}}{{- $ref = printf "%s/%s" $img.registry $img.repository -}}{{- end -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $ref $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $ref (default (index . 1) $img.tag) -}}
{{- end -}}
{{- end -}}

{{/* Namespaces that get the runtime ServiceAccount. */}}
{{- define "realm.runtimeNamespaces" -}}
{{- $ns := .Values.runtime.serviceAccount.namespaces -}}
{{- if not $ns -}}
{{- $ns = .Values.operator.watchNamespaces -}}
{{- if not $ns -}}{{- $ns = list .Release.Namespace -}}{{- end -}}
{{- end -}}
{{- toJson (uniq $ns) -}}
{{- end -}}

