output "address" {
  description = "Hostname of the DB instance."
  value       = aws_db_instance.this.address
}

output "port" {
  description = "Port of the DB instance."
  value       = aws_db_instance.this.port
}

output "database_name" {
  description = "Name of the application database."
  value       = aws_db_instance.this.db_name
}

output "master_password_secret_arn" {
  description = "ARN of the Secrets Manager secret holding the master password."
  value       = aws_secretsmanager_secret.master_password.arn
}

# verify-full: TLS, and the server's certificate must chain to the RDS CA bundle baked into
# the image (Dockerfile) and name the host we asked for.
locals {
  tls = "sslmode=verify-full&sslrootcert=${urlencode(var.ca_bundle_path)}"
}

output "database_url" {
  description = "Connection URL of the serving tasks: the application role (rows only), TLS verify-full."
  sensitive   = true
  value = format(
    "postgres://%s:%s@%s:%d/%s?%s",
    var.app_username,
    urlencode(aws_secretsmanager_secret_version.app_password.secret_string),
    aws_db_instance.this.address,
    aws_db_instance.this.port,
    aws_db_instance.this.db_name,
    local.tls,
  )
}

output "migration_database_url" {
  description = "Connection URL of `chatty migrate` only: the master user (schema owner), TLS verify-full."
  sensitive   = true
  value = format(
    "postgres://%s:%s@%s:%d/%s?%s",
    var.username,
    urlencode(aws_secretsmanager_secret_version.master_password.secret_string),
    aws_db_instance.this.address,
    aws_db_instance.this.port,
    aws_db_instance.this.db_name,
    local.tls,
  )
}

output "instance_id" {
  description = "RDS instance identifier (the DBInstanceIdentifier of its CloudWatch metrics)."
  value       = aws_db_instance.this.identifier
}
