{{/* The prefix of every resource's name: nameOverride, or the release name. */}}
{{- define "fleet.prefix" -}}
{{- $prefix := default .Release.Name .Values.nameOverride -}}
{{- if gt (len $prefix) 30 -}}
{{- fail (printf "name prefix %q is longer than 30 characters: set nameOverride" $prefix) -}}
{{- end -}}
{{- $prefix -}}
{{- end -}}

{{- define "fleet.labels" -}}
app.kubernetes.io/name: codellama-fleet
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | quote }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "gateway"). */}}
{{- define "fleet.selectorLabels" -}}
app.kubernetes.io/name: codellama-fleet
app.kubernetes.io/instance: {{ .root.Release.Name | quote }}
app.kubernetes.io/component: {{ .component | quote }}
{{- end -}}

{{/* What gateways and workers set FLEET_REGISTRY_URL to: the registry's RegistryService, never
its database (only the registry holds database credentials). */}}
{{- define "fleet.registryUrl" -}}
{{- printf "grpc://%s-registry:%d" (include "fleet.prefix" .) (int .Values.registry.port) -}}
{{- end -}}

{{- define "fleet.image" -}}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag | quote -}}
{{- end -}}

{{/* envFrom shared by every role: the ConfigMap, and the Redis URL's Secret if there is one. */}}
{{- define "fleet.sharedEnvFrom" -}}
- configMapRef: {name: {{ printf "%s-config" (include "fleet.prefix" .) }}}
{{- if .Values.redis.urlSecret }}
- secretRef: {name: {{ .Values.redis.urlSecret }}}
{{- end }}
{{- end -}}

{{/* Pod annotations for Prometheus' kubernetes_sd pod role: (dict "root" $ "port" 9100). */}}
{{- define "fleet.scrapeAnnotations" -}}
{{- if .root.Values.metrics.scrapeAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | int | toString | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}

{{/* A worker entry's Deployment (and ScaledObject) name: (dict "root" $ "worker" $w). KEDA
labels the HPA it makes with it, so it must be a valid label value (63 characters at most). */}}
{{- define "fleet.workerName" -}}
{{- $name := printf "%s-worker-%s-%s-%s" (include "fleet.prefix" .root) .worker.pool .worker.model .worker.version -}}
{{- if gt (len $name) 63 -}}
{{- fail (printf "worker name %q is longer than 63 characters: shorten nameOverride" $name) -}}
{{- end -}}
{{- $name -}}
{{- end -}}

{{/* The Celery queue of a worker entry: fleet_common.keys.queue_name. */}}
{{- define "fleet.queueName" -}}
{{- printf "fleet.%s.%s.%s" .pool .model .version -}}
{{- end -}}
