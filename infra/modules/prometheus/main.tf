# Amazon Managed Service for Prometheus: where the tasks' metrics go on AWS (each task's ADOT
# collector sidecar scrapes its own /metrics and remote-writes here, see the ecs module), with
# the same alert rules as the compose Prometheus (grafana/alerts.yml, loaded unchanged) and an
# alert manager that notifies the alarms SNS topic. Grafana (Amazon Managed Grafana or your
# own) reads the workspace's query endpoint with SigV4; the dashboards in grafana/ work as they
# are, since the series and labels are Chatty's own.

resource "aws_prometheus_workspace" "this" {
  alias = var.name
  tags  = var.tags
}

resource "aws_prometheus_rule_group_namespace" "chatty" {
  name         = "chatty"
  workspace_id = aws_prometheus_workspace.this.id
  data         = file(var.rules_file)
}

resource "aws_prometheus_alert_manager_definition" "this" {
  workspace_id = aws_prometheus_workspace.this.id
  definition = yamlencode({
    alertmanager_config = yamlencode({
      route = {
        receiver        = "sns"
        group_by        = ["alertname"]
        group_wait      = "30s"
        group_interval  = "5m"
        repeat_interval = "4h"
      }
      receivers = [{
        name = "sns"
        sns_configs = [{
          topic_arn = var.sns_topic_arn
          sigv4     = { region = var.aws_region }
          subject   = "chatty: {{ .CommonLabels.alertname }}"
          attributes = {
            severity = "{{ .CommonLabels.severity }}"
          }
        }]
      }]
    })
  })
}
