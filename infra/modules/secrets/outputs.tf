output "container_secrets" {
  description = "Map of container environment variable name to Secrets Manager secret ARN, for the serving task definition (no schema owner's URL)."
  value = merge(
    { for k, env in local.generated : env => aws_secretsmanager_secret.generated[k].arn },
    { for k, env in local.derived : env => aws_secretsmanager_secret.derived[k].arn if !contains(local.migration_only, k) },
  )
}

output "migration_secrets" {
  description = "The secrets only the one-off migration task gets (env name to ARN)."
  value       = { for k in local.migration_only : local.derived[k] => aws_secretsmanager_secret.derived[k].arn }
}

output "secret_arns" {
  description = "ARNs of all application secrets (for IAM policies)."
  value = concat(
    [for s in aws_secretsmanager_secret.generated : s.arn],
    [for s in aws_secretsmanager_secret.derived : s.arn],
  )
}

output "jwt_secret_arn" {
  description = "ARN of the secret holding the JWT signing secret (for the backends that mint client tokens)."
  value       = aws_secretsmanager_secret.generated["jwt-secret"].arn
}

output "api_key_arn" {
  description = "ARN of the secret holding the HTTP API key (for backends calling /api/v1)."
  value       = aws_secretsmanager_secret.generated["api-key"].arn
}
