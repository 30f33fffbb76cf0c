output "workspace_arn" {
  description = "ARN of the workspace (for aps:RemoteWrite and aps:Query* policies)."
  value       = aws_prometheus_workspace.this.arn
}

output "remote_write_url" {
  description = "Remote-write endpoint the ADOT sidecars send to."
  value       = "${aws_prometheus_workspace.this.prometheus_endpoint}api/v1/remote_write"
}

output "query_url" {
  description = "Prometheus-compatible query endpoint (a Grafana data source with SigV4 auth)."
  value       = aws_prometheus_workspace.this.prometheus_endpoint
}
