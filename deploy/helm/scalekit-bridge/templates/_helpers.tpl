{{/* Names, labels and the few derived values every template shares. */}}

{{- define "scalekit-bridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "scalekit-bridge.fullname" -}}
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

{{- define "scalekit-bridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "scalekit-bridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "scalekit-bridge.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "scalekit-bridge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: scalekit-bridge
{{- end }}

{{- define "scalekit-bridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "scalekit-bridge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "scalekit-bridge.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The Secret the chart creates for the secrets given as values: "<fullname>-credentials", so that a Secret
named after the release (a Strimzi KafkaUser called like it, say) never clashes with it.
*/}}
{{- define "scalekit-bridge.credentialsSecretName" -}}
{{- printf "%s-credentials" (include "scalekit-bridge.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The Secret holding the webhook signing secret(s). */}}
{{- define "scalekit-bridge.webhookSecretName" -}}
{{- default (include "scalekit-bridge.credentialsSecretName" .) .Values.webhook.existingSecret }}
{{- end }}

{{- define "scalekit-bridge.webhookSecretKey" -}}
{{- if .Values.webhook.existingSecret }}{{ .Values.webhook.existingSecretKey }}{{ else }}SCALEKIT_WEBHOOK_SECRET{{ end }}
{{- end }}

{{- define "scalekit-bridge.sasl" -}}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol }}true{{ end }}
{{- end }}

{{/* The KafkaUser the chart renders (kafkaUser.enabled); Strimzi names its Secret and SCRAM user after it. */}}
{{- define "scalekit-bridge.kafkaUserName" -}}
{{- default (include "scalekit-bridge.fullname" .) .Values.kafkaUser.name }}
{{- end }}

{{- define "scalekit-bridge.saslSecretName" -}}
{{- if .Values.kafkaUser.enabled }}
{{- include "scalekit-bridge.kafkaUserName" . }}
{{- else }}
{{- default (include "scalekit-bridge.credentialsSecretName" .) .Values.kafka.sasl.existingSecret }}
{{- end }}
{{- end }}

{{/* The password's key in that Secret: Strimzi writes a SCRAM user's password under `password`. */}}
{{- define "scalekit-bridge.saslPasswordKey" -}}
{{- if .Values.kafkaUser.enabled }}password{{ else }}{{ .Values.kafka.sasl.passwordKey }}{{ end }}
{{- end }}

{{/*
The SASL user when it is not in the Secret: the KafkaUser's name, or kafka.sasl.username beside an
existing Secret (a Strimzi SCRAM user's Secret holds only the password). Empty: the Secret holds it.
*/}}
{{- define "scalekit-bridge.saslUsernameValue" -}}
{{- if .Values.kafkaUser.enabled }}
{{- include "scalekit-bridge.kafkaUserName" . }}
{{- else if .Values.kafka.sasl.existingSecret }}
{{- .Values.kafka.sasl.username }}
{{- end }}
{{- end }}

{{/* The Secret with the TLS client certificate: the KafkaUser's (authentication tls) or the one named. */}}
{{- define "scalekit-bridge.clientCertSecretName" -}}
{{- if and .Values.kafkaUser.enabled (eq .Values.kafka.securityProtocol "SSL") }}
{{- include "scalekit-bridge.kafkaUserName" . }}
{{- else }}
{{- .Values.kafka.clientCertSecret }}
{{- end }}
{{- end }}

{{/*
Secrets reach the containers as files (Secret volumes, never subPath), named by *_FILE variables: the
kubelet rewrites them when the Secret changes, and the bridge follows them, so a rotated secret takes
effect without a restart. `files` lists the pieces a container gets: webhook, sasl, api.
*/}}
{{- define "scalekit-bridge.secretFileEnv" -}}
{{- $files := .files }}
{{- with .root }}
{{- if has "webhook" $files }}
- name: SCALEKIT_WEBHOOK_SECRET_FILE
  value: /etc/scalekit-bridge/webhook/secret
{{- end }}
{{- if and (has "sasl" $files) (include "scalekit-bridge.sasl" .) }}
{{- $username := include "scalekit-bridge.saslUsernameValue" . }}
{{- if $username }}
- name: KAFKA_SASL_USERNAME
  value: {{ $username | quote }}
{{- else }}
- name: KAFKA_SASL_USERNAME_FILE
  value: /etc/scalekit-bridge/kafka-sasl/username
{{- end }}
- name: KAFKA_SASL_PASSWORD_FILE
  value: /etc/scalekit-bridge/kafka-sasl/password
{{- end }}
{{- if has "api" $files }}
- name: SCALEKIT_CLIENT_ID_FILE
  value: /etc/scalekit-bridge/scalekit-api/client-id
- name: SCALEKIT_CLIENT_SECRET_FILE
  value: /etc/scalekit-bridge/scalekit-api/client-secret
{{- end }}
{{- if and .Values.tracing.enabled .Values.tracing.headersSecret }}
# The collector's credentials: read by the OpenTelemetry SDK, never in the ConfigMap.
- name: OTEL_EXPORTER_OTLP_HEADERS
  valueFrom:
    secretKeyRef:
      name: {{ .Values.tracing.headersSecret }}
      key: {{ .Values.tracing.headersSecretKey }}
{{- end }}
{{- end }}
{{- end }}

{{- define "scalekit-bridge.secretMounts" -}}
{{- $files := .files }}
{{- with .root }}
volumeMounts:
  {{- if has "webhook" $files }}
  - name: webhook-secret
    mountPath: /etc/scalekit-bridge/webhook
    readOnly: true
  {{- end }}
  {{- if and (has "sasl" $files) (include "scalekit-bridge.sasl" .) }}
  - name: kafka-sasl
    mountPath: /etc/scalekit-bridge/kafka-sasl
    readOnly: true
  {{- end }}
  {{- if has "api" $files }}
  - name: scalekit-api
    mountPath: /etc/scalekit-bridge/scalekit-api
    readOnly: true
  {{- end }}
  {{- if .Values.kafka.caSecret }}
  - name: kafka-ca
    mountPath: /etc/scalekit-bridge/kafka-ca
    readOnly: true
  {{- end }}
  {{- if include "scalekit-bridge.clientCertSecretName" . }}
  - name: kafka-client
    mountPath: /etc/scalekit-bridge/kafka-client
    readOnly: true
  {{- end }}
{{- end }}
{{- end }}

{{- define "scalekit-bridge.secretVolumes" -}}
{{- $files := .files }}
{{- with .root }}
volumes:
  {{- if has "webhook" $files }}
  - name: webhook-secret
    secret:
      secretName: {{ include "scalekit-bridge.webhookSecretName" . }}
      items:
        - key: {{ include "scalekit-bridge.webhookSecretKey" . }}
          path: secret
  {{- end }}
  {{- if and (has "sasl" $files) (include "scalekit-bridge.sasl" .) }}
  - name: kafka-sasl
    secret:
      secretName: {{ include "scalekit-bridge.saslSecretName" . }}
      items:
        {{- if not (include "scalekit-bridge.saslUsernameValue" .) }}
        - key: {{ .Values.kafka.sasl.usernameKey }}
          path: username
        {{- end }}
        - key: {{ include "scalekit-bridge.saslPasswordKey" . }}
          path: password
  {{- end }}
  {{- if has "api" $files }}
  - name: scalekit-api
    secret:
      secretName: {{ include "scalekit-bridge.backfillSecretName" . }}
      items:
        - key: {{ .Values.backfill.clientIdKey }}
          path: client-id
        - key: {{ .Values.backfill.clientSecretKey }}
          path: client-secret
  {{- end }}
  {{- if .Values.kafka.caSecret }}
  - name: kafka-ca
    secret:
      secretName: {{ .Values.kafka.caSecret }}
  {{- end }}
  {{- $clientCert := include "scalekit-bridge.clientCertSecretName" . }}
  {{- if $clientCert }}
  - name: kafka-client
    secret:
      secretName: {{ $clientCert }}
      items:
        - key: {{ .Values.kafka.clientCertKey }}
          path: tls.crt
        - key: {{ .Values.kafka.clientKeyKey }}
          path: tls.key
  {{- end }}
{{- end }}
{{- end }}

{{/*
The backfill's pods: their own name label, so the Service, the PodDisruptionBudget and the webhook
NetworkPolicy (which select the bridge's pods) never pick them up.
*/}}
{{- define "scalekit-bridge.backfillSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-backfill" (include "scalekit-bridge.name" .) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: backfill
{{- end }}

{{/* The replay's pods: their own name label, for the same reason as the backfill's. */}}
{{- define "scalekit-bridge.replaySelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-replay" (include "scalekit-bridge.name" .) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: replay
{{- end }}

{{/* The replay CronJob's name: at most 52 characters, as Kubernetes asks of CronJobs. */}}
{{- define "scalekit-bridge.replayName" -}}
{{- printf "%s-replay" (include "scalekit-bridge.fullname" .) | trunc 52 | trimSuffix "-" }}
{{- end }}

{{/* Egress rules shared by the bridge, the backfill and the replay: DNS, then the brokers. */}}
{{- define "scalekit-bridge.egressToKafka" -}}
# DNS, to resolve the brokers.
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
- ports:
    {{- range .Values.networkPolicy.egress.kafkaPorts }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with .Values.networkPolicy.egress.kafkaPeers }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- if .Values.tracing.enabled }}
# The trace collector (OTLP/HTTP).
- ports:
    {{- range .Values.tracing.collectorPorts }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with .Values.tracing.collectorPeers }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end }}

{{/* The admin port's ClusterIP Service; also the Prometheus job name a ServiceMonitor gives the bridge. */}}
{{- define "scalekit-bridge.adminServiceName" -}}
{{- printf "%s-admin" (include "scalekit-bridge.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The backfill CronJob's name: at most 52 characters, as Kubernetes asks of CronJobs. */}}
{{- define "scalekit-bridge.backfillName" -}}
{{- printf "%s-backfill" (include "scalekit-bridge.fullname" .) | trunc 52 | trimSuffix "-" }}
{{- end }}

{{/* The Secret holding the backfill's Scalekit API credentials. */}}
{{- define "scalekit-bridge.backfillSecretName" -}}
{{- default (printf "%s-backfill" (include "scalekit-bridge.fullname" .) | trunc 63 | trimSuffix "-") .Values.backfill.existingSecret }}
{{- end }}

{{/*
Seconds the pod may take to stop: the preStop sleep, then the bridge's drain (BRIDGE_SHUTDOWN_GRACE),
which must last at least the publish timeout so every in-flight delivery gets its answer, then a
3-second margin for the process to exit.
*/}}
{{- define "scalekit-bridge.terminationGrace" -}}
{{- $floor := add (int .Values.preStopSleepSeconds) (int (ceil .Values.config.publishTimeoutSeconds)) 3 }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $floor 12 }}
{{- else if lt (int .Values.terminationGracePeriodSeconds) (int $floor) }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be at least preStopSleepSeconds + config.publishTimeoutSeconds + 3 (%v), or in-flight deliveries are killed before they are answered" .Values.terminationGracePeriodSeconds $floor) }}
{{- else if gt (int .Values.terminationGracePeriodSeconds) (add (int .Values.preStopSleepSeconds) 603) }}
{{- fail (printf "terminationGracePeriodSeconds (%v) may be at most preStopSleepSeconds + 603 (%v): the bridge's shutdown grace (BRIDGE_SHUTDOWN_GRACE) is at most 600 s" .Values.terminationGracePeriodSeconds (add (int .Values.preStopSleepSeconds) 603)) }}
{{- else }}
{{- .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* BRIDGE_SHUTDOWN_GRACE: the grace period less the preStop sleep and the exit margin. */}}
{{- define "scalekit-bridge.shutdownGrace" -}}
{{- sub (sub (int (include "scalekit-bridge.terminationGrace" .)) (int .Values.preStopSleepSeconds)) 3 }}
{{- end }}

{{/* Fail early, with the value to set, on the settings a working install cannot do without. */}}
{{- define "scalekit-bridge.validate" -}}
{{- if and (not .Values.webhook.secret) (not .Values.webhook.existingSecret) }}
{{- fail "set webhook.secret (the whsec_ secret from Scalekit's dashboard) or webhook.existingSecret (a Secret holding it)" }}
{{- end }}
{{- if not .Values.kafka.bootstrapServers }}
{{- fail "set kafka.bootstrapServers (the Kafka broker list, e.g. my-cluster-kafka-bootstrap.kafka:9092)" }}
{{- end }}
{{- if include "scalekit-bridge.sasl" . }}
{{- if not .Values.kafka.sasl.mechanism }}
{{- fail (printf "kafka.securityProtocol=%s needs kafka.sasl.mechanism (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)" .Values.kafka.securityProtocol) }}
{{- end }}
{{- if .Values.kafkaUser.enabled }}
{{- if ne .Values.kafka.sasl.mechanism "SCRAM-SHA-512" }}
{{- fail (printf "kafkaUser.enabled with kafka.securityProtocol=%s needs kafka.sasl.mechanism SCRAM-SHA-512, the one Strimzi's scram-sha-512 users have" .Values.kafka.securityProtocol) }}
{{- end }}
{{- if or .Values.kafka.sasl.existingSecret .Values.kafka.sasl.username .Values.kafka.sasl.password }}
{{- fail "kafkaUser.enabled takes the credentials from the KafkaUser's Secret: leave kafka.sasl.username, password and existingSecret empty" }}
{{- end }}
{{- else if and (not .Values.kafka.sasl.existingSecret) (or (not .Values.kafka.sasl.username) (not .Values.kafka.sasl.password)) }}
{{- fail (printf "kafka.securityProtocol=%s needs kafka.sasl.username and kafka.sasl.password, or kafka.sasl.existingSecret" .Values.kafka.securityProtocol) }}
{{- end }}
{{- end }}
{{- if .Values.kafkaUser.enabled }}
{{- if not (has .Values.kafka.securityProtocol (list "SSL" "SASL_SSL" "SASL_PLAINTEXT")) }}
{{- fail "kafkaUser.enabled needs kafka.securityProtocol SSL (a tls user) or SASL_SSL / SASL_PLAINTEXT (a scram-sha-512 user)" }}
{{- end }}
{{- if and (eq .Values.kafka.securityProtocol "SSL") .Values.kafka.clientCertSecret }}
{{- fail "kafkaUser.enabled takes the client certificate from the KafkaUser's Secret: leave kafka.clientCertSecret empty" }}
{{- end }}
{{- if not (default .Values.kafkaTopics.clusterName .Values.kafkaUser.clusterName) }}
{{- fail "kafkaUser.enabled needs kafkaUser.clusterName (or kafkaTopics.clusterName): the Strimzi Kafka cluster's name" }}
{{- end }}
{{- end }}
{{- $own := include "scalekit-bridge.credentialsSecretName" . }}
{{- range $name := list .Values.webhook.existingSecret .Values.kafka.sasl.existingSecret .Values.kafka.clientCertSecret .Values.kafka.caSecret }}
{{- if eq $name $own }}
{{- fail (printf "%s is the name of the Secret this chart creates for values it is given: name your own Secret otherwise" $own) }}
{{- end }}
{{- end }}
{{- if and .Values.kafka.clientCertSecret (not (has .Values.kafka.securityProtocol (list "SSL" "SASL_SSL"))) }}
{{- fail (printf "kafka.clientCertSecret needs kafka.securityProtocol SSL or SASL_SSL, not %s" .Values.kafka.securityProtocol) }}
{{- end }}
{{- if and .Values.tracing.enabled (not .Values.tracing.endpoint) }}
{{- fail "tracing.enabled needs tracing.endpoint (your collector's OTLP/HTTP URL, e.g. http://otel-collector.observability:4318)" }}
{{- end }}
{{- if eq (int .Values.service.port) (int .Values.service.adminPort) }}
{{- fail (printf "service.adminPort (%v) must differ from service.port" .Values.service.adminPort) }}
{{- end }}
{{- if gt (int .Values.config.topicMinInsyncReplicas) (int .Values.config.topicReplication) }}
{{- fail (printf "config.topicMinInsyncReplicas (%v) must not exceed config.topicReplication (%v)" .Values.config.topicMinInsyncReplicas .Values.config.topicReplication) }}
{{- end }}
{{- if and .Values.httpRoute.enabled (not .Values.httpRoute.parentRefs) }}
{{- fail "httpRoute.enabled needs httpRoute.parentRefs (the Gateway to attach to, e.g. name: public, namespace: gateways)" }}
{{- end }}
{{- if and .Values.ingress.enabled (not .Values.ingress.host) }}
{{- fail "ingress.enabled needs ingress.host (the public host name Scalekit will call)" }}
{{- end }}
{{- if and .Values.kafkaTopics.enabled (not .Values.kafkaTopics.clusterName) }}
{{- fail "kafkaTopics.enabled needs kafkaTopics.clusterName (the Strimzi Kafka cluster's name)" }}
{{- end }}
{{- if .Values.backfill.enabled }}
{{- if not .Values.backfill.environmentUrl }}
{{- fail "backfill.enabled needs backfill.environmentUrl (your Scalekit environment URL, https://<env>.scalekit.com)" }}
{{- end }}
{{- if and (not .Values.backfill.existingSecret) (or (not .Values.backfill.clientId) (not .Values.backfill.clientSecret)) }}
{{- fail "backfill.enabled needs backfill.clientId and backfill.clientSecret (a Scalekit API client), or backfill.existingSecret" }}
{{- end }}
{{- if and (not .Values.eventTypes) (not .Values.backfill.allEventTypes) }}
{{- fail "backfill.enabled needs eventTypes (the types your Scalekit endpoint is subscribed to): without them the backfill writes every type the environment has, personal-data types included, into topics nobody subscribed to. Set backfill.allEventTypes=true if that is what you want" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The Strimzi API to render: the value, else v1 (Strimzi 0.49+, and the only one 1.0+ serves) unless the
cluster serves v1beta2 alone (Strimzi before 0.49). Rendering v1beta2 on a 0.49-0.52 cluster would leave
the release unable to upgrade once Strimzi 1.0 stops serving it.
*/}}
{{- define "scalekit-bridge.strimziApiVersion" -}}
{{- if .Values.kafkaTopics.apiVersion }}
{{- .Values.kafkaTopics.apiVersion }}
{{- else if and (.Capabilities.APIVersions.Has "kafka.strimzi.io/v1beta2") (not (.Capabilities.APIVersions.Has "kafka.strimzi.io/v1")) }}
{{- "kafka.strimzi.io/v1beta2" }}
{{- else }}
{{- "kafka.strimzi.io/v1" }}
{{- end }}
{{- end }}

{{/* The release's own topics: named after its topic prefix unless set (the bridge derives them the same way). */}}
{{- define "scalekit-bridge.deadletterTopic" -}}
{{- default (printf "%sdeadletter" .Values.config.topicPrefix) .Values.config.deadletterTopic }}
{{- end }}

{{- define "scalekit-bridge.receiptsTopic" -}}
{{- default (printf "%sdedup-receipts" .Values.config.topicPrefix) .Values.dedup.receiptsTopic }}
{{- end }}

{{- define "scalekit-bridge.stateTopic" -}}
{{- default (printf "%sbackfill-state" .Values.config.topicPrefix) .Values.backfill.stateTopic }}
{{- end }}

{{/* A Kubernetes name for a topic (no '_', at most 253 characters). */}}
{{- define "scalekit-bridge.topicResourceName" -}}
{{- . | lower | replace "_" "-" | trunc 253 | trimSuffix "-" | trimSuffix "." }}
{{- end }}

{{/*
What every container of the release gets besides its own variables: extraEnv and extraEnvFrom (a proxy,
OTEL_* settings, a CA path), so the bridge, backfill, replay and the helm test pod see the same environment.
*/}}
{{- define "scalekit-bridge.extraEnv" -}}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "scalekit-bridge.extraEnvFrom" -}}
{{- with .Values.extraEnvFrom }}
{{ toYaml . }}
{{- end }}
{{- end }}
