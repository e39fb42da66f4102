{{/*
The chart's name, overridable with nameOverride.
*/}}
{{- define "flotilla.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object's name: the release name, plus the chart's name unless the
release name holds it already. 63 characters at most (DNS names); the objects add short
suffixes ("-operator"), so it is cut at 52.
*/}}
{{- define "flotilla.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "flotilla.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object.
*/}}
{{- define "flotilla.labels" -}}
helm.sh/chart: {{ include "flotilla.chart" . }}
{{ include "flotilla.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: flotilla
{{- end }}

{{/*
What selects the operator's pod (the Deployment, the metrics Service, the ServiceMonitor):
the chart runs one workload.
*/}}
{{- define "flotilla.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flotilla.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The operator's ServiceAccount.
*/}}
{{- define "flotilla.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (printf "%s-operator" (include "flotilla.fullname" .)) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The MLflow server: its own app.kubernetes.io/name, so that the operator's selectors (name
and instance) never match its pod.
*/}}
{{- define "flotilla.mlflowSelectorLabels" -}}
app.kubernetes.io/name: {{ include "flotilla.name" . }}-mlflow
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels on the MLflow server's objects.
*/}}
{{- define "flotilla.mlflowLabels" -}}
helm.sh/chart: {{ include "flotilla.chart" . }}
{{ include "flotilla.mlflowSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: flotilla
app.kubernetes.io/component: tracking
{{- end }}

{{/*
The MLflow server's URL inside the cluster: the default tracking URI of every job.
*/}}
{{- define "flotilla.mlflowUrl" -}}
{{- printf "http://%s-mlflow.%s.svc:%v" (include "flotilla.fullname" .) .Release.Namespace .Values.mlflow.port }}
{{- end }}
