{{/* Names, labels and the pieces every qmsflow pod shares. */}}

{{- define "qmsflow.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "qmsflow.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* selector labels of one component: call with (dict "ctx" $ "component" "worker") */}}
{{- define "qmsflow.selectorLabels" -}}
app.kubernetes.io/name: {{ .ctx.Chart.Name }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "qmsflow.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "qmsflow.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* the image, pinned: a digest wins over the tag; an empty or "latest" tag is refused */}}
{{- define "qmsflow.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- if or (not .Values.image.tag) (eq (toString .Values.image.tag) "latest") -}}
{{- fail "image.tag must pin a version (not empty, not \"latest\"), or set image.digest" -}}
{{- end -}}
{{- printf "%s:%s" .Values.image.repository (toString .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "qmsflow.podSpecCommon" -}}
serviceAccountName: {{ include "qmsflow.serviceAccountName" . }}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "qmsflow.containerSecurityContext" -}}
securityContext:
  {{- toYaml .Values.containerSecurityContext | nindent 2 }}
{{- end -}}

{{/*
Environment of one component: call with (dict "ctx" $ "account" "worker" "databaseSecret" ...).
Secrets are only ever secretKeyRef to existing Secrets: no credential is a plain value here.
*/}}
{{- define "qmsflow.env" -}}
{{- $v := .ctx.Values -}}
- name: KAFKA_BOOTSTRAP_SERVERS
  value: {{ $v.kafka.bootstrapServers | quote }}
- name: QMSFLOW_APP_ID
  value: {{ $v.appId | quote }}
- name: QMSFLOW_TOPIC_PREFIX
  value: {{ $v.topicPrefix | quote }}
- name: QMSFLOW_LOG_FORMAT
  value: {{ $v.logFormat | quote }}
- name: QMSFLOW_CACHE_DIR
  value: /tmp/qmsflow-cache
{{- if $v.schemaRegistry.url }}
- name: SCHEMA_REGISTRY_URL
  value: {{ $v.schemaRegistry.url | quote }}
{{- end }}
{{- with .database }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret | quote }}
      key: {{ .urlKey | quote }}
{{- end }}
{{- if $v.kafka.sasl.enabled }}
- name: QMSFLOW_KAFKA_SECURITY_PROTOCOL
  value: {{ $v.kafka.sasl.securityProtocol | quote }}
- name: QMSFLOW_KAFKA_SASL_MECHANISM
  value: {{ $v.kafka.sasl.mechanism | quote }}
- name: QMSFLOW_KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ index $v.kafka.sasl.secrets .account | quote }}
      key: {{ $v.kafka.sasl.usernameKey | quote }}
- name: QMSFLOW_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ index $v.kafka.sasl.secrets .account | quote }}
      key: {{ $v.kafka.sasl.passwordKey | quote }}
{{- end }}
{{- if $v.kafka.tls.caSecret }}
- name: QMSFLOW_KAFKA_SSL_CA_LOCATION
  value: /etc/qmsflow/kafka-ca/ca.crt
{{- end }}
{{- end -}}

{{/* volumes every pod has: /tmp (read-only root filesystem) and the Kafka CA, if any */}}
{{- define "qmsflow.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- if .Values.kafka.tls.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ .Values.kafka.tls.caSecret | quote }}
    items:
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- end -}}

{{- define "qmsflow.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.kafka.tls.caSecret }}
- name: kafka-ca
  mountPath: /etc/qmsflow/kafka-ca
  readOnly: true
{{- end }}
{{- end -}}
