{{/*
Names, labels and the pieces every microturn pod shares. Component templates pass a dict
(dict "ctx" $ "component" "edge") where a helper needs both the root context and a component.
*/}}

{{/* The chart name (nameOverride), cut to 63 characters: a DNS label. */}}
{{- define "microturn.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The object name prefix: fullnameOverride, else <release>-<name> (just <release> when it already contains the name). */}}
{{- define "microturn.fullname" -}}
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

{{/* <fullname>-<suffix>, cut to 63 characters (ctx, suffix). */}}
{{- define "microturn.componentName" -}}
{{- printf "%s-%s" (include "microturn.fullname" .ctx | trunc (int (sub 62 (len .suffix)))) .suffix | trimSuffix "-" -}}
{{- end -}}

{{/* chart label value: name-version. */}}
{{- define "microturn.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of the release (no component). */}}
{{- define "microturn.selectorLabels" -}}
app.kubernetes.io/name: {{ include "microturn.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "microturn.labels" -}}
helm.sh/chart: {{ include "microturn.chart" . }}
{{ include "microturn.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: microturn
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component (ctx, component). */}}
{{- define "microturn.componentSelectorLabels" -}}
{{ include "microturn.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Labels of one component's objects (ctx, component). */}}
{{- define "microturn.componentLabels" -}}
{{ include "microturn.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The microturn image reference: registry/repository, then @digest or :tag (default appVersion). */}}
{{- define "microturn.image" -}}
{{- $img := .Values.image -}}
{{- $repo := $img.repository -}}
{{- if $img.registry }}{{ $repo = printf "%s/%s" $img.registry $img.repository }}{{ end -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $repo $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo ($img.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* ServiceAccount name of a component (ctx, component). */}}
{{- define "microturn.serviceAccountName" -}}
{{- if .ctx.Values.serviceAccount.create -}}
{{- include "microturn.componentName" (dict "ctx" .ctx "suffix" .component) -}}
{{- else -}}
{{- default "default" .ctx.Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Namespace of the NATS release. */}}
{{- define "microturn.natsNamespace" -}}
{{- default .Release.Namespace .Values.nats.namespace -}}
{{- end -}}

{{/* The NATS client URL every service connects to (MICROTURN_NATS__URL; no credentials in it). */}}
{{- define "microturn.natsUrl" -}}
{{- if .Values.nats.url -}}
{{- .Values.nats.url -}}
{{- else -}}
{{- printf "nats://%s.%s.svc.cluster.local:%d" .Values.nats.host (include "microturn.natsNamespace" .) (int .Values.nats.port) -}}
{{- end -}}
{{- end -}}

{{/* The NATS monitoring endpoint KEDA polls. */}}
{{- define "microturn.natsMonitoringEndpoint" -}}
{{- if .Values.keda.natsServerMonitoringEndpoint -}}
{{- .Values.keda.natsServerMonitoringEndpoint -}}
{{- else -}}
{{- printf "%s-headless.%s.svc.cluster.local:%d" .Values.nats.host (include "microturn.natsNamespace" .) (int .Values.nats.monitorPort) -}}
{{- end -}}
{{- end -}}

{{/* Secret with the NATS passwords (keys: the user names). */}}
{{- define "microturn.natsSecretName" -}}
{{- if .Values.nats.auth.existingSecret -}}
{{- .Values.nats.auth.existingSecret -}}
{{- else -}}
{{- default (include "microturn.componentName" (dict "ctx" . "suffix" "nats-credentials")) .Values.nats.auth.secretName -}}
{{- end -}}
{{- end -}}

{{/* Secret with the session-token HMAC key. */}}
{{- define "microturn.tokenSecretName" -}}
{{- default (include "microturn.componentName" (dict "ctx" . "suffix" "session-token")) .Values.edge.tokenSecret.existingSecret -}}
{{- end -}}

{{/* Secret with the TURN password. */}}
{{- define "microturn.turnSecretName" -}}
{{- default (include "microturn.componentName" (dict "ctx" . "suffix" "turn")) .Values.turn.existingSecret -}}
{{- end -}}

{{/* Names of the Services other components dial. */}}
{{- define "microturn.edgeServiceName" -}}{{ include "microturn.componentName" (dict "ctx" . "suffix" "edge") }}{{- end -}}
{{- define "microturn.interactionGrpcServiceName" -}}{{ include "microturn.componentName" (dict "ctx" . "suffix" "interaction-grpc") }}{{- end -}}
{{- define "microturn.rayServiceName" -}}{{ include "microturn.componentName" (dict "ctx" . "suffix" "interaction") }}{{- end -}}
{{- define "microturn.toolsServiceName" -}}{{ include "microturn.componentName" (dict "ctx" . "suffix" "tools") }}{{- end -}}
{{- define "microturn.backgroundServiceName" -}}{{ include "microturn.componentName" (dict "ctx" . "suffix" "background-metrics") }}{{- end -}}
{{- define "microturn.turnServiceName" -}}{{ include "microturn.componentName" (dict "ctx" . "suffix" "turn") }}{{- end -}}

{{/* A model version as a label value and name part, exactly as microturn.rollout.kube.slug makes it:
lowercase, every character other than [a-z0-9-] replaced by "-", "-" trimmed from both ends, at most
40 characters (the operator names a candidate's RayService and Service by it and labels its pods). */}}
{{- define "microturn.versionSlug" -}}
{{- regexReplaceAll "[^a-z0-9-]" (lower .) "-" | trimAll "-" | trunc 40 -}}
{{- end -}}

{{/* microturn.io/model-version of the chart's RayService pods: the slug of interaction.modelVersion. */}}
{{- define "microturn.stableVersionLabel" -}}
microturn.io/model-version: {{ include "microturn.versionSlug" .Values.interaction.modelVersion | quote }}
{{- end -}}

{{/*
"true" once a rollout has handed the interaction service over from the chart's RayService to one the
rollout operator made (<rayServiceName>-<version slug>) and retired the chart's: then the chart does
not render its RayService again (a helm upgrade would bring back the version that lost, beside the one
serving every call). While the chart's RayService exists it is rendered (it may still have calls).
`helm template` and --dry-run=client see no cluster: the RayService is rendered.
*/}}
{{- define "microturn.rayServiceHandedOver" -}}
{{- if .Values.rollout.operator.enabled -}}
{{- $name := include "microturn.rayServiceName" . -}}
{{- if not (lookup "ray.io/v1" "RayService" .Release.Namespace $name) -}}
{{- range (lookup "ray.io/v1" "RayService" .Release.Namespace "").items | default list -}}
{{- if hasPrefix (printf "%s-" $name) .metadata.name -}}true{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The routing table's ConfigMap (rollout.routingConfigMap). */}}
{{- define "microturn.routingConfigMapName" -}}
{{- default (include "microturn.componentName" (dict "ctx" . "suffix" "routing")) .Values.rollout.routingConfigMap -}}
{{- end -}}

{{/* The rollout operator's kopf peering (KopfPeering object, MICROTURN_ROLLOUT__PEERING). */}}
{{- define "microturn.rolloutPeeringName" -}}{{ include "microturn.componentName" (dict "ctx" . "suffix" "rollout") }}{{- end -}}

{{/* host:port of the interaction gRPC endpoint (MICROTURN_EDGE__INTERACTION_TARGET). */}}
{{- define "microturn.interactionTarget" -}}
{{- printf "%s.%s.svc.cluster.local:%d" (include "microturn.interactionGrpcServiceName" .) .Release.Namespace (int .Values.interaction.grpcPort) -}}
{{- end -}}

{{/* The config file path inside every microturn container. */}}
{{- define "microturn.configPath" -}}/etc/microturn/config.yaml{{- end -}}

{{/* Pod annotations: config and secret checksums (a change rolls the pods), plus the component's own. */}}
{{- define "microturn.podAnnotations" -}}
{{- $ctx := .ctx -}}
checksum/config: {{ include (print $ctx.Template.BasePath "/configmap.yaml") $ctx | sha256sum }}
checksum/secret: {{ include "microturn.secretChecksum" $ctx }}
{{- with .annotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* What the pods read from Secrets, hashed: the Secret names, and the generated Secrets' content
(stable across upgrades: the values are looked up and kept). */}}
{{- define "microturn.secretChecksum" -}}
{{- $parts := list (include "microturn.natsSecretName" .) (include "microturn.tokenSecretName" .) (include "microturn.turnSecretName" .) -}}
{{- $parts = append $parts (include (print .Template.BasePath "/secrets.yaml") .) -}}
{{- join "\n" $parts | sha256sum -}}
{{- end -}}

{{/* Pod-level settings shared by every pod (ctx, component, spec: the component's values). */}}
{{- define "microturn.podCommon" -}}
{{- $ctx := .ctx -}}
serviceAccountName: {{ include "microturn.serviceAccountName" (dict "ctx" $ctx "component" .component) }}
automountServiceAccountToken: {{ .automount | default false }}
{{- with $ctx.Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . | quote }}
{{- end }}
{{- end }}
securityContext:
  {{- toYaml $ctx.Values.podSecurityContext | nindent 2 }}
{{- with .spec }}
{{- with .priorityClassName }}
priorityClassName: {{ . | quote }}
{{- end }}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Container security context. */}}
{{- define "microturn.containerSecurityContext" -}}
securityContext:
  {{- toYaml .Values.containerSecurityContext | nindent 2 }}
{{- end -}}

{{/* Env every microturn container gets: the config file, the state dir, HOME on the writable /tmp. */}}
{{- define "microturn.baseEnv" -}}
- name: MICROTURN_CONFIG
  value: {{ include "microturn.configPath" . | quote }}
- name: MICROTURN_STATE_DIR
  value: /tmp/microturn
- name: HOME
  value: /tmp
{{- end -}}

{{/* NATS wiring of a bus client (ctx, user): URL, topology off, and the user's credentials. */}}
{{- define "microturn.natsEnv" -}}
{{- $ctx := .ctx -}}
- name: MICROTURN_NATS__URL
  value: {{ include "microturn.natsUrl" $ctx | quote }}
- name: MICROTURN_BUS__MANAGE_TOPOLOGY
  value: "false"
{{- if $ctx.Values.nats.auth.enabled }}
- name: MICROTURN_NATS__USER
  value: {{ .user | quote }}
- name: MICROTURN_NATS__PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "microturn.natsSecretName" $ctx }}
      key: {{ .user }}
{{- end }}
{{- include "microturn.natsTlsEnv" $ctx }}
{{- end -}}

{{/* NATS client TLS (ctx): the CA (and, for mutual TLS, a client certificate) from a Secret in the
cert-manager layout (ca.crt, tls.crt, tls.key), mounted by microturn.tlsVolumes/tlsMounts. */}}
{{- define "microturn.natsTlsEnv" -}}
{{- with .Values.nats.tls }}{{ if .enabled }}
- name: MICROTURN_NATS__TLS_CA
  value: /etc/microturn-tls/nats/ca.crt
{{- if .clientCert }}
- name: MICROTURN_NATS__TLS_CERT
  value: /etc/microturn-tls/nats/tls.crt
- name: MICROTURN_NATS__TLS_KEY
  value: /etc/microturn-tls/nats/tls.key
{{- end }}
{{- if .handshakeFirst }}
- name: MICROTURN_NATS__TLS_HANDSHAKE_FIRST
  value: "true"
{{- end }}
{{- end }}{{ end }}
{{- end -}}

{{/* Secret volumes of the TLS material a pod needs (ctx, tools: whether it serves the Tools gRPC API). */}}
{{- define "microturn.tlsVolumes" -}}
{{- if .ctx.Values.nats.tls.enabled }}
- name: nats-tls
  secret:
    secretName: {{ required "nats.tls.secretName is required with nats.tls.enabled" .ctx.Values.nats.tls.secretName }}
{{- end }}
{{- if and .tools .ctx.Values.tools.grpcTls.enabled }}
- name: tools-grpc-tls
  secret:
    secretName: {{ required "tools.grpcTls.secretName is required with tools.grpcTls.enabled" .ctx.Values.tools.grpcTls.secretName }}
{{- end }}
{{- end -}}

{{- define "microturn.tlsMounts" -}}
{{- if .ctx.Values.nats.tls.enabled }}
- name: nats-tls
  mountPath: /etc/microturn-tls/nats
  readOnly: true
{{- end }}
{{- if and .tools .ctx.Values.tools.grpcTls.enabled }}
- name: tools-grpc-tls
  mountPath: /etc/microturn-tls/tools-grpc
  readOnly: true
{{- end }}
{{- end -}}

{{/* Metrics endpoint wiring of a bus service (port). */}}
{{- define "microturn.metricsEnv" -}}
- name: MICROTURN_TELEMETRY__METRICS_HOST
  value: "0.0.0.0"
- name: MICROTURN_TELEMETRY__METRICS_PORT
  value: {{ . | quote }}
{{- end -}}

{{/* Config volume (the ConfigMap named by .name) and /tmp. */}}
{{- define "microturn.volumes" -}}
- name: config
  configMap:
    name: {{ .name }}
- name: tmp
  emptyDir:
    sizeLimit: {{ .tmpSize }}
{{- end -}}

{{- define "microturn.volumeMounts" -}}
- name: config
  mountPath: /etc/microturn
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* HTTP probes on /healthz of a port name (startup allows a slow model load). */}}
{{- define "microturn.httpProbes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: {{ . }}
  periodSeconds: 5
  failureThreshold: 60
readinessProbe:
  httpGet:
    path: /healthz
    port: {{ . }}
  periodSeconds: 5
  failureThreshold: 2
livenessProbe:
  httpGet:
    path: /healthz
    port: {{ . }}
  periodSeconds: 10
  failureThreshold: 6
{{- end -}}

{{/*
The effective settings of the Serve replicas' sections: settings-defaults.yaml (pydantic's defaults)
<- .Values.config <- the chart's wiring. Returned as YAML of the full sections.
*/}}
{{- define "microturn.replicaEffective" -}}
{{- $defaults := .Files.Get "files/settings-defaults.yaml" | fromYaml -}}
{{- $user := .Values.config | default dict -}}
{{- $i := .Values.interaction -}}
{{- $a := $i.serve.autoscaling -}}
{{- $nats := dict "url" (include "microturn.natsUrl" .) -}}
{{- /* No credentials or TLS files: the worker pods' environment has them
(serve_config.FROM_POD_ENV). The same values are the Ray pods' MICROTURN_* environment
(microturn.rayContainerEnv). */ -}}
{{- $wiring := dict
  "nats" $nats
  "bus" (dict "manage_topology" false)
  "interaction" (dict
      "host" "0.0.0.0"
      "grpc_port" $i.grpcPort
      "http_port" $i.httpPort
      "replicas" $i.serve.replicas
      "num_cpus" $i.serve.numCpus
      "num_gpus" (ternary $i.gpu.perReplica 0 $i.gpu.enabled)
      "drain_policy" $i.serve.drain.policy
      "drain_wait_s" $i.serve.drain.waitSeconds
      "drain_timeout_s" $i.serve.drain.timeoutSeconds
      "autoscaling" (dict
          "enabled" $a.enabled
          "min_replicas" $a.minReplicas
          "max_replicas" $a.maxReplicas
          "target_sessions" $a.targetSessions
          "target_tick_utilisation" $a.targetTickUtilisation
          "headroom_sessions" $a.headroomSessions
          "upscale_delay_s" $a.upscaleDelaySeconds
          "downscale_delay_s" $a.downscaleDelaySeconds
          "look_back_period_s" $a.lookBackPeriodSeconds
          "metrics_interval_s" $a.metricsIntervalSeconds)) -}}
{{- $out := dict -}}
{{- range $section, $fields := $defaults -}}
{{- $eff := deepCopy $fields -}}
{{- $from := get $user $section -}}
{{- if kindIs "map" $from }}{{ $eff = mergeOverwrite $eff (deepCopy $from) }}{{ end -}}
{{- $eff = mergeOverwrite $eff (get $wiring $section | default dict) -}}
{{- $_ := set $out $section $eff -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* args.settings of the Serve application: the effective replica sections without their defaults
(serve_config.replica_settings, pydantic's model_dump(exclude_defaults=True)). */}}
{{- define "microturn.replicaSettings" -}}
{{- $defaults := .Files.Get "files/settings-defaults.yaml" | fromYaml -}}
{{- $eff := include "microturn.replicaEffective" . | fromYaml -}}
{{- include "microturn.nonDefault" (dict "values" $eff "defaults" $defaults) -}}
{{- end -}}

{{/* YAML of the entries of .values that differ from .defaults, recursively: a nested mapping keeps only
its sub-fields that differ, and is dropped when none does (sections, and nested settings models such
as interaction.autoscaling, the way model_dump(exclude_defaults=True) treats them). */}}
{{- define "microturn.nonDefault" -}}
{{- $d := .defaults | default dict -}}
{{- $kept := dict -}}
{{- range $k, $v := .values -}}
{{- if not (hasKey $d $k) -}}
{{- $_ := set $kept $k $v -}}
{{- else if and (kindIs "map" $v) (kindIs "map" (get $d $k)) -}}
{{- $sub := include "microturn.nonDefault" (dict "values" $v "defaults" (get $d $k)) | fromYaml -}}
{{- if $sub }}{{ $_ := set $kept $k $sub }}{{ end -}}
{{- else if ne (toJson $v) (toJson (get $d $k)) -}}
{{- $_ := set $kept $k $v -}}
{{- end -}}
{{- end -}}
{{- toYaml $kept -}}
{{- end -}}

{{/* Serve's graceful_shutdown_timeout_s for the effective interaction settings (dict), as
InteractionSettings.graceful_shutdown_timeout_s: noticing the stop, the wait (policy wait), the drain,
and 5 s for the last streams to close. */}}
{{- define "microturn.gracefulShutdownTimeout" -}}
{{- $waited := ternary .drain_wait_s 0 (eq .drain_policy "wait") -}}
{{- addf .stop_poll_s $waited .drain_timeout_s 5.0 -}}
{{- end -}}

{{/* The Serve config (serveConfigV2): files/serve.yaml (a copy of the package's serve.yaml) overridden
exactly as microturn.interaction.serve_config.render() does for the same settings. */}}
{{- define "microturn.serveConfig" -}}
{{- $doc := .Files.Get "files/serve.yaml" | fromYaml -}}
{{- $cfg := get (include "microturn.replicaEffective" . | fromYaml) "interaction" -}}
{{- $_ := mergeOverwrite $doc.http_options (dict "host" $cfg.host "port" $cfg.http_port) -}}
{{- $_ = set $doc.grpc_options "port" $cfg.grpc_port -}}
{{- $app := index $doc.applications 0 -}}
{{- $_ = set $app "name" $cfg.app_name -}}
{{- $_ = set $app "route_prefix" (printf "/%s" $cfg.app_name) -}}
{{- $_ = set $app "args" (dict "settings" (include "microturn.replicaSettings" . | fromYaml)) -}}
{{- $dep := index $app.deployments 0 -}}
{{- $slots2 := mul 2 (int $cfg.session_slots) -}}
{{- $as := $cfg.autoscaling -}}
{{- if $as.enabled -}}
{{- /* microturn.interaction.autoscaling.autoscaling_config */ -}}
{{- $_ = unset $dep "num_replicas" -}}
{{- $policy := dict
  "policy_function" "microturn.interaction.autoscaling:SessionLoadPolicy"
  "policy_kwargs" (dict
      "target_sessions" $as.target_sessions
      "target_tick_utilisation" $as.target_tick_utilisation
      "headroom_sessions" $as.headroom_sessions) -}}
{{- $_ = set $dep "autoscaling_config" (dict
  "min_replicas" $as.min_replicas
  "initial_replicas" (max (int $as.min_replicas) 1)
  "max_replicas" $as.max_replicas
  "upscale_delay_s" $as.upscale_delay_s
  "downscale_delay_s" $as.downscale_delay_s
  "look_back_period_s" $as.look_back_period_s
  "metrics_interval_s" $as.metrics_interval_s
  "policy" $policy) -}}
{{- else -}}
{{- $_ = set $dep "num_replicas" $cfg.replicas -}}
{{- end -}}
{{- /* A replica being removed drains its sessions first. */ -}}
{{- $_ = set $dep "graceful_shutdown_timeout_s" (include "microturn.gracefulShutdownTimeout" $cfg | float64) -}}
{{- $_ = set $dep "max_ongoing_requests" (max (int $dep.max_ongoing_requests) $slots2) -}}
{{- $_ = set $dep "max_queued_requests" (max (int $dep.max_queued_requests) $slots2) -}}
{{- $_ = mergeOverwrite $dep.ray_actor_options (dict "num_cpus" $cfg.num_cpus "num_gpus" $cfg.num_gpus) -}}
{{- toYaml $doc -}}
{{- end -}}

{{/* Fail early on values the schema cannot express. */}}
{{- define "microturn.validate" -}}
{{- $m := .Values.edge.media -}}
{{- if lt (int $m.udpPortMax) (int $m.udpPortMin) -}}
{{- fail (printf "edge.media.udpPortMax (%d) is below edge.media.udpPortMin (%d)" (int $m.udpPortMax) (int $m.udpPortMin)) -}}
{{- end -}}
{{- if and (eq $m.mode "hostPort") (gt (int (sub $m.udpPortMax $m.udpPortMin)) 199) -}}
{{- fail (printf "edge.media.mode hostPort renders one hostPort per UDP port: keep edge.media.udpPortMin..udpPortMax at most 200 ports (got %d)" (int (add1 (sub $m.udpPortMax $m.udpPortMin)))) -}}
{{- end -}}
{{- if ge (int .Values.edge.preStopSleepSeconds) (int .Values.edge.terminationGracePeriodSeconds) -}}
{{- fail "edge.preStopSleepSeconds must be below edge.terminationGracePeriodSeconds" -}}
{{- end -}}
{{- if ge (int .Values.interaction.worker.preStopSleepSeconds) (int .Values.interaction.worker.terminationGracePeriodSeconds) -}}
{{- fail "interaction.worker.preStopSleepSeconds must be below interaction.worker.terminationGracePeriodSeconds" -}}
{{- end -}}
{{- $w := .Values.interaction.worker -}}
{{- if or (lt (int $w.replicas) (int $w.minReplicas)) (gt (int $w.replicas) (int $w.maxReplicas)) -}}
{{- fail "interaction.worker.replicas must lie within interaction.worker.minReplicas..maxReplicas" -}}
{{- end -}}
{{- if and (eq $m.mode "turn") (not $m.iceServers) (not .Values.turn.enabled) -}}
{{- fail "edge.media.mode turn needs edge.media.iceServers (a turn: server) or turn.enabled=true" -}}
{{- end -}}
{{- if and (eq $m.mode "turn") (not $m.iceServers) .Values.turn.enabled (not .Values.turn.publicHost) -}}
{{- fail "edge.media.mode turn with the chart's coturn: set turn.publicHost (the host browsers reach coturn at)" -}}
{{- end -}}
{{- if gt (int .Values.turn.relayPortMin) (int .Values.turn.relayPortMax) -}}
{{- fail "turn.relayPortMin is above turn.relayPortMax" -}}
{{- end -}}
{{- $i := .Values.interaction -}}
{{- range $p := list (int $i.grpcPort) (int $i.httpPort) -}}
{{- if has $p (list 6379 8265 10001 8080 52365) -}}
{{- fail (printf "interaction.grpcPort/httpPort %d collides with a Ray head port (6379 GCS, 8265 dashboard, 10001 client, 8080 metrics, 52365 dashboard agent)" $p) -}}
{{- end -}}
{{- end -}}
{{- if eq (int $i.grpcPort) (int $i.httpPort) -}}
{{- fail "interaction.grpcPort and interaction.httpPort must differ" -}}
{{- end -}}
{{- /* Autoscaling: what the settings would reject in the pods, said here in the values' names. */ -}}
{{- $cfg := get (include "microturn.replicaEffective" . | fromYaml) "interaction" -}}
{{- $a := $i.serve.autoscaling -}}
{{- if $a.enabled -}}
{{- if gt (int $a.minReplicas) (int $a.maxReplicas) -}}
{{- fail (printf "interaction.serve.autoscaling.minReplicas (%d) is above interaction.serve.autoscaling.maxReplicas (%d)" (int $a.minReplicas) (int $a.maxReplicas)) -}}
{{- end -}}
{{- if ge (int $a.targetSessions) (int $cfg.session_slots) -}}
{{- fail (printf "interaction.serve.autoscaling.targetSessions (%d) must be below the replicas' session slots (config.interaction.session_slots: %d): the free slots take the calls that arrive during a scale-up" (int $a.targetSessions) (int $cfg.session_slots)) -}}
{{- end -}}
{{- if le (float64 $a.lookBackPeriodSeconds) (float64 $a.metricsIntervalSeconds) -}}
{{- fail "interaction.serve.autoscaling.lookBackPeriodSeconds must be longer than metricsIntervalSeconds (the mean needs more than one report)" -}}
{{- end -}}
{{- end -}}
{{- $grace := include "microturn.gracefulShutdownTimeout" $cfg | float64 -}}
{{- $needed := addf $w.preStopSleepSeconds $grace -}}
{{- if le (float64 $w.terminationGracePeriodSeconds) $needed -}}
{{- fail (printf "interaction.worker.terminationGracePeriodSeconds (%d) must exceed interaction.worker.preStopSleepSeconds (%d) + Serve's graceful shutdown timeout (%v s: drain policy %s), or Kubernetes kills a worker pod while its replicas drain: raise it above %v" (int $w.terminationGracePeriodSeconds) (int $w.preStopSleepSeconds) $grace $cfg.drain_policy $needed $needed) -}}
{{- end -}}
{{- $ea := .Values.edge.autoscaling -}}
{{- if $ea.enabled -}}
{{- if gt (int $ea.minReplicas) (int $ea.maxReplicas) -}}
{{- fail (printf "edge.autoscaling.minReplicas (%d) is above edge.autoscaling.maxReplicas (%d)" (int $ea.minReplicas) (int $ea.maxReplicas)) -}}
{{- end -}}
{{- $maxSessions := include "microturn.edgeMaxSessions" . | int -}}
{{- if ge (int $ea.targetSessionsPerPod) $maxSessions -}}
{{- fail (printf "edge.autoscaling.targetSessionsPerPod (%d) must be below the edge's config.edge.max_sessions (%d): a pod at its cap refuses the calls that arrive while a new pod starts" (int $ea.targetSessionsPerPod) $maxSessions) -}}
{{- end -}}
{{- end -}}
{{- $slug := include "microturn.versionSlug" .Values.interaction.modelVersion -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" $slug) -}}
{{- fail (printf "interaction.modelVersion %q has the slug %q, which is no label value (it must start and end with a letter or digit within its first 40 characters)" .Values.interaction.modelVersion $slug) -}}
{{- end -}}
{{- if and .Values.edge.podDeletionCost.enabled (not .Values.serviceAccount.create) (not .Values.serviceAccount.name) -}}
{{- fail "edge.podDeletionCost grants get/patch on pods to the edge's ServiceAccount: with serviceAccount.create=false set serviceAccount.name (not the namespace's default), or edge.podDeletionCost.enabled=false" -}}
{{- end -}}
{{- if and .Values.rollout.operator.enabled (not .Values.serviceAccount.create) (not .Values.serviceAccount.name) -}}
{{- fail "rollout.operator grants its Role (RayServices, Services, ConfigMaps, InteractionRollouts) to its ServiceAccount: with serviceAccount.create=false set serviceAccount.name (not the namespace's default), or rollout.operator.enabled=false" -}}
{{- end -}}
{{- range $svc := list "background" "tools" -}}
{{- $v := index $.Values $svc -}}
{{- if gt (int $v.keda.minReplicas) (int $v.keda.maxReplicas) -}}
{{- fail (printf "%s.keda.minReplicas is above %s.keda.maxReplicas" $svc $svc) -}}
{{- end -}}
{{- if gt (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas) -}}
{{- fail (printf "%s.autoscaling.minReplicas is above %s.autoscaling.maxReplicas" $svc $svc) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* config.edge.max_sessions, else the settings' default (EdgeSettings.max_sessions; a test keeps them equal). */}}
{{- define "microturn.edgeMaxSessions" -}}
{{- $sessions := 40 -}}
{{- with .Values.config }}{{ with .edge }}{{ with .max_sessions }}{{ $sessions = int . }}{{ end }}{{ end }}{{ end -}}
{{- $sessions -}}
{{- end -}}

{{/* NetworkPolicy egress rule: the Kubernetes API server (networkPolicy.apiServer). */}}
{{- define "microturn.egressApiServer" -}}
{{- $api := .Values.networkPolicy.apiServer -}}
- ports:
    {{- range $api.ports }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
  {{- with $api.cidrs }}
  to:
    {{- range . }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  {{- end }}
{{- end -}}

{{/* NetworkPolicy egress rule: cluster DNS. */}}
{{- define "microturn.egressDns" -}}
- to:
    - namespaceSelector:
        matchLabels:
          {{- toYaml .Values.networkPolicy.dns.namespaceSelector | nindent 10 }}
      podSelector:
        matchLabels:
          {{- toYaml .Values.networkPolicy.dns.podSelector | nindent 10 }}
  ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 53
{{- end -}}

{{/* NetworkPolicy egress rule: the NATS server pods' client port. */}}
{{- define "microturn.egressNats" -}}
- to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: {{ default (include "microturn.natsNamespace" .) .Values.networkPolicy.nats.namespace }}
      podSelector:
        matchLabels:
          {{- toYaml .Values.networkPolicy.nats.podSelector | nindent 10 }}
  ports:
    - protocol: TCP
      port: {{ .Values.nats.port }}
{{- end -}}

{{/* NetworkPolicy peer: the Prometheus that scrapes /metrics. */}}
{{- define "microturn.peerMetrics" -}}
- namespaceSelector:
    matchLabels:
      {{- toYaml .Values.networkPolicy.metrics.namespaceSelector | nindent 6 }}
  podSelector:
    {{- with .Values.networkPolicy.metrics.podSelector }}
    matchLabels:
      {{- toYaml . | nindent 6 }}
    {{- else }}
    {}
    {{- end }}
{{- end -}}

{{/* NetworkPolicy peer: pods of one component of this release (ctx, component). */}}
{{- define "microturn.peerComponent" -}}
- podSelector:
    matchLabels:
      {{- include "microturn.componentSelectorLabels" . | nindent 6 }}
{{- end -}}

{{/* Annotations of the bus-setup hook's objects (the weight). */}}
{{- define "microturn.hookAnnotations" -}}
helm.sh/hook: pre-install,pre-upgrade
helm.sh/hook-weight: {{ . | quote }}
helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
{{- end -}}

{{/* The settings ConfigMap. */}}
{{- define "microturn.configMapName" -}}{{ include "microturn.componentName" (dict "ctx" . "suffix" "config") }}{{- end -}}
