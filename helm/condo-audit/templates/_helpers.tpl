{{/*
Named helpers shared by every component folder. Names are prefixed "condo-audit." so a parent
chart's helpers cannot collide with them.
*/}}

{{- define "condo-audit.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "condo-audit.fullname" -}}
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

{{- define "condo-audit.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Name of one component's objects: condo-audit.componentName (dict "root" $ "component" "api"). */}}
{{- define "condo-audit.componentName" -}}
{{- printf "%s-%s" (include "condo-audit.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every object carries; call with (dict "root" $ "component" "api"). */}}
{{- define "condo-audit.labels" -}}
helm.sh/chart: {{ include "condo-audit.chart" .root }}
{{ include "condo-audit.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: condo-audit
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The labels a Service, PDB or NetworkPolicy selects a component's pods by. */}}
{{- define "condo-audit.selectorLabels" -}}
app.kubernetes.io/name: {{ include "condo-audit.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Labels that select every pod of the release, whatever the component. */}}
{{- define "condo-audit.releaseSelectorLabels" -}}
app.kubernetes.io/name: {{ include "condo-audit.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "condo-audit.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "condo-audit.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "condo-audit.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The Celery queue: one value feeds AUDIT_QUEUE and the KEDA trigger's listName. */}}
{{- define "condo-audit.auditQueue" -}}
{{- .Values.config.auditQueue -}}
{{- end -}}

{{/* The tenants' backlogs in front of the queue: a hash with one field per waiting batch
(audit/fairqueue.py pending_key), read by the ScaledObject's backlog trigger. */}}
{{- define "condo-audit.fairBacklogKey" -}}
{{- printf "%s:fair:pending" (include "condo-audit.auditQueue" .) -}}
{{- end -}}

{{/* Outstanding tasks one worker pod is expected to carry: concurrency x tasksPerSlot. */}}
{{- define "condo-audit.worker.targetPerReplica" -}}
{{- mul .Values.worker.concurrency .Values.keda.tasksPerSlot -}}
{{- end -}}

{{/* Longer than the longest task, so a scaled-in worker finishes its work before SIGKILL. */}}
{{- define "condo-audit.worker.terminationGracePeriodSeconds" -}}
{{- add .Values.worker.maxTaskSeconds .Values.worker.shutdownMarginSeconds -}}
{{- end -}}

{{/* ---------- Redis ---------- */}}

{{- define "condo-audit.redis.host" -}}
{{- if .Values.redis.enabled -}}
{{- printf "%s.%s.svc" (include "condo-audit.componentName" (dict "root" . "component" "redis")) .Release.Namespace -}}
{{- else -}}
{{- required "externalRedis.host is required when redis.enabled is false" .Values.externalRedis.host -}}
{{- end -}}
{{- end -}}

{{- define "condo-audit.redis.port" -}}
{{- if .Values.redis.enabled -}}6379{{- else -}}{{- .Values.externalRedis.port -}}{{- end -}}
{{- end -}}

{{- define "condo-audit.redis.database" -}}
{{- if .Values.redis.enabled -}}{{- .Values.redis.database -}}{{- else -}}{{- .Values.externalRedis.database -}}{{- end -}}
{{- end -}}

{{- define "condo-audit.redis.tls" -}}
{{- if and (not .Values.redis.enabled) .Values.externalRedis.tls -}}true{{- else -}}false{{- end -}}
{{- end -}}

{{/* The chart's own Redis password Secret, or the one the user named. */}}
{{- define "condo-audit.redis.secretName" -}}
{{- $auth := ternary .Values.redis.auth .Values.externalRedis .Values.redis.enabled -}}
{{- default (include "condo-audit.componentName" (dict "root" . "component" "redis")) $auth.existingSecret -}}
{{- end -}}

{{- define "condo-audit.redis.secretKey" -}}
{{- $auth := ternary .Values.redis.auth .Values.externalRedis .Values.redis.enabled -}}
{{- if $auth.existingSecret -}}{{- $auth.existingSecretPasswordKey -}}{{- else -}}redis-password{{- end -}}
{{- end -}}

{{/* ---------- PostgreSQL ---------- */}}

{{- define "condo-audit.postgresql.host" -}}
{{- printf "%s.%s.svc" (include "condo-audit.componentName" (dict "root" . "component" "postgresql")) .Release.Namespace -}}
{{- end -}}

{{- define "condo-audit.postgresql.secretName" -}}
{{- default (include "condo-audit.componentName" (dict "root" . "component" "postgresql")) .Values.postgresql.auth.existingSecret -}}
{{- end -}}

{{- define "condo-audit.postgresql.secretKey" -}}
{{- if .Values.postgresql.auth.existingSecret -}}{{- .Values.postgresql.auth.existingSecretPasswordKey -}}{{- else -}}postgres-password{{- end -}}
{{- end -}}

{{- define "condo-audit.database.secretName" -}}
{{- default (include "condo-audit.componentName" (dict "root" . "component" "database")) .Values.externalDatabase.existingSecret -}}
{{- end -}}

{{- define "condo-audit.database.secretKey" -}}
{{- if .Values.externalDatabase.existingSecret -}}{{- .Values.externalDatabase.existingSecretUrlKey -}}{{- else -}}database-url{{- end -}}
{{- end -}}

{{/*
A Secret value that survives upgrades: the given value, else the one already in the cluster,
else a new random one. Call with (dict "root" $ "name" <secret> "key" <key> "value" <given>).
*/}}
{{- define "condo-audit.stableSecretValue" -}}
{{- if .value -}}
{{- .value -}}
{{- else -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .name -}}
{{- if and $existing (hasKey $existing.data .key) -}}
{{- index $existing.data .key | b64dec -}}
{{- else -}}
{{- randAlphaNum 32 -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The Fernet keys that encrypt webhook signing secrets: the chart's Secret or the user's. */}}
{{- define "condo-audit.webhooks.secretName" -}}
{{- default (include "condo-audit.componentName" (dict "root" . "component" "webhooks")) .Values.webhooks.secretKeys.existingSecret -}}
{{- end -}}

{{- define "condo-audit.webhooks.secretKey" -}}
{{- if .Values.webhooks.secretKeys.existingSecret -}}{{- .Values.webhooks.secretKeys.existingSecretKey -}}{{- else -}}webhook-secret-keys{{- end -}}
{{- end -}}

{{/* ---------- Environment ---------- */}}

{{/*
Connection settings: passwords come from Secrets as env vars, and the URLs are composed from
them with Kubernetes' $(VAR) expansion, so no URL holding a password is ever rendered.
*/}}
{{- define "condo-audit.env.connections" -}}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "condo-audit.redis.secretName" . }}
      key: {{ include "condo-audit.redis.secretKey" . }}
- name: REDIS_URL
  value: {{ printf "%s://:$(REDIS_PASSWORD)@%s:%s/%s" (ternary "rediss" "redis" (eq (include "condo-audit.redis.tls" .) "true")) (include "condo-audit.redis.host" .) (include "condo-audit.redis.port" .) (include "condo-audit.redis.database" .) | quote }}
{{ include "condo-audit.env.database" . }}
{{- end -}}

{{- define "condo-audit.env.database" -}}
{{- if .Values.postgresql.enabled -}}
- name: DATABASE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "condo-audit.postgresql.secretName" . }}
      key: {{ include "condo-audit.postgresql.secretKey" . }}
- name: DATABASE_URL
  value: {{ printf "postgresql+psycopg://%s:$(DATABASE_PASSWORD)@%s:5432/%s" .Values.postgresql.username (include "condo-audit.postgresql.host" .) .Values.postgresql.database | quote }}
{{- else -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "condo-audit.database.secretName" . }}
      key: {{ include "condo-audit.database.secretKey" . }}
{{- end -}}
{{- end -}}

{{/* Provider credentials, each optional so a Secret may omit the ones a deployment does not use. */}}
{{- define "condo-audit.env.providerSecrets" -}}
{{- $name := default (include "condo-audit.componentName" (dict "root" . "component" "providers")) .Values.secrets.existingSecret -}}
{{- range $env, $key := dict "CNPJWS_TOKEN" "cnpjws-token" "PLUGGY_CLIENT_ID" "pluggy-client-id" "PLUGGY_CLIENT_SECRET" "pluggy-client-secret" }}
- name: {{ $env }}
  valueFrom:
    secretKeyRef:
      name: {{ $name }}
      key: {{ $key }}
      optional: true
{{- end }}
{{- end -}}

{{/* Everything the API and the worker read: the ConfigMap, the Secrets and the service name. */}}
{{- define "condo-audit.env.app" -}}
{{ include "condo-audit.env.connections" .root }}
{{ include "condo-audit.env.providerSecrets" .root }}
- name: WEBHOOK_SECRET_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ include "condo-audit.webhooks.secretName" .root }}
      key: {{ include "condo-audit.webhooks.secretKey" .root }}
- name: OTEL_SERVICE_NAME
  value: {{ printf "condo-audit-%s" .component | quote }}
{{- end -}}

{{/* Volumes every application pod mounts: /tmp is the one writable path (heartbeat, temp files). */}}
{{- define "condo-audit.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end -}}

{{- define "condo-audit.tmpVolumeMount" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* ---------- Validation ---------- */}}

{{- define "condo-audit.validate" -}}
{{- if le (int .Values.config.brokerVisibilityTimeoutSeconds) (int .Values.worker.maxTaskSeconds) -}}
{{- fail "config.brokerVisibilityTimeoutSeconds must exceed worker.maxTaskSeconds, or a running task is delivered twice" -}}
{{- end -}}
{{- if le (int .Values.config.brokerVisibilityTimeoutSeconds) 600 -}}
{{- fail "config.brokerVisibilityTimeoutSeconds must exceed the longest retry countdown (600 s)" -}}
{{- end -}}
{{- if and (not .Values.postgresql.enabled) (not .Values.externalDatabase.existingSecret) (not .Values.externalDatabase.url) -}}
{{- fail "postgresql.enabled is false: set externalDatabase.existingSecret or externalDatabase.url" -}}
{{- end -}}
{{- if and (not .Values.redis.enabled) (not .Values.externalRedis.existingSecret) (not .Values.externalRedis.password) -}}
{{- fail "redis.enabled is false: set externalRedis.existingSecret or externalRedis.password (the platform requires an authenticated Redis)" -}}
{{- end -}}
{{- if lt (int .Values.webhooks.maxReplicaCount) (int .Values.webhooks.minReplicaCount) -}}
{{- fail "webhooks.maxReplicaCount must be >= webhooks.minReplicaCount" -}}
{{- end -}}
{{- if and .Values.keda.enabled (lt (int .Values.keda.maxReplicaCount) (int .Values.keda.minReplicaCount)) -}}
{{- fail "keda.maxReplicaCount must be >= keda.minReplicaCount" -}}
{{- end -}}
{{- end -}}

{{/* Exec probe: the heartbeat file exists and is younger than worker.heartbeatMaxAgeSeconds. */}}
{{- define "condo-audit.worker.heartbeatCheck" -}}
- /bin/sh
- -c
- {{ printf "test -f \"$WORKER_HEARTBEAT_FILE\" && test $(( $(date +%%s) - $(stat -c %%Y \"$WORKER_HEARTBEAT_FILE\") )) -lt %d" (int .Values.worker.heartbeatMaxAgeSeconds) | quote }}
{{- end -}}
