{{/* Names and labels. */}}
{{- define "twinserve.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "twinserve.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "twinserve.labels" -}}
{{ include "twinserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "twinserve.image" -}}
{{ printf "%s:%s" .Values.image.repository .Values.image.tag }}
{{- end -}}

{{- define "twinserve.claimName" -}}
{{ .Values.artifacts.existingClaim | default (printf "%s-artifacts" (include "twinserve.fullname" .)) }}
{{- end -}}

{{/* The directory the replicas load: mountPath/serveName (serveName defaults to name). */}}
{{- define "twinserve.servedArtifactDir" -}}
{{ printf "%s/%s" (.Values.artifacts.mountPath | trimSuffix "/") (.Values.artifacts.serveName | default .Values.artifacts.name) }}
{{- end -}}

{{/*
serveConfigV2: the Ray Serve config (ServeDeploySchema) built from .Values.serve, .Values.routing,
.Values.gpu and .Values.placement. With deploy/local-values.yaml it is deploy/serve_config.yaml.
*/}}
{{- define "twinserve.serveConfig" -}}
{{- $args := deepCopy .Values.serve.args -}}
{{- $_ := set $args "artifact_dir" (include "twinserve.servedArtifactDir" .) -}}
{{- if .Values.gpu.enabled -}}
{{- $_ := set $args.dense "num_gpus" .Values.gpu.perReplica -}}
{{- end -}}
{{- if .Values.placement.enabled -}}
{{- $_ := set $args.dense "resources" (dict .Values.placement.denseResource .Values.placement.perReplica) -}}
{{- $_ := set $args.router "resources" (dict .Values.placement.prunedResource .Values.placement.perReplica) -}}
{{- end -}}
{{- $routing := dict "weights" (dict "dense" .Values.routing.weights.dense "pruned" .Values.routing.weights.pruned) "shadow_fraction" .Values.routing.shadowFraction -}}
{{- $app := dict "name" "twinserve" "route_prefix" "/" "import_path" "service.serving.app:build_app" "args" $args "deployments" (list (dict "name" "Router" "user_config" $routing)) -}}
{{- $http := dict "host" "0.0.0.0" "port" .Values.serve.httpPort "request_timeout_s" .Values.serve.requestTimeoutS -}}
{{- toYaml (dict "proxy_location" .Values.serve.proxyLocation "http_options" $http "applications" (list $app)) -}}
{{- end -}}

{{/* Ray's rayStartParams `resources`: a quoted JSON object, as KubeRay passes it to `ray start`. */}}
{{- define "twinserve.rayResources" -}}
{{- printf "'%s'" (toJson .) -}}
{{- end -}}

{{/*
Volumes and mounts of a Ray pod: artifacts (read-only: serving cannot alter the model), /tmp,
/dev/shm; in the pods that serve (.serves: the worker groups), the same claim a second time,
read-write, with subPath .leases: the lease directory (TWINSERVE_ARTIFACT_LEASE_DIR), where each
replica leases the version it loaded. The prune Job sees it as <mountPath>/.leases, where its gc
reads leases by default; the workers' init container makes it (twinserve.waitForArtifacts). The head runs
no replicas (head.rayCpus "0") and mounts no lease directory. Called with (dict "root" . "serves" bool).
*/}}
{{- define "twinserve.rayVolumes" -}}
{{- $ := .root -}}
- name: artifacts
  persistentVolumeClaim:
    claimName: {{ include "twinserve.claimName" $ }}
    readOnly: true
{{- if .serves }}
- name: leases
  persistentVolumeClaim:
    claimName: {{ include "twinserve.claimName" $ }}
{{- end }}
- name: tmp
  emptyDir:
    sizeLimit: {{ $.Values.tmpSizeLimit }}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ $.Values.shmSizeLimit }}
{{- end -}}

{{- define "twinserve.rayMounts" -}}
{{- $ := .root -}}
- name: artifacts
  mountPath: {{ $.Values.artifacts.mountPath }}
  readOnly: true
{{- if .serves }}
- name: leases
  mountPath: {{ $.Values.artifacts.leaseMountPath }}
  subPath: .leases
{{- end }}
- name: tmp
  mountPath: /tmp
- name: dshm
  mountPath: /dev/shm
{{- end -}}

{{- define "twinserve.env" -}}
{{- $ := .root -}}
- name: TWINSERVE_ARTIFACTS_ROOT
  value: {{ $.Values.artifacts.mountPath | quote }}
{{- if .serves }}
- name: TWINSERVE_ARTIFACT_LEASE_DIR
  value: {{ $.Values.artifacts.leaseMountPath | quote }}
{{- end }}
- name: HOME
  value: /tmp
{{- if $.Values.adminToken.existingSecret }}
- name: TWINSERVE_ADMIN_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $.Values.adminToken.existingSecret }}
      key: token
{{- end }}
{{- end -}}

{{/*
Workers wait until the pruning job has published artifacts, then make the lease directory
(<mountPath>/.leases, mode 1777) if it is missing: as the pods' UID, through the claim's second,
writable volume, which only this init container mounts whole (the Ray container mounts its .leases
subPath). Made here, it never depends on a Job having run since an upgrade; left to the kubelet,
a missing subPath would be made root-owned and the replicas (UID 10001) could not lease. The pod
template names no artifact directory, so moving the served directory (artifacts.serveName) changes
only serveConfigV2, which KubeRay applies to the running cluster in place instead of building a
new one.
*/}}
{{- define "twinserve.waitForArtifacts" -}}
- name: wait-for-artifacts
  image: {{ include "twinserve.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command: ["/bin/sh", "-c"]
  args:
    - >-
      until ls {{ .Values.artifacts.mountPath | trimSuffix "/" }}/*/manifest.json >/dev/null 2>&1; do
      echo "waiting for the prune Job to publish artifacts under {{ .Values.artifacts.mountPath }}"; sleep 10; done;
      mkdir -p -m 1777 /twinserve-volume/.leases
  resources:
    requests: {cpu: 10m, memory: 16Mi}
    limits: {cpu: 100m, memory: 64Mi}
  securityContext:
    {{- toYaml .Values.containerSecurityContext | nindent 4 }}
  volumeMounts:
    - name: artifacts
      mountPath: {{ .Values.artifacts.mountPath }}
      readOnly: true
    - name: leases
      mountPath: /twinserve-volume
{{- end -}}

{{/* The Ray container of a group: image, ports, env, resources, security, mounts (.serves: the lease mount). */}}
{{- define "twinserve.rayContainer" -}}
{{- $ := .root -}}
- name: {{ .name }}
  image: {{ include "twinserve.image" $ }}
  imagePullPolicy: {{ $.Values.image.pullPolicy }}
  ports:
    {{- if .head }}
    - {name: gcs, containerPort: 6379}
    - {name: dashboard, containerPort: 8265}
    - {name: client, containerPort: 10001}
    {{- end }}
    - {name: serve, containerPort: {{ $.Values.serve.httpPort }}}
    - {name: metrics, containerPort: {{ $.Values.metricsPort }}}
  env:
    {{- include "twinserve.env" (dict "root" $ "serves" .serves) | nindent 4 }}
  resources:
    {{- toYaml .resources | nindent 4 }}
  securityContext:
    {{- toYaml $.Values.containerSecurityContext | nindent 4 }}
  volumeMounts:
    {{- include "twinserve.rayMounts" (dict "root" $ "serves" .serves) | nindent 4 }}
{{- end -}}

{{- define "twinserve.podSpecCommon" -}}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
