# Application secrets in Secrets Manager, injected into the task as environment variables by
# the ECS agent (the task definition only holds their ARNs).
#
# The JWT secret and the API key are drawn once (ignore_changes keeps the first value).
# Backends that mint client JWTs or call the HTTP API read them from these secrets.
# To rotate one: terraform apply -replace=module.secrets.aws_secretsmanager_secret_version.generated["jwt-secret"]
# then redeploy the service.

locals {
  generated = {
    "jwt-secret" = "CHATTY__AUTH__JWT_SECRET"
    "api-key"    = "CHATTY__AUTH__API_KEY"
  }
  derived = {
    "database-url"           = "CHATTY__DATABASE__URL"
    "migration-database-url" = "CHATTY__DATABASE__MIGRATION_URL"
    "redis-url"              = "CHATTY__REDIS__URL"
  }
  derived_values = {
    "database-url"           = var.database_url
    "migration-database-url" = var.migration_database_url
    "redis-url"              = var.redis_url
  }
  # Only the one-off migration task gets the schema owner's URL; serving tasks never see it.
  migration_only = ["migration-database-url"]
}

data "aws_secretsmanager_random_password" "generated" {
  for_each = local.generated

  password_length     = 64
  exclude_punctuation = true
}

resource "aws_secretsmanager_secret" "generated" {
  for_each = local.generated

  name                    = "${var.name}/${each.key}"
  description             = "chatty ${each.value}"
  recovery_window_in_days = var.recovery_window_days
  kms_key_id              = var.kms_key_arn

  tags = var.tags
}

resource "aws_secretsmanager_secret_version" "generated" {
  for_each = local.generated

  secret_id     = aws_secretsmanager_secret.generated[each.key].id
  secret_string = data.aws_secretsmanager_random_password.generated[each.key].random_password

  lifecycle {
    ignore_changes = [secret_string]
  }
}

resource "aws_secretsmanager_secret" "derived" {
  for_each = local.derived

  name                    = "${var.name}/${each.key}"
  description             = "chatty ${each.value}"
  recovery_window_in_days = var.recovery_window_days
  kms_key_id              = var.kms_key_arn

  tags = var.tags
}

# Follows the endpoints and credentials of RDS / ElastiCache on every apply.
resource "aws_secretsmanager_secret_version" "derived" {
  for_each = local.derived

  secret_id     = aws_secretsmanager_secret.derived[each.key].id
  secret_string = local.derived_values[each.key]
}
