{{/* Names, labels and shared snippets of the stackplane chart. */}}

{{- define "stackplane.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "stackplane.fullname" -}}
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

{{- define "stackplane.controller.fullname" -}}
{{- printf "%s-controller" (include "stackplane.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- /* The ClusterRole of what the controller does inside a tenant namespace (bound there by the
controller itself, see controller-rbac.yaml). */}}
{{- define "stackplane.controller.tenantClusterRole" -}}
{{- printf "%s-tenant" (include "stackplane.controller.fullname" .) -}}
{{- end -}}

{{- /* Who may reach the controller's metrics port and the api's internal port: the values'
metricsFrom, else the pods of the monitoring namespace. */}}
{{- define "stackplane.metricsFrom" -}}
{{- if .Values.networkPolicy.metricsFrom -}}
{{- toYaml .Values.networkPolicy.metricsFrom }}
{{- else -}}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ .Values.networkPolicy.monitoringNamespace | quote }}
{{- end -}}
{{- end -}}

{{- define "stackplane.api.fullname" -}}
{{- printf "%s-api" (include "stackplane.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "stackplane.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "stackplane.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: stackplane
{{- end -}}

{{- define "stackplane.selectorLabels" -}}
app.kubernetes.io/name: {{ include "stackplane.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "stackplane.controller.selectorLabels" -}}
{{ include "stackplane.selectorLabels" . }}
app.kubernetes.io/component: controller
{{- end -}}

{{- define "stackplane.api.selectorLabels" -}}
{{ include "stackplane.selectorLabels" . }}
app.kubernetes.io/component: api
{{- end -}}

{{- define "stackplane.controller.serviceAccountName" -}}
{{- if .Values.controller.serviceAccount.create -}}
{{- default (include "stackplane.controller.fullname" .) .Values.controller.serviceAccount.name -}}
{{- else -}}
{{- required "controller.serviceAccount.name must name an existing ServiceAccount when controller.serviceAccount.create is false" .Values.controller.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "stackplane.api.serviceAccountName" -}}
{{- if .Values.api.serviceAccount.create -}}
{{- default (include "stackplane.api.fullname" .) .Values.api.serviceAccount.name -}}
{{- else -}}
{{- required "api.serviceAccount.name must name an existing ServiceAccount when api.serviceAccount.create is false" .Values.api.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "stackplane.image" -}}
{{- printf "%s:%s" .image.repository (default .chart.AppVersion .image.tag) -}}
{{- end -}}

{{/* The container security context every stackplane container runs with. */}}
{{- define "stackplane.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "stackplane.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The api's secrets, by reference only: the Secrets must exist before install. */}}
{{- define "stackplane.api.secretEnv" -}}
{{- $s := .Values.api.secrets -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ required "api.secrets.database.name must name an existing Secret holding DATABASE_URL" $s.database.name }}
      key: {{ required "api.secrets.database.key is required" $s.database.key }}
{{- end -}}

{{- define "stackplane.api.stripeEnv" -}}
{{- $s := .Values.api.secrets -}}
- name: STRIPE_WEBHOOK_SECRETS
  valueFrom:
    secretKeyRef:
      name: {{ required "api.secrets.stripe.name must name an existing Secret holding the Stripe webhook secrets and secret key" $s.stripe.name }}
      key: {{ required "api.secrets.stripe.webhookSecretsKey is required" $s.stripe.webhookSecretsKey }}
- name: STRIPE_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $s.stripe.name }}
      key: {{ required "api.secrets.stripe.secretKeyKey is required" $s.stripe.secretKeyKey }}
- name: STACKPLANE_ADMIN_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ required "api.secrets.adminToken.name must name an existing Secret holding the admin token" $s.adminToken.name }}
      key: {{ required "api.secrets.adminToken.key is required" $s.adminToken.key }}
{{- end -}}

{{/* API versions the cluster serves: the newest of each the chart knows. */}}
{{- define "stackplane.pdb.apiVersion" -}}
{{- if .Capabilities.APIVersions.Has "policy/v1/PodDisruptionBudget" -}}policy/v1
{{- else if .Capabilities.APIVersions.Has "policy/v1" -}}policy/v1
{{- else -}}policy/v1beta1
{{- end -}}
{{- end -}}

{{- define "stackplane.hpa.apiVersion" -}}
{{- if .Capabilities.APIVersions.Has "autoscaling/v2" -}}autoscaling/v2
{{- else -}}autoscaling/v2beta2
{{- end -}}
{{- end -}}

{{/* The names of the chart's CRDs, as a JSON list: its crds/ files are named after them. */}}
{{- define "stackplane.crdNames" -}}
{{- $names := list -}}
{{- range $path, $_ := .Files.Glob "crds/*.yaml" -}}
{{- $names = append $names (base $path | trimSuffix ".yaml") -}}
{{- end -}}
{{- toJson $names -}}
{{- end -}}
