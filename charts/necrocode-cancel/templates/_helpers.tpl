{{- define "necrocode.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "necrocode.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "necrocode.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "necrocode.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "necrocode.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* hostNetwork and hostAliases of both Deployments' pods. */}}
{{- define "necrocode.podNetwork" -}}
{{- if .Values.hostNetwork }}
hostNetwork: true
{{- end }}
{{- with .Values.hostAliases }}
hostAliases: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Where the pods reach the API server, when not through the kubernetes Service (in-cluster
config reads these two variables; the container's own env wins over the kubelet's). */}}
{{- define "necrocode.apiServerEnv" -}}
{{- with .Values.apiServer.host }}
- {name: KUBERNETES_SERVICE_HOST, value: {{ . | quote }}}
{{- end }}
{{- with .Values.apiServer.port }}
- {name: KUBERNETES_SERVICE_PORT, value: {{ . | quote }}}
{{- end }}
{{- end -}}

{{/* Rules the operator needs in each namespace it serves. */}}
{{- define "necrocode.namespacedRules" -}}
- apiGroups: [necrocode.io]
  resources: [jobcancellations, taskcancellations]
  verbs: [get, list, watch, patch, update, delete]
- apiGroups: [necrocode.io]
  resources: [jobcancellations/status, taskcancellations/status]
  verbs: [get, patch, update]
- apiGroups: [necrocode.io]
  resources: [agentjobs, agenttasks]
  verbs: [get, list, watch, patch]
- apiGroups: [necrocode.io]
  resources: [agentjobs/status, agenttasks/status]
  verbs: [get, patch, update]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, patch, delete]
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, list, watch, patch, update, create]
- apiGroups: [""]
  resources: [configmaps, persistentvolumeclaims]
  verbs: [get, list, delete]
{{- if .Values.operator.includeSecrets }}
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, delete]
{{- end }}
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}
