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

{{/* Rules the operator needs in each namespace it serves (a Role there, or the ClusterRole in
cluster-wide mode). Each verb is the call that needs it; docs/rbac.md has the table. Nothing here
is create on pods, pods/exec, impersonate, escalate, bind, or any "*". */}}
{{- define "necrocode.namespacedRules" -}}
# The requests. kopf: list/watch (it serves them), patch (its finalizer and progress annotations).
# The operator: get (the claimer of a job, a re-read), patch (labels; escalating another request),
# delete (a finished record once ttlSecondsAfterFinished has passed). Never create or update.
- apiGroups: [necrocode.io]
  resources: [jobcancellations, taskcancellations]
  verbs: [get, list, watch, patch, delete]
# Their live status (steps, progress, outcomes): merge patches of the status subresource.
- apiGroups: [necrocode.io]
  resources: [jobcancellations/status, taskcancellations/status]
  verbs: [patch]
# The job: get (Validate, Verify); patch (the atomic claim annotation, spec.dispatch.blocked and the
# label the admission policy reads). Never list or watch: the operator reads only the named job.
- apiGroups: [necrocode.io]
  resources: [agentjobs]
  verbs: [get, patch]
# Its tasks: list (classify them by the job's label), get (a re-read after a conflict), patch
# (the cancel-requested annotation on a runner's task, with a cooperative window).
- apiGroups: [necrocode.io]
  resources: [agenttasks]
  verbs: [get, list, patch]
# The job's phase and Cancelled condition (a merge patch guarded by resourceVersion).
- apiGroups: [necrocode.io]
  resources: [agentjobs/status]
  verbs: [patch]
# Each task's state and cancellation record (a PUT guarded by resourceVersion).
- apiGroups: [necrocode.io]
  resources: [agenttasks/status]
  verbs: [update]
# Runner pods: list + watch (one label-selector watch follows them), get (a re-read after a
# conflict), patch (the cancel-requested annotation the runner reads), delete (graceful, then
# forced). Not create, not pods/exec, not pods/eviction.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, patch, delete]
# Repo slots: list (the job's held slots), get + update (release one: a PUT guarded by
# resourceVersion). Not create, patch or delete: slots belong to the pool.
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, list, update]
# Scratch resources labelled with the job: list (by label, metadata only) and delete. Artifacts
# likewise, but deleted only with preserveArtifacts: false and if the requester may (below).
- apiGroups: [""]
  resources: [configmaps, persistentvolumeclaims]
  verbs: [list, delete]
{{- if .Values.operator.includeSecrets }}
# operator.includeSecrets: scratch Secrets too. Note that list on secrets returns their data:
# this grant is why it is off by default, and in namespaced mode it exists only in the served
# namespaces.
- apiGroups: [""]
  resources: [secrets]
  verbs: [list, delete]
{{- end }}
# Kept runner logs (preserveLogs): the end of a runner's log, read through the API server (the
# operator never talks to a kubelet itself). Only get: no follow-up on exec, attach or proxy.
- apiGroups: [""]
  resources: [pods/log]
  verbs: [get]
# ...saved into one artifact ConfigMap per runner by a server-side apply: patch, and create (the
# API server asks for both when the apply creates it). RBAC cannot narrow these to our own
# ConfigMaps (names are generated, no label condition), so they reach every ConfigMap where
# the operator serves; it writes only those named <runner>-log-<hash>, labelled kept-log.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [create, patch]
# The operator's own Events (created once under a deterministic name; never patched).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
# preserveArtifacts: false deletes artifacts only of the kinds the recorded requester may delete
# in the namespace: the operator asks the API server (access.may). Namespaced, so a namespaced
# install needs no cluster-wide SubjectAccessReview.
- apiGroups: [authorization.k8s.io]
  resources: [localsubjectaccessreviews]
  verbs: [create]
{{- end -}}
