output "primary_endpoint_address" {
  description = "Hostname of the primary endpoint (follows failover)."
  value       = aws_elasticache_replication_group.this.primary_endpoint_address
}

output "port" {
  description = "Redis port."
  value       = aws_elasticache_replication_group.this.port
}

output "auth_token_secret_arn" {
  description = "ARN of the Secrets Manager secret holding the AUTH token."
  value       = aws_secretsmanager_secret.auth_token.arn
}

output "redis_url" {
  description = "Connection URL for the application: TLS (rediss://) with the AUTH token."
  sensitive   = true
  value = format(
    "rediss://:%s@%s:%d",
    urlencode(aws_secretsmanager_secret_version.auth_token.secret_string),
    aws_elasticache_replication_group.this.primary_endpoint_address,
    aws_elasticache_replication_group.this.port,
  )
}

output "replication_group_id" {
  description = "ElastiCache replication group id (its nodes are <id>-001, <id>-002, ...)."
  value       = aws_elasticache_replication_group.this.id
}
