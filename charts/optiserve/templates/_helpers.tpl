{{/* Names, labels and images shared by the templates. */}}

{{- define "optiserve.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "optiserve.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "optiserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "optiserve.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name: required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The name the operator gives every optimization Job's pod (resources/job.py JobSettings). */}}
{{- define "optiserve.optimizerServiceAccountName" -}}
optiserve-optimizer
{{- end -}}

{{- define "optiserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "optiserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "optiserve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "optiserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: optiserve
{{- end -}}

{{/* registry/repository, then @digest or :tag (tag defaulting to the appVersion). Argument: (list $ image). */}}
{{- define "optiserve.image" -}}
{{- $root := index . 0 -}}
{{- $image := index . 1 -}}
{{- $ref := printf "%s/%s" $image.registry $image.repository -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $ref $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $ref (default $root.Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Namespaces that get the optimizer's ServiceAccount: the watched ones and the extra ones, once each. */}}
{{- define "optiserve.optimizerNamespaces" -}}
{{- concat .Values.watchNamespaces .Values.optimizer.serviceAccount.extraNamespaces | uniq | toJson -}}
{{- end -}}

{{/*
The operator's permissions on the namespaced resources it manages: exactly the verbs its code uses
(see charts/optiserve/README.md, "RBAC"). One list, rendered into a ClusterRole (all namespaces)
or into one Role per watched namespace.
*/}}
{{- define "optiserve.operatorRules" -}}
# kopf lists and watches OptimizedModels and patches them for its finalizer and annotations; each
# reconcile reads its model fresh (get), so it never decides from a status older than its own last write.
- apiGroups: [optiserve.io]
  resources: [optimizedmodels]
  verbs: [get, list, watch, patch]
# The one status writer (status_writer.py), through the status subresource.
- apiGroups: [optiserve.io]
  resources: [optimizedmodels/status]
  verbs: [patch]
# The optimization Job: created or adopted (get, patch), stale generations listed and deleted.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [create, get, list, patch, delete]
# Triton baseline and candidate Deployments: the same verbs.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [create, get, list, patch, delete]
# Triton Services: created or adopted; the candidate's deleted when it retires, all of a model's
# listed and deleted when its OptimizedModel is deleted.
- apiGroups: [""]
  resources: [services]
  verbs: [create, get, list, patch, delete]
# Pods are only read: a finished Job's termination message (its result), a stuck candidate's reason.
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
# The tail of a running optimization Job's log: the pass it is in (status.optimization.currentPass).
- apiGroups: [""]
  resources: [pods/log]
  verbs: [get]
# Events on OptimizedModels (kopf posts them through the core API).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
# Canary traffic with rollout.traffic.provider gateway-api: the route's backend weights are read
# and merge-patched; a route the operator owns (rollout.traffic.gateway) is created. Its garbage
# collection goes through the owner reference, so no delete.
- apiGroups: [gateway.networking.k8s.io]
  resources: [httproutes]
  verbs: [get, create, patch]
{{- end -}}
