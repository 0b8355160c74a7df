{{/*
Names and labels shared by every template. Object names derive from one prefix so two releases in one
namespace never collide, and selectors use only labels that never change across upgrades.
*/}}

{{- define "portcullis.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "portcullis.fullname" -}}
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

{{/* Name of one component's objects: <fullname>-<suffix>, cut to 63 characters. */}}
{{- define "portcullis.componentName" -}}
{{- printf "%s-%s" (include "portcullis.fullname" .root) .suffix | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "portcullis.controllerName" -}}
{{- include "portcullis.componentName" (dict "root" . "suffix" "controller") }}
{{- end }}

{{- define "portcullis.dataplaneName" -}}
{{- include "portcullis.componentName" (dict "root" . "suffix" "dataplane") }}
{{- end }}

{{/* The headless Service the controller lists data-plane pods through (EndpointSlices, not-ready included). */}}
{{- define "portcullis.dataplaneAdminServiceName" -}}
{{- include "portcullis.componentName" (dict "root" . "suffix" "dataplane-admin") }}
{{- end }}

{{- define "portcullis.pushSecretName" -}}
{{- if .Values.pushChannel.existingSecret }}
{{- .Values.pushChannel.existingSecret }}
{{- else }}
{{- include "portcullis.componentName" (dict "root" . "suffix" "push") }}
{{- end }}
{{- end }}

{{- define "portcullis.webhookName" -}}
{{- include "portcullis.componentName" (dict "root" . "suffix" "webhook") }}
{{- end }}

{{- define "portcullis.leaseName" -}}
{{- default (include "portcullis.componentName" (dict "root" . "suffix" "leader")) .Values.controller.leaderElection.leaseName }}
{{- end }}

{{- define "portcullis.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "portcullis.labels" -}}
helm.sh/chart: {{ include "portcullis.chart" . }}
app.kubernetes.io/name: {{ include "portcullis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: portcullis
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: (dict "root" $ "component" "controller"). Immutable across upgrades. */}}
{{- define "portcullis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "portcullis.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "portcullis.componentLabels" -}}
{{ include "portcullis.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "portcullis.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The hardened pod security context; only the numeric identities come from values. */}}
{{- define "portcullis.podSecurityContext" -}}
runAsNonRoot: true
{{- with .Values.securityContext.runAsUser }}
runAsUser: {{ . }}
{{- end }}
{{- with .Values.securityContext.runAsGroup }}
runAsGroup: {{ . }}
{{- end }}
{{- with .Values.securityContext.fsGroup }}
fsGroup: {{ . }}
{{- end }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "portcullis.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
runAsNonRoot: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* "ns/name" -> namespace part, for the default certificate's namespace in namespaced mode. */}}
{{- define "portcullis.defaultCertificateNamespace" -}}
{{- if .Values.defaultCertificate }}
{{- first (splitList "/" .Values.defaultCertificate) }}
{{- end }}
{{- end }}

{{/*
Namespaces the controller watches in namespaced mode: the listed ones plus the release namespace, where it
finds the data-plane pods (the controller adds that namespace to its watch list itself). Sorted and
deduplicated so renders are stable. Empty in cluster-wide mode.
*/}}
{{- define "portcullis.watchedNamespaces" -}}
{{- if .Values.watchNamespaces }}
{{- append .Values.watchNamespaces .Release.Namespace | uniq | sortAlpha | join "," }}
{{- end }}
{{- end }}

{{/*
Refuse values the controller could not honour, with a message naming the fix (the schema checks shapes; this
checks combinations).
*/}}
{{- define "portcullis.validate" -}}
{{- if and .Values.watchNamespaces .Values.defaultCertificate }}
{{- $ns := first (splitList "/" .Values.defaultCertificate) }}
{{- if not (has $ns (splitList "," (include "portcullis.watchedNamespaces" .))) }}
{{- fail (printf "defaultCertificate %q is in namespace %q, which the controller does not watch: add it to watchNamespaces or move the Secret" .Values.defaultCertificate $ns) }}
{{- end }}
{{- end }}
{{- if and .Values.dataplane.autoscaling.enabled (eq .Values.dataplane.kind "DaemonSet") }}
{{- fail "dataplane.autoscaling.enabled needs dataplane.kind Deployment (a DaemonSet runs one pod per node)" }}
{{- end }}
{{- if gt (int .Values.dataplane.autoscaling.minReplicas) (int .Values.dataplane.autoscaling.maxReplicas) }}
{{- fail "dataplane.autoscaling.minReplicas is larger than maxReplicas" }}
{{- end }}
{{- if and (gt (int .Values.controller.replicas) 1) (not .Values.controller.leaderElection.enabled) }}
{{- fail "controller.replicas > 1 needs controller.leaderElection.enabled: only one replica may write status and push" }}
{{- end }}
{{- end }}

{{/*
Serving processes per data-plane pod: dataplane.workers, else the CPU limit rounded down (at least 1), else 1.
One worker is one event loop, so one core; more than the limit would only contend for it.
*/}}
{{- define "portcullis.dataplaneWorkers" -}}
{{- $dp := .Values.dataplane -}}
{{- if $dp.workers -}}
{{- $dp.workers -}}
{{- else -}}
{{- $cpu := toString (dig "limits" "cpu" "" (default dict $dp.resources)) -}}
{{- if not $cpu -}}
1
{{- else if hasSuffix "m" $cpu -}}
{{- max 1 (div (atoi (trimSuffix "m" $cpu)) 1000) -}}
{{- else -}}
{{- max 1 (int (floor (float64 $cpu))) -}}
{{- end -}}
{{- end -}}
{{- end -}}
