{{- define "ladder.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ladder.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "ladder.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ladder.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ladder.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "ladder.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{- define "ladder.leaseName" -}}
{{- default (include "ladder.fullname" .) .Values.leaderElection.leaseName -}}
{{- end -}}

{{- /* Refuse combinations the schema cannot express clearly. */ -}}
{{- define "ladder.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) -}}
{{- fail "replicaCount > 1 needs leaderElection.enabled: two operators without a Lease would both act" -}}
{{- end -}}
{{- if and .Values.watchNamespaces .Values.rbac.secretNamespaces -}}
{{- fail "rbac.secretNamespaces is for cluster mode; in namespaced mode Secrets are limited to watchNamespaces" -}}
{{- end -}}
{{- end -}}

{{- /*
What the operator does in a namespace that holds ScalingPhases, as RBAC
rules. Secrets are separate ("ladder.rules.secrets") so that cluster mode can
limit them to rbac.secretNamespaces. No rule has `escalate`, `bind`,
`impersonate`, `deletecollection` or a wildcard: the operator may create the
Roles and RoleBindings a phase renders only because it holds every
permission they grant (that is Kubernetes's rule without `escalate`).
`list` and `watch` on every core kind it writes (Secrets included) feed its
label-selected watches: it reads readiness and presence of its children
there, prunes from them, and re-creates a deleted child within seconds.
*/ -}}
{{- define "ladder.rules.namespaced" -}}
# The ScalingPhase: read it, write its status and the operator's finalizer;
# never its spec, never create one (Git owns them).
- apiGroups: ["ladder.dev"]
  resources: ["scalingphases"]
  verbs: ["get", "list", "watch", "update", "patch"{{ if .Values.rbac.phase4HumanRoles }}, "create", "delete"{{ end }}]
- apiGroups: ["ladder.dev"]
  resources: ["scalingphases/status"]
  verbs: ["get", "update", "patch"]
# ownerReferences with blockOwnerDeletion on the children.
- apiGroups: ["ladder.dev"]
  resources: ["scalingphases/finalizers"]
  verbs: ["update"]
# The app's LoadReports: the operator reads them, and the Role it renders for
# the app lets the app write them (so the operator holds those verbs).
- apiGroups: ["ladder.dev"]
  resources: ["loadreports"]
  verbs: ["get", "list", "watch", "create", "update", "patch"{{ if .Values.rbac.phase4HumanRoles }}, "delete"{{ end }}]
- apiGroups: [""]
  resources: ["configmaps", "services", "serviceaccounts", "persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
# The app's Role (and phase 4's people Roles) and their bindings.
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
# Optional integrations, used only while their CRDs are installed.
- apiGroups: ["keda.sh"]
  resources: ["scaledobjects"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["cert-manager.io"]
  resources: ["certificates", "issuers"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
{{- end -}}

{{- /* Generated credentials and certificates: created once, read back, deleted only under deletionPolicy Delete. */ -}}
{{- define "ladder.rules.secrets" -}}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
{{- end -}}

{{- /* Cluster-scoped reads, needed in both modes. */ -}}
{{- define "ladder.rules.cluster" -}}
# Node regions decide how many regions a phase spreads over.
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["get", "list", "watch"]
# Which optional integrations (KEDA, cert-manager, prometheus-operator) exist.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
{{- end -}}
