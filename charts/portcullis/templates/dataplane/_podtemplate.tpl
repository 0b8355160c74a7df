{{/*
The one data-plane pod template, shared by the Deployment and the DaemonSet so the two kinds cannot drift.
*/}}
{{- define "portcullis.dataplane.podTemplate" -}}
{{- $push := "/etc/portcullis/push" }}
{{- $dp := .Values.dataplane }}
metadata:
  labels:
    {{- include "portcullis.componentLabels" (dict "root" . "component" "dataplane") | nindent 4 }}
    {{- with $dp.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $dp.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ include "portcullis.dataplaneName" . }}
  automountServiceAccountToken: false
  enableServiceLinks: false
  {{- /* preStop keeps accepting while endpoints are withdrawn, then the process drains its live connections. */}}
  terminationGracePeriodSeconds: {{ add $dp.preStopSleepSeconds $dp.drainTimeoutSeconds 10 }}
  {{- with $dp.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- include "portcullis.podSecurityContext" . | nindent 4 }}
  containers:
  - name: dataplane
    image: {{ include "portcullis.image" . }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    args:
    - dataplane
    - --bind=0.0.0.0
    - --https-port=8443
    - --http-port=8080
    - --admin-port=9901
    - --admin-cert-file={{ $push }}/tls.crt
    - --admin-key-file={{ $push }}/tls.key
    - --admin-token-file={{ $push }}/token
    - --https-redirect-port={{ $dp.httpsRedirectPort }}
    - --workers={{ include "portcullis.dataplaneWorkers" . }}
    - --access-log={{ $dp.accessLog }}
    - --max-connections={{ $dp.limits.maxConnections }}
    - --max-connections-per-ip={{ $dp.limits.maxConnectionsPerIP }}
    - --max-handshakes-per-second={{ $dp.limits.maxHandshakesPerSecond }}
    - --http2={{ $dp.http2.enabled }}
    - --h2-max-concurrent-streams={{ int64 $dp.http2.maxConcurrentStreams }}
    - --h2-max-resets-per-second={{ int64 $dp.http2.maxResetsPerSecond }}
    - --h2-max-continuation-frames={{ int64 $dp.http2.maxContinuationFrames }}
    - --h2-max-settings-per-second={{ int64 $dp.http2.maxSettingsPerSecond }}
    - --h2-max-pings-per-second={{ int64 $dp.http2.maxPingsPerSecond }}
    - --h2-max-empty-frames-per-second={{ int64 $dp.http2.maxEmptyFramesPerSecond }}
    - --h2-max-window-updates-per-second={{ int64 $dp.http2.maxWindowUpdatesPerSecond }}
    - --h2-max-priority-per-second={{ int64 $dp.http2.maxPriorityPerSecond }}
    - --drain-timeout={{ $dp.drainTimeoutSeconds }}
    - --state-file=/run/portcullis/snapshot.json
    {{- range $dp.extraArgs }}
    - {{ . | quote }}
    {{- end }}
    {{- with $dp.extraEnv }}
    env:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    ports:
    - name: https
      containerPort: 8443
      protocol: TCP
    - name: http
      containerPort: 8080
      protocol: TCP
    - name: admin
      containerPort: 9901
      protocol: TCP
    {{- /* Ready only once the first snapshot is applied: Kubernetes never routes to an empty pod. */}}
    readinessProbe:
      httpGet:
        path: /readyz
        port: admin
        scheme: HTTPS
      periodSeconds: 2
      timeoutSeconds: 2
      failureThreshold: 2
    livenessProbe:
      httpGet:
        path: /livez
        port: admin
        scheme: HTTPS
      initialDelaySeconds: 5
      periodSeconds: 10
      timeoutSeconds: 3
      failureThreshold: 3
    {{- if gt (int $dp.preStopSleepSeconds) 0 }}
    lifecycle:
      preStop:
        exec:
          command: ["python", "-c", "import time; time.sleep({{ $dp.preStopSleepSeconds }})"]
    {{- end }}
    securityContext:
      {{- include "portcullis.containerSecurityContext" . | nindent 6 }}
    resources:
      {{- toYaml $dp.resources | nindent 6 }}
    volumeMounts:
    - name: push
      mountPath: {{ $push }}
      readOnly: true
    - name: tmp
      mountPath: /tmp
    - name: state
      mountPath: /run/portcullis
  volumes:
  - name: push
    secret:
      secretName: {{ include "portcullis.pushSecretName" . }}
      defaultMode: 0440
      items:
      - key: token
        path: token
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
  - name: tmp
    emptyDir:
      sizeLimit: 64Mi
  # The last pushed snapshot (private keys included): tmpfs, never on the node's disk, gone with the pod;
  # it outlives only a container restart, which then serves at once even with no controller to push.
  - name: state
    emptyDir:
      medium: Memory
      sizeLimit: 64Mi
  {{- with $dp.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $dp.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $dp.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $dp.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
