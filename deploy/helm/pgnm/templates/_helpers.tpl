{{/* Full name of the release's objects. */}}
{{- define "pgnm.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "pgnm.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "router"). */}}
{{- define "pgnm.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "pgnm.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "pgnm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "pgnm.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/* Environment shared by every service: Redis, PostgreSQL, logs, worker, credentials. */}}
{{- define "pgnm.env" -}}
- name: PGNM_PREFIX
  value: {{ .Values.prefix | quote }}
- name: PGNM_REDIS_URL
  value: {{ .Values.redis.url | quote }}
- name: PGNM_REDIS_TIMEOUT_MS
  value: {{ .Values.redis.timeoutMs | quote }}
- name: PGNM_DATABASE_URL
  value: {{ .Values.database.url | quote }}
- name: PGNM_DB_POOL_SIZE
  value: {{ .Values.database.poolSize | quote }}
- name: PGNM_DB_TIMEOUT_MS
  value: {{ .Values.database.timeoutMs | quote }}
- name: PGNM_LOG
  value: {{ .Values.log.level | quote }}
- name: PGNM_LOG_FORMAT
  value: {{ .Values.log.format | quote }}
- name: PGNM_ADMIN_ADDR
  value: {{ printf "0.0.0.0:%d" (int .Values.adminPort) | quote }}
- name: PGNM_DRAIN_TIMEOUT_MS
  value: {{ .Values.drainTimeoutMs | quote }}
- name: PGNM_MAX_IN_FLIGHT
  value: {{ .Values.worker.maxInFlight | quote }}
- name: PGNM_CLAIM_IDLE_MS
  value: {{ .Values.worker.claimIdleMs | quote }}
- name: PGNM_MAX_DELIVERIES
  value: {{ .Values.worker.maxDeliveries | quote }}
- name: PGNM_MAX_PAYLOAD_BYTES
  value: {{ .Values.worker.maxPayloadBytes | quote }}
- name: PGNM_INSTANCE
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- if .Values.existingSecret }}
- name: PGNM_REDIS_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ .Values.existingSecret }}
      key: {{ .Values.secretKeys.redisUsername }}
      optional: true
- name: PGNM_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.existingSecret }}
      key: {{ .Values.secretKeys.redisPassword }}
      optional: true
- name: PGNM_DATABASE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.existingSecret }}
      key: {{ .Values.secretKeys.databasePassword }}
      optional: true
{{- end }}
{{- if and .Values.tls.caSecret .Values.tls.redis }}
- name: PGNM_REDIS_CA_FILE
  value: /etc/pgnm/tls/ca.pem
{{- end }}
{{- if and .Values.tls.caSecret .Values.tls.database }}
- name: PGNM_DATABASE_CA_FILE
  value: /etc/pgnm/tls/ca.pem
{{- end }}
{{- end -}}

{{/* Volumes every pod may mount: config files and the CA bundle. */}}
{{- define "pgnm.volumes" -}}
- name: config
  configMap:
    name: {{ include "pgnm.fullname" . }}
{{- if .Values.tls.caSecret }}
- name: tls-ca
  secret:
    secretName: {{ .Values.tls.caSecret }}
    items:
      - key: {{ .Values.tls.caKey }}
        path: ca.pem
{{- end }}
{{- end -}}

{{- define "pgnm.volumeMounts" -}}
- name: config
  mountPath: /etc/pgnm/config
  readOnly: true
{{- if .Values.tls.caSecret }}
- name: tls-ca
  mountPath: /etc/pgnm/tls
  readOnly: true
{{- end }}
{{- end -}}
